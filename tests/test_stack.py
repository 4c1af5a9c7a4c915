"""The production stack of docs/scaling-out.md, end to end, as real processes on loopback.

The stack is the page's own script, ``docs/scripts/scale_out_local.sh`` (whose lines are the
page's command blocks: tests/test_scale_out_docs.py): ``up`` starts PostgreSQL with
``initdb``/``pg_ctl`` in the test's folder (a role with a password), an ``mlflow server``
storing runs in PostgreSQL and proxying artifacts (``mlflow-artifacts:/``), a ``dask scheduler``
and two ``dask worker`` processes, on free ports; ``down`` stops them by their own handles (pid
files, ``pg_ctl stop``) when the test ends, passed or failed.  Through them: a registered weaker
model, the script's search (Optuna study in PostgreSQL, trials on the external workers),
``promote``, the script's ``predict`` on the external cluster, and ``serve`` (``mlflow models
serve``) of the champion answering a real POST.  The PostgreSQL password must appear nowhere in
the record or in any command's output.  Skipped where PostgreSQL's server binaries are missing
(CI installs them: .ci/run).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _mlflow_run import mlflow_run, run_env
from _records import children, running
from _servers import free_port, stop, wait_ready
from mlflow import MlflowClient

from testbed._procs import pg_bindir

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
#: The scaling page's stack as a script: this test starts, uses and stops the stack through it.
SCRIPT = REPO / "docs" / "scripts" / "scale_out_local.sh"

#: The PostgreSQL role and databases of the README's recipe.
ROLE = "kmeans"
#: Small data: the stack is under test here, not the search.
SMALL = "data.n_samples=2000 tracking.log_plot=false"
EXPERIMENT = "blobs"
NATIVE, TWIN = "blobs-kmeans", "blobs-kmeans-sklearn"


def _pg_bindir() -> Path:
    """The folder of PostgreSQL's server binaries (``initdb``, ``postgres``), or skip."""
    found = pg_bindir()
    if found is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql")
    return found


