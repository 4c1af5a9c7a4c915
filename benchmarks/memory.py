"""The ``memory`` section: peak resident memory of whole process trees, the project against its peers.

Each case is a fresh command whose process tree (the driver, the Dask worker processes it
spawns, joblib's pool, Optuna's threads live in the driver) is sampled with ``psutil`` every
``--mem-interval`` seconds; the figure is the peak of the tree's summed RSS (what the machine
must hold at once), and beside it the driver's and the rest's share at that peak.  Cases run
in pairs, alternating which goes first per round; ratios are the median of the rounds' own.

* ``train``   ``python -m mlproject.train`` on ``--mem-rows`` x ``--features`` blobs (k = ``--k``)
  with ``backend=dask`` against ``backend=sklearn``;
* ``api``     :func:`toolkit.train.train` called from a script, the same two backends;
* ``search``  the ``peers`` workload (``--peer-rows``, ``--trials`` trials, 2 at a time):
  ``python -m mlproject.search`` against Optuna + ``MLflowCallback`` (:mod:`benchmarks.peers`).

Targets (issue 25): a ``dask`` fit at most 1.5x scikit-learn's peak, the search at most 1.1x
Optuna + callback's.  ``python -m benchmarks.memory -- CMD ...`` prints one command's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import Section, paired

__all__ = ["SECTION", "bench_memory", "tree_peak"]

REPO = Path(__file__).resolve().parents[1]
_MiB = 1 << 20
#: Variables a case must not inherit (under ``mlflow run -e benchmark`` they name the suite's run).
_DROPPED_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "KMEANS_LIFECYCLE_ENTRY_POINT",
                "DASK_SCHEDULER_ADDRESS")


def _tree_rss(root: Any) -> tuple[int, int]:
    """(summed RSS of ``root`` and all its descendants, ``root``'s own RSS); vanished ones count 0."""
    import psutil

    total = own = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        if p.pid == root.pid:
            own = rss
    return total, own


def tree_peak(cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path = REPO,
              interval: float = 0.05, log: str | Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; sample its process tree's summed RSS every ``interval`` s until it exits.

    Returns ``{"peak_mib", "driver_mib", "others_mib", "wall_s", "samples"}``: the peak of the
    summed RSS, and the root process's and its descendants' shares at that moment.

    Raises:
        RuntimeError: the command failed (the tail of its output in the message).
    """
    import psutil

    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak, driver, samples = 0, 0, 0
        while proc.poll() is None:
            total, own = _tree_rss(root)
            samples += 1
            if total > peak:
                peak, driver = total, own
            time.sleep(interval)
        wall = time.perf_counter() - t0
    finally:
        if log:
            out.close()
    if proc.returncode != 0:
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-12:]) if log else ""
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n{tail}")
    return {"peak_mib": peak / _MiB, "driver_mib": driver / _MiB, "others_mib": (peak - driver) / _MiB,
            "wall_s": wall, "samples": samples}


def _in_process_peak(fn: Any, interval: float = 0.05) -> tuple[Any, float]:
    """``fn()`` and the peak summed RSS (MiB) of this process and its children while it ran."""
    import psutil

    me = psutil.Process()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(me)[0])
            done.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        done.set()
        th.join()
    return out, max(peak[0], _tree_rss(me)[0]) / _MiB


# -- the cases -----------------------------------------------------------------------------------
def _fit_overrides(rows: int, features: int, k: int, backend: str) -> list[str]:
    return [f"backend={backend}", f"data.n_samples={rows}", f"data.n_features={features}", f"data.centers={k}",
            f"model.n_clusters={k}", "data.chunk_rows=250000", "tracking.log_plot=false"]


_API_SCRIPT = """
import sys
from toolkit.config import load_experiment
from toolkit.train import train
train(load_experiment(sys.argv[1], sys.argv[2:]))
"""


def _case_commands(case: str, rows: int, features: int, k: int, peers_spec: str | None,
                   peer_overrides: list[str]) -> dict[str, list[str]]:
    """``{variant: command}`` of one case: the project's variant first, its peer second."""
    py = sys.executable
    if case == "train":
        return {b: [py, "-m", "mlproject.train", "--config", "experiments/blobs.yaml",
                    "--set", " ".join(_fit_overrides(rows, features, k, b))] for b in ("dask", "sklearn")}
    if case == "api":
        return {b: [py, "-c", _API_SCRIPT, "experiments/blobs.yaml", *_fit_overrides(rows, features, k, b)]
                for b in ("dask", "sklearn")}
    if case == "search":
        from benchmarks import peers

        assert peers_spec is not None
        return {"project": peers.peer_command("project", peers_spec, peer_overrides),
                "optuna": peers.peer_command("optuna", peers_spec, peer_overrides)}
    raise ValueError(f"unknown memory case {case!r}; one of train, api, search")


#: The target of each case: project peak over peer peak.
TARGETS = {"train": 1.5, "api": 1.5, "search": 1.1}


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    uri = f"sqlite:///{folder}/mlflow.db"
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def bench_memory(tmp: str, cases: list[str], rows: int, features: int, k: int, peer_rows: int, trials: int,
                 rounds: int, jobs: int = 2, interval: float = 0.05) -> dict[str, Any]:
    """The ``memory`` section (module docstring): per case, median peaks and the paired ratio."""
    folder = Path(tmp) / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, overrides = None, []
    if "search" in cases:
        from benchmarks import peers

        overrides = peers.project_overrides(peer_rows, features, k, trials, jobs)
        cfg = peers.workload_config(overrides)
        spec_path = str(folder / "spec.json")
        Path(spec_path).write_text(json.dumps(peers.peer_spec(cfg, peers.project_trials(cfg), jobs)))
    report: dict[str, Any] = {"rows": rows, "features": features, "k": k, "peer_rows": peer_rows, "trials": trials,
                              "rounds": rounds, "interval_s": interval, "cases": {}, "ratios": {}, "targets": {}}
    for case in cases:
        cmds = _case_commands(case, rows, features, k, spec_path, overrides)
        names = list(cmds)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rnd in range(rounds):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                where = folder / f"{case}-{name}-{rnd}"
                where.mkdir()
                res = tree_peak(cmds[name], env=_env(where), interval=interval, log=where / "output.log")
                runs[name].append(res)
                print(f"memory round {rnd + 1}/{rounds}: {case}/{name:<8} peak {res['peak_mib']:7.0f} MiB "
                      f"(driver {res['driver_mib']:.0f} + others {res['others_mib']:.0f}), {res['wall_s']:.1f} s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        project, peer = names
        table = {n: {key: statistics.median(r[key] for r in runs[n])
                     for key in ("peak_mib", "driver_mib", "others_mib", "wall_s")} | {
                         "peaks_mib": [r["peak_mib"] for r in runs[n]]} for n in names}
        ratio = paired([r["peak_mib"] for r in runs[project]], [r["peak_mib"] for r in runs[peer]])
        report["cases"][case] = table
        report["ratios"][f"{case}: {project} peak over {peer} peak"] = ratio
        report["targets"][f"memory: {case} {project} peak <= {TARGETS[case]}x {peer}"] = ratio <= TARGETS[case]
    report["load_average"] = os.getloadavg()[0]
    return report


def _print_memory(me: dict[str, Any]) -> None:
    print(f"\n-- memory: peak RSS of the whole process tree (driver + workers + pools), sampled every "
          f"{1e3 * me['interval_s']:.0f} ms; fits on {me['rows']:,} x {me['features']} (k={me['k']}), the search "
          f"is the peers workload ({me['peer_rows']:,} rows, {me['trials']} trials); {me['rounds']} alternating "
          f"round(s), medians; load average {me['load_average']:.1f}")
    print(f"{'case':<8} {'variant':<9} {'peak MiB':>9} {'driver':>8} {'others':>8} {'wall s':>8}")
    for case, table in me["cases"].items():
        for name, r in table.items():
            print(f"{case:<8} {name:<9} {r['peak_mib']:>9.0f} {r['driver_mib']:>8.0f} {r['others_mib']:>8.0f} "
                  f"{r['wall_s']:>8.1f}")
    for k, v in me["ratios"].items():
        print(f"  {k:<44} {v:6.2f}x")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mem-cases", default="train,api,search", help="memory: comma list of train, api, search")
    p.add_argument("--mem-rows", type=int, default=1_000_000, help="memory: rows of the train and api fits")
    p.add_argument("--mem-interval", type=float, default=0.05, help="memory: seconds between RSS samples")


def _run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    cases = [c.strip() for c in args.mem_cases.split(",") if c.strip()]
    return bench_memory(tmp, cases, args.mem_rows, args.features, args.k, args.peer_rows, args.trials,
                        args.repeats, args.workers, args.mem_interval)


#: The section as ``python -m benchmarks.run --sections memory`` runs it.
SECTION = Section(_run, _print_memory, _add_arguments)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--":
        raise SystemExit("usage: python -m benchmarks.memory -- CMD [ARG ...]")
    print(json.dumps(tree_peak(sys.argv[2:], env=dict(os.environ))))
