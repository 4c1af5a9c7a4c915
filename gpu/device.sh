#!/usr/bin/env bash
# Device side of the GPU kit (see docs/gpu.md). Runs on the lent GPU machine, in the repo root.
#
#   bash gpu/device.sh add NN    copy the carried .gpu-stage/chunk-NN into $GPU_STAGE_DIR, verify it,
#                                say which chunks are missing; the call that completes the set goes on
#                                to `run` (unless GPU_AUTORUN=0)
#   bash gpu/device.sh status    which chunks are still missing
#   bash gpu/device.sh install   reassemble + verify the wheels, install them into $GPU_SITE_DIR
#   bash gpu/device.sh run       install (if not yet), versions, depcheck, pytest -m gpu, seed checks,
#                                $OUT/gpu-report.md
#
# Environment: GPU_STAGE_DIR (/tmp/stage), GPU_SITE_DIR (/tmp/site), GPU_PYTHON (python3),
# GPU_AUTORUN (1), GPU_PYTEST_TIMEOUT (330 s), GPU_SEED_TIMEOUT (150 s), GPU_SKIP_TESTS (0),
# GPU_INSTALL_ONLY_CHECK (0: real install; 1: here-only dry run, see docs/gpu.md), OUT (the device
# tool's output folder; default $GPU_STAGE_DIR/out).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGE_DIR=${GPU_STAGE_DIR:-/tmp/stage}
SITE_DIR=${GPU_SITE_DIR:-/tmp/site}
PY=${GPU_PYTHON:-python3}
AUTORUN=${GPU_AUTORUN:-1}
PYTEST_TIMEOUT=${GPU_PYTEST_TIMEOUT:-330}
SEED_TIMEOUT=${GPU_SEED_TIMEOUT:-150}
OUT=${OUT:-$STAGE_DIR/out}
KIT=("$PY" "$REPO/gpu/kit.py")
TIMINGS="$STAGE_DIR/timings.tsv"

mkdir -p "$STAGE_DIR" "$OUT"

# step NAME CMD...: run, time, append "name<TAB>seconds<TAB>rc" to $TIMINGS; returns the command's rc.
step() {
    local name=$1 t0 t1 rc=0
    shift
    echo "== $name"
    t0=$EPOCHREALTIME
    "$@" || rc=$?
    t1=$EPOCHREALTIME
    printf '%s\t%s\t%s\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')" "$rc" >>"$TIMINGS"
    echo "== $name: rc=$rc"
    return "$rc"
}

use_site() {
    # gpu/boot/sitecustomize.py runs the kit's .pth files and shows the kit to cuda-pathfinder.
    export GPU_KIT_SITE="$SITE_DIR"
    export PYTHONPATH="$REPO/gpu/boot:$SITE_DIR:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$SITE_DIR/bin:$PATH"
    # Belt and braces for libraries dlopen()ed by soname (the kit's nvJitLink 13.5 before the image's 13.0).
    export LD_LIBRARY_PATH="$SITE_DIR/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if [[ -z ${CUDA_HOME:-} && -d /usr/local/cuda ]]; then export CUDA_HOME=/usr/local/cuda; fi
    export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
}

do_add() {
    local n=$1 dir
    [[ $n =~ ^[0-9]+$ ]] || { echo "usage: device.sh add NN" >&2; return 2; }
    n=$(printf '%02d' "$((10#$n))")
    dir="$REPO/.gpu-stage/chunk-$n"
    [[ -d $dir ]] || { echo "ERROR: $dir was not carried (carry: [\".gpu-stage/chunk-$n\"])" >&2; return 2; }
    local rc=0
    step "add chunk $n" "${KIT[@]}" add "$dir" "$STAGE_DIR" || rc=$?
    # rc 3: chunks still missing (normal); 0: the set is complete.
    if [[ $rc -eq 0 && $AUTORUN == 1 ]]; then
        do_run
    elif [[ $rc -ne 0 && $rc -ne 3 ]]; then
        return "$rc"
    fi
}