def _run_as() -> dict[str, object]:
    """Popen keywords to run PostgreSQL as a user it accepts: itself when not root; as root
    (initdb and postgres refuse root) the ``postgres`` user of the Debian package."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no 'postgres' user to run PostgreSQL as")
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _tail(text: str | bytes | None, n: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow, Dask or libpq settings of the outer shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PG", "DASK_"))}
    env.update(extra)
    return env


@dataclass
class Stack:
    """Addresses of the running services and where their logs are."""

    pg_port: int
    password: str
    tracking_uri: str
    scheduler: str
    artifacts: Path
    run: Path
    workers: list[str] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)


def _script(args: list[str], env: Mapping[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``docs/scripts/scale_out_local.sh <args>``: the scaling page's commands, as the page gives them."""
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=dict(env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _stack_env(run: Path) -> dict[str, str]:
    """The ``export K=V`` settings the script's ``up`` wrote to ``RUN/stack.env``."""
    out: dict[str, str] = {}
    for line in (run / "stack.env").read_text().splitlines():
        for word in shlex.split(line)[1:]:  # past "export"
            key, _, value = word.partition("=")
            out[key] = value
    return out


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    """PostgreSQL, ``mlflow server`` on it, a Dask scheduler and two workers, all on loopback:
    started by the scaling page's script (``up``) and stopped by it (``down``), passed or failed."""
    pytest.importorskip("psycopg", reason='the PostgreSQL driver: pip install -e ".[test]" (or ".[postgres]")')
    from distributed import Client

    env = _clean_env(PYTHON=sys.executable, PGBIN=str(_pg_bindir()),
                     # A throwaway cluster: no disk syncs (MLflow's schema migrations commit a lot).
                     PG_OPTS="-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    _run_as()  # skips as root without a postgres user to run PostgreSQL as
    run = tmp_path / "run"
    start = time.monotonic()
    try:
        up = _script(["up", str(run)], env, timeout=420)
        assert up.returncode == 0, f"scale_out_local.sh up failed:\n{_tail(up.stdout)}\n{_tail(up.stderr)}"
        settings = _stack_env(run)
        scheduler = settings["SCHEDULER"]
        with Client(scheduler, timeout="30s") as c:
            workers = sorted(c.scheduler_info()["workers"])
        print(f"stack up: {time.monotonic() - start:.1f} s")
        yield Stack(pg_port=int(settings["PGPORT"]), password=settings["PGPASSWORD"],
                    tracking_uri=settings["MLFLOW_TRACKING_URI"], scheduler=scheduler, artifacts=run / "artifacts",
                    run=run, workers=workers, logs={p.stem: p for p in (run / "logs").glob("*.log")})
    finally:
        down = _script(["down", str(run)], env, timeout=180)
        assert down.returncode == 0, f"scale_out_local.sh down failed:\n{_tail(down.stdout)}\n{_tail(down.stderr)}"
        # Stopped by their own handles: no pid file left, and nothing listens on the stack's ports.
        assert not list(run.glob("*.pid")), sorted(run.glob("*.pid"))


def _run(entry: str, params: Mapping[str, object], env: Mapping[str, str], outputs: list[str]) -> str:
    """``mlflow run . -e entry`` against the stack; its output is kept for the password check."""
    start = time.monotonic()
    proc = mlflow_run(entry, params, env=env, experiment=EXPERIMENT, timeout=300)
    print(f"{entry}: {time.monotonic() - start:.1f} s")  # shown with -s, or under a failure
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, f"{entry} failed:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
    return proc.stdout + proc.stderr


def _run_script(args: list[str], env: Mapping[str, str], outputs: list[str]) -> str:
    """The page's script step ``args`` against the stack; its output is kept for the password check."""
    start = time.monotonic()
    proc = _script(args, env)
    print(f"{args[0]}: {time.monotonic() - start:.1f} s")
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, f"{args[0]} failed:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
    return proc.stdout + proc.stderr


def _post(base: str, X: np.ndarray) -> np.ndarray:
    body = {"dataframe_split": {"columns": ["x0", "x1"], "data": X.astype(float).tolist()}}
    request = urllib.request.Request(f"{base}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return np.asarray(json.loads(resp.read())["predictions"])
    except urllib.error.HTTPError as exc:
        pytest.fail(f"/invocations answered {exc.code}: {exc.read()[:2000]!r}")


def _record_texts(mlc: MlflowClient) -> list[str]:
    """Everything the tracking store holds as text: params, tags of every run, model and version."""
    texts: list[str] = []
    exp_ids = [e.experiment_id for e in mlc.search_experiments()]
    for r in mlc.search_runs(exp_ids, max_results=5000):
        texts += [*r.data.params.values(), *r.data.tags.values(), r.info.run_name or ""]
    for m in mlc.search_registered_models():
        texts += [m.description or "", *m.tags.values()]
        for v in mlc.search_model_versions(f"name = '{m.name}'"):
            texts += [v.description or "", v.source or "", *v.tags.values()]
    for lm in mlc.search_logged_models(exp_ids):
        texts += [*lm.params.values(), *lm.tags.values()]
    return texts


# Seven processes and six commands: a few minutes on a loaded 2-core machine, so more than the
# suite's default limit.
@pytest.mark.timeout(900)
def test_search_promote_predict_serve_on_the_stack(stack: Stack, tmp_path: Path) -> None:
    import optuna
    from sklearn.datasets import make_blobs

    env = run_env(stack.tracking_uri)
    for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DASK_SCHEDULER_ADDRESS"):
        env.pop(var, None)
    env["PGPASSWORD"] = stack.password
    outputs: list[str] = []
    mlc = MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)

    # 1. A weak model is the champion (k=3 on 6 blobs): the search's model must beat it.
    _run("train", {"n_clusters": 3, "register": "true", "overrides": SMALL}, env, outputs)
    assert mlc.get_registered_model(NATIVE).aliases == {"champion": "1", "challenger": "1"}

    # 2. The search: Optuna study in PostgreSQL (password by reference), trials on the workers.
    # The page's search command (the script's), with the page's storage URL.
    storage = f"postgresql+psycopg://{ROLE}:${{PGPASSWORD}}@127.0.0.1:{stack.pg_port}/optuna"
    script_env = {**env, "PYTHON": sys.executable, "N_TRIALS": "4", "OVERRIDES": "data.n_samples=2000"}
    _run_script(["search", str(stack.run)], script_env, outputs)
    exp_id = mlc.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = mlc.search_runs([exp_id], "tags.`mlflow.project.entryPoint` = 'search'")
    parent_id = parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    assert parent.data.tags["dask.scheduler"] == stack.scheduler
    assert "${PGPASSWORD}" in parent.data.params["search.storage"]  # the reference, not the value
    kids = children(mlc, parent_id)
    assert len(kids) == 4 and all(r.info.status == "FINISHED" for r in kids)
    # On the external workers.  Which of the two runs these millisecond trials is Dask's choice
    # (one worker took all four in one CI run), so the set is a subset, not equal.
    assert {r.data.tags["trial.worker"] for r in kids} <= set(stack.workers)
    # The plots are served through the tracking server, from its artifacts destination.
    assert {a.path for a in mlc.list_artifacts(parent_id, "plots")} >= {"plots/optimization_history.png"}
    png = Path(mlc.download_artifacts(parent_id, "plots/optimization_history.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(stack.artifacts.rglob("optimization_history.png")), "not stored in --artifacts-destination"
    # The study lives in PostgreSQL and remembers its parent run.
    real = storage.replace("${PGPASSWORD}", stack.password)
    studies = optuna.get_all_study_summaries(real)
    study = next(s for s in studies if s.user_attrs.get("mlflow_parent_run_id") == parent_id)
    assert study.n_trials == 4
    for name in (NATIVE, TWIN):
        assert mlc.get_registered_model(name).aliases == {"champion": "1", "challenger": "2"}, name

    # 3. promote: the search's model beats the weak champion; the twin follows.
    _run("promote", {"model_name": NATIVE, "overrides": SMALL}, env, outputs)
    for name in (NATIVE, TWIN):
        assert mlc.get_registered_model(name).aliases["champion"] == "2", name
    best_k = int(optuna.load_study(study_name=study.study_name, storage=real).best_params["n_clusters"])

    # 4. predict on the external cluster, while 5. the README's serve of the champion (a verified
    # copy under mlflow models serve) starts beside it: a real POST then answers as predict did.
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        serve = subprocess.Popen(
            [sys.executable, "-m", "mlproject.serve", "--model-uri", f"models:/{TWIN}@champion",
             "--port", str(port)],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        X, _ = make_blobs(n_samples=500, n_features=2, centers=6, cluster_std=0.1, random_state=0)
        src = tmp_path / "score.csv"
        pd.DataFrame(X, columns=["x0", "x1"]).to_csv(src, index=False)
        dst = tmp_path / "labels.parquet"
        _run_script(["predict", str(stack.run), str(src), str(dst)], script_env, outputs)
        scored = pd.read_parquet(dst)
        assert len(scored) == len(X) and np.allclose(scored[["x0", "x1"]].to_numpy(), X)
        assert scored["label"].nunique() == best_k
        base = f"http://127.0.0.1:{port}"
        wait_ready(serve, f"{base}/ping", log, "python -m mlproject.serve", limit_s=180)
        served = _post(base, X)
    finally:
        stop(serve)
    outputs.append(log.read_text())
    assert np.array_equal(served, scored["label"].to_numpy())

    # Nothing left RUNNING, and the password is nowhere: record, Optuna study, outputs, logs.
    assert running(mlc) == []
    texts = _record_texts(mlc) + outputs
    texts += [json.dumps(s.user_attrs, default=str) for s in studies]
    texts += [p.read_text(errors="replace") for p in stack.logs.values() if p.name != "postgres.log"]
    leaks = [t[:300] for t in texts if stack.password in str(t)]
    assert not leaks, leaks
