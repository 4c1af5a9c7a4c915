#!/usr/bin/env bash
# The single-host stack of docs/scaling-out.md, as one script: PostgreSQL by initdb/pg_ctl in a
# folder of yours, an `mlflow server` with proxied artifacts, a Dask scheduler and two workers,
# each on a free loopback port, all started in the background and stopped by their own handles
# (pid files, pg_ctl).  No sudo, no systemd.  The page's command blocks are lines of this file
# (tests/test_scale_out_docs.py checks it), and tests/test_stack.py runs it.
#
#   scale_out_local.sh demo              up, a 4-trial search, predict, down (also on failure)
#   scale_out_local.sh up RUN            start the stack; RUN/stack.env says where it is
#   scale_out_local.sh search RUN        a search against it (N_TRIALS, OVERRIDES)
#   scale_out_local.sh predict RUN IN OUT   batch predict through the cluster
#   scale_out_local.sh down RUN          stop everything `up` started, whatever state it is in
#
# Settings (environment): PYTHON (the environment's interpreter, default python3), PGBIN (the
# folder of initdb/pg_ctl, default the newest /usr/lib/postgresql/*/bin), PGPORT, MLFLOW_PORT,
# SCHED_PORT (default: free ports), PG_OPTS (extra `postgres` options), N_TRIALS, OVERRIDES.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"

die() { echo "error: $1 -- fix: $2" >&2; exit 1; }

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

port_is_free() { "$PY" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }

# Poll "$@" (a command) until it succeeds, for at most $2 s; fail naming $1 and the log tail if
# the process in pid file $3 dies first or time runs out.
wait_for() {
    local what="$1" limit="$2" pidfile="$3" log="$4" deadline
    shift 4
    deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$pidfile" ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            tail -n 40 "$log" >&2 || true
            die "$what exited while starting (its log is above)" "see $log"
        fi
        ((SECONDS < deadline)) || { tail -n 40 "$log" >&2 || true; die "$what not ready after $limit s" "see $log"; }
        sleep 0.5
    done
}