do_install() {
    local marker="$SITE_DIR/.kit-installed" created
    created=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["kit_id"])' "$STAGE_DIR/manifest.json")
    if [[ -f $marker && $(cat "$marker") == "$created" ]]; then
        echo "already installed in $SITE_DIR ($created)"
        return 0
    fi
    step "reassemble + verify" "${KIT[@]}" assemble "$STAGE_DIR"
    if [[ ${GPU_INSTALL_ONLY_CHECK:-0} == 1 ]]; then
        # Here (no cp312 interpreter): let pip unpack into the target anyway, ignoring the tags.
        step "install (check mode)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            --target "$SITE_DIR" "$STAGE_DIR"/wheels/*.whl
    else
        step "install" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE_DIR" "$STAGE_DIR"/wheels/*.whl
    fi
    echo "$created" >"$marker"
    # The wheels are no longer needed (about 1 GiB).
    rm -rf "$STAGE_DIR/wheels"
}

versions() {
    "$PY" - <<'EOF'
import importlib, json, sys
out = {"python": sys.version.split()[0]}
for mod in ("cuml", "cudf", "dask_cudf", "dask_cuda", "raft_dask", "rmm", "dask", "distributed",
            "mlflow", "optuna", "cupy", "numba", "numba_cuda", "numpy", "pandas", "pyarrow", "sklearn"):
    try:
        m = importlib.import_module(mod)
        out[mod] = getattr(m, "__version__", "?") + "  " + str(getattr(m, "__file__", "")).rsplit("/", 2)[0]
    except Exception as exc:  # report and go on: the tests say the rest
        out[mod] = f"IMPORT FAILED: {type(exc).__name__}: {exc}"[:300]
try:
    import cupy
    out["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
except Exception as exc:
    out["gpu"] = f"FAILED: {exc}"[:300]
print(json.dumps(out, indent=1))
EOF
}

report() {
    local f="$OUT/gpu-report.md"
    {
        echo "# GPU kit run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo
        echo "| step | seconds | rc |"
        echo "| --- | ---: | ---: |"
        awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$TIMINGS"
        echo
        for part in versions depcheck pytest-summary seed-checks; do
            [[ -f $OUT/$part.txt ]] || continue
            echo "## $part"
            echo
            echo '```'
            cat "$OUT/$part.txt"
            echo '```'
            echo
        done
    } >"$f"
    cp "$TIMINGS" "$OUT/timings.tsv"
    echo "report: $f"
}

do_run() {
    local rc=0 overall=0
    "${KIT[@]}" status "$STAGE_DIR" || { echo "ERROR: the set is incomplete" >&2; return 3; }
    do_install || return $?
    use_site
    step "versions" versions >"$OUT/versions.txt" 2>&1 || overall=1
    cat "$OUT/versions.txt"
    step "depcheck" "${KIT[@]}" depcheck "$STAGE_DIR" "$SITE_DIR" >"$OUT/depcheck.txt" 2>&1 || true
    cat "$OUT/depcheck.txt"
    if [[ ${GPU_SKIP_TESTS:-0} != 1 ]]; then
        (cd "$REPO" && step "pytest -m gpu" timeout -k 10 "$PYTEST_TIMEOUT" "$PY" -m pytest -m gpu -q -n 0 \
            -p no:cacheprovider --junitxml="$OUT/gpu-junit.xml" tests/) \
            2>&1 | tee "$OUT/pytest.log" || true
        rc=$(awk -F'\t' '$1=="pytest -m gpu"{r=$3} END{print r+0}' "$TIMINGS")
        [[ $rc -eq 0 ]] || overall=1
        tail -n 40 "$OUT/pytest.log" >"$OUT/pytest-summary.txt"
        (cd "$REPO" && step "seed checks" timeout -k 10 "$SEED_TIMEOUT" "$PY" gpu/seed_checks.py --require-gpu \
            --json-out "$OUT/seed-checks.json") 2>&1 | tee "$OUT/seed-checks.txt" || true
        rc=$(awk -F'\t' '$1=="seed checks"{r=$3} END{print r+0}' "$TIMINGS")
        [[ $rc -eq 0 ]] || overall=1
    fi
    report
    return "$overall"
}

main() {
    local cmd=${1:-status}
    case $cmd in
        add) shift; do_add "${1:-}" ;;
        status) "${KIT[@]}" status "$STAGE_DIR" || [[ $? -eq 3 ]] ;;
        install) "${KIT[@]}" status "$STAGE_DIR" && do_install ;;
        run) do_run ;;
        *) sed -n '2,20p' "${BASH_SOURCE[0]}"; return 2 ;;
    esac
}

main "$@"