# Stop the process group whose leader's pid is in file $1: SIGTERM, then SIGKILL after 15 s.
stop_group() {
    local pidfile="$1" pid i
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -TERM -- "-$pid" 2>/dev/null; then
        for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

load() {
    RUN="$(cd "$1" && pwd)"
    [[ -f "$RUN/stack.env" ]] || die "$RUN/stack.env not found" "run: $0 up $RUN"
    # shellcheck disable=SC1091
    source "$RUN/stack.env"
}

up() {
    RUN="$1"
    mkdir -p "$RUN/logs"
    RUN="$(cd "$RUN" && pwd)"
    # The environment's bin first on PATH: `mlflow`, `dask` and the `uvicorn` that
    # `mlflow models serve` execs are this environment's.
    ENV_BIN="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
    export PATH="$ENV_BIN:$PATH"

    PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
    [[ -x "$PGBIN/initdb" ]] || die "PostgreSQL's server binaries (initdb, pg_ctl) not found" \
        "apt-get install postgresql (no server needs to run), or set PGBIN to the folder of initdb"
    export PGDATA="$RUN/pgdata" PGSOCK="$RUN" PGLOG="$RUN/logs/postgres.log"
    if [[ "$(id -u)" == 0 ]]; then
        # initdb and postgres refuse root: run them as the package's `postgres` user, in a folder
        # it owns (RUN may sit under a folder only root can enter).
        id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user" "run as a normal user"
        PG_BASE="$(mktemp -d /tmp/kmeans-pg.XXXXXX)"
        chown postgres: "$PG_BASE"
        echo "$PG_BASE" >"$RUN/pg_base"
        PGDATA="$PG_BASE/pgdata" PGSOCK="$PG_BASE" PGLOG="$PG_BASE/postgres.log"
        mkdir -p "$RUN/pgbin"
        for tool in initdb pg_ctl psql createdb; do
            printf '#!/bin/sh\nexec runuser -u postgres -- %q "$@"\n' "$PGBIN/$tool" >"$RUN/pgbin/$tool"
            chmod +x "$RUN/pgbin/$tool"
        done
        PGBIN="$RUN/pgbin"
    fi
    echo "$PGDATA" >"$RUN/pgdata_path"

    export PGPORT="${PGPORT:-$(free_port)}" MLFLOW_PORT="${MLFLOW_PORT:-$(free_port)}"
    export SCHED_PORT="${SCHED_PORT:-$(free_port)}" DASH_PORT="${DASH_PORT:-$(free_port)}"
    for port in "$PGPORT" "$MLFLOW_PORT" "$SCHED_PORT" "$DASH_PORT"; do
        port_is_free "$port" || { echo "error: port $port on 127.0.0.1 is taken -- fix: set another" >&2; false; }
    done
    export PGPASSWORD="${PGPASSWORD:-$("$PY" -c 'import secrets; print("pw-" + secrets.token_hex(12))')}"
    # The file holds the password: readable by you alone.
    (umask 077 && cat >"$RUN/stack.env" <<EOF
export PATH="$ENV_BIN:\$PATH" PGBIN="$PGBIN" PGDATA="$PGDATA" PGSOCK="$PGSOCK" PGLOG="$PGLOG"
export PGPORT=$PGPORT MLFLOW_PORT=$MLFLOW_PORT SCHED_PORT=$SCHED_PORT DASH_PORT=$DASH_PORT
export PGPASSWORD='$PGPASSWORD'
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export SCHEDULER=tcp://127.0.0.1:$SCHED_PORT
EOF
    )

    # 2. PostgreSQL: a cluster of your own, on loopback, password logins over TCP.
    "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 >"$RUN/logs/initdb.log"
    "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 -o "-h 127.0.0.1 -p $PGPORT -k $PGSOCK ${PG_OPTS:-}" start
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PGPORT" -U postgres -d postgres <<SQL
CREATE ROLE kmeans LOGIN PASSWORD '$PGPASSWORD';
SQL
    "$PGBIN/createdb" -h "$PGSOCK" -p "$PGPORT" -U postgres -O kmeans mlflow
    "$PGBIN/createdb" -h "$PGSOCK" -p "$PGPORT" -U postgres -O kmeans optuna

    # 3. The tracking server: runs in PostgreSQL, artifacts stored by the server (proxied).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
        --backend-store-uri "postgresql+psycopg://kmeans@127.0.0.1:$PGPORT/mlflow" \
        --artifacts-destination "$RUN/artifacts" --workers 1 >"$RUN/logs/mlflow-server.log" 2>&1 &
    echo $! >"$RUN/mlflow-server.pid"

    # 4. A Dask scheduler and two workers, importing this checkout's toolkit.
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    setsid dask scheduler --host 127.0.0.1 --port "$SCHED_PORT" --dashboard-address "127.0.0.1:$DASH_PORT" \
        >"$RUN/logs/dask-scheduler.log" 2>&1 &
    echo $! >"$RUN/dask-scheduler.pid"
    for i in 1 2; do
        setsid dask worker "tcp://127.0.0.1:$SCHED_PORT" --host 127.0.0.1 --nworkers 1 --nthreads 1 \
            --memory-limit 2GiB --no-dashboard --local-directory "$RUN/worker-$i" >"$RUN/logs/dask-worker-$i.log" 2>&1 &
        echo $! >"$RUN/dask-worker-$i.pid"
    done

    wait_for "mlflow server" 180 "$RUN/mlflow-server.pid" "$RUN/logs/mlflow-server.log" \
        "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "http://127.0.0.1:$MLFLOW_PORT/health"
    wait_for "dask workers" 120 "$RUN/dask-scheduler.pid" "$RUN/logs/dask-scheduler.log" \
        "$PY" -c 'import sys; from distributed import Client; Client(sys.argv[1], timeout="30s").wait_for_workers(2, timeout=60)' \
        "tcp://127.0.0.1:$SCHED_PORT"
    echo "stack up: tracking http://127.0.0.1:$MLFLOW_PORT, scheduler tcp://127.0.0.1:$SCHED_PORT, state in $RUN"
}

search() {
    load "$1"
    cd "$REPO"
    mlflow run . -e search -P n_trials="${N_TRIALS:-4}" \
        -P storage="postgresql+psycopg://kmeans:\${PGPASSWORD}@127.0.0.1:$PGPORT/optuna" \
        -P scheduler_address="$SCHEDULER" -P overrides="${OVERRIDES:-data.n_samples=2000}" \
        --env-manager local --experiment-name blobs
}

predict() {
    load "$1"
    INPUT="$(realpath "$2")" OUTPUT="$(realpath -m "$3")"
    cd "$REPO"
    mlflow run . -e predict -P model_uri=models:/blobs-kmeans-sklearn@champion \
        -P input="$INPUT" -P output="$OUTPUT" \
        -P scheduler_address="$SCHEDULER" --env-manager local --experiment-name blobs
}

down() {
    local run="$1"
    [[ -d "$run" ]] || return 0
    for name in dask-worker-1 dask-worker-2 dask-scheduler mlflow-server; do
        stop_group "$run/$name.pid"
    done
    if [[ -f "$run/pgdata_path" ]]; then
        local pgdata pgbin
        pgdata="$(cat "$run/pgdata_path")"
        pgbin="$run/pgbin"
        [[ -x "$pgbin/pg_ctl" ]] || pgbin="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
        if [[ -f "$pgdata/postmaster.pid" ]]; then
            "$pgbin/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null || true
        fi
    fi
    if [[ -f "$run/pg_base" ]]; then
        rm -rf "$(cat "$run/pg_base")"
        rm -f "$run/pg_base"
    fi
    echo "stack down: $run"
}

demo() {
    # Global, not local: the EXIT trap runs after this function has returned.
    DEMO_RUN="$(mktemp -d "${TMPDIR:-/tmp}/kmeans-stack.XXXXXX")"
    local run="$DEMO_RUN"
    # Everything stopped whether the steps below succeed or not.
    trap 'down "$DEMO_RUN"; rm -rf "$DEMO_RUN"' EXIT
    up "$run"
    search "$run"
    "$PY" -c 'import sys; import pandas as pd; from sklearn.datasets import make_blobs; X, _ = make_blobs(500, centers=6, cluster_std=0.1, random_state=0); pd.DataFrame(X, columns=["x0", "x1"]).to_csv(sys.argv[1], index=False)' "$run/score.csv"
    predict "$run" "$run/score.csv" "$run/labels.parquet"
    "$PY" -c 'import sys; import pandas as pd; print(pd.read_parquet(sys.argv[1])["label"].value_counts().sort_index().to_string())' "$run/labels.parquet"
}

case "${1:-}" in
    demo) demo ;;
    up)
        [[ $# -eq 2 ]] || die "up needs the stack's folder" "$0 up RUN"
        # A failed start stops what it had started; a good one leaves the stack running.
        trap 'down "$2"' EXIT
        up "$2"
        trap - EXIT ;;
    search | down) [[ $# -eq 2 ]] || die "$1 needs the stack's folder" "$0 $1 RUN"; "$1" "$2" ;;
    predict) [[ $# -eq 4 ]] || die "predict needs RUN IN OUT" "$0 predict RUN data/score.csv labels.parquet"; predict "$2" "$3" "$4" ;;
    *) die "unknown command '${1:-}'" "$0 demo | up RUN | search RUN | predict RUN IN OUT | down RUN" ;;
esac
