"""Scratch timing: per-iteration Lloyd cost of scikit-learn vs the ``dask`` backend vs dask-ml.

Not part of the benchmark suite.  Per-iteration time = (t(N2) - t(N1)) / (N2 - N1) for two runs
from the same initial centroids with ``tol=0``, so fixed costs (validation, centring, the data
moments pass, the final E-step, engine set-up) cancel out.  Repetitions are interleaved across
the three implementations (the machine may be shared) and medians reported.

    python benchmarks/_scratch_lloyd.py                 # 1M x 16 float32 blobs, k=8
    python benchmarks/_scratch_lloyd.py --rows 200000 --reps 3 --no-daskml
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _per_iter(fit, n1: int, n2: int) -> tuple[float, int, int]:
    t = time.perf_counter()
    it1 = fit(n1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    it2 = fit(n2)
    t2 = time.perf_counter() - t
    return (t2 - t1) / (it2 - it1), it1, it2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n1", type=int, default=5)
    ap.add_argument("--n2", type=int, default=25)
    ap.add_argument("--no-daskml", action="store_true")
    args = ap.parse_args()

    from distributed import Client, LocalCluster
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    from toolkit.backends.daskml import to_dask_array
    from toolkit.backends.dask_lloyd import DaskKMeans
    from toolkit.data import Dataset

    X, _ = make_blobs(args.rows, args.features, centers=8, random_state=0)
    X = X.astype(np.float32)
    rng = np.random.default_rng(0)
    C0 = X[rng.choice(len(X), args.k, replace=False)]

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    )
    client = Client(cluster)
    ds = Dataset(name="blobs", X=X, y=None, feature_names=[], source="make_blobs")
    Xd = to_dask_array(ds, client, persist=True)
    print(f"data {X.shape} float32, {Xd.numblocks[0]} blocks, k={args.k}, "
          f"iterations {args.n1} vs {args.n2}")

    def sk_fit(n: int) -> int:
        return KMeans(args.k, init=C0, n_init=1, max_iter=n, tol=0, algorithm="lloyd").fit(X).n_iter_

    def ours(engine: str):
        def fit(n: int) -> int:
            return DaskKMeans(args.k, init=C0, max_iter=n, tol=0).fit(Xd, client=client, engine=engine).n_iter_
        return fit

    def daskml_fit(n: int) -> int:
        from dask_ml.cluster import KMeans as DMKMeans

        return DMKMeans(n_clusters=args.k, init=C0, max_iter=n, tol=0).fit(Xd).n_iter_

    runs = {"sklearn": (sk_fit, args.n1, args.n2), "dask[actors]": (ours("actors"), args.n1, args.n2),
            "dask[futures]": (ours("futures"), args.n1, args.n2)}
    if not args.no_daskml:
        runs["dask-ml"] = (daskml_fit, 2, 5)
    ours("actors")(2)  # warm up workers (imports)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):
        for name, (fit, n1, n2) in runs.items():
            if name == "dask-ml" and rep >= 2:
                continue  # slow; two repetitions are plenty
            dt, it1, it2 = _per_iter(fit, n1, n2)
            assert (it1, it2) == (n1, n2), f"{name} converged early: {it1}, {it2}"
            times[name].append(dt * 1e3)
    # Same init, same iterations: same centers as scikit-learn.
    sk = KMeans(args.k, init=C0, n_init=1, max_iter=args.n2, tol=0).fit(X)
    dk = DaskKMeans(args.k, init=C0, max_iter=args.n2, tol=0).fit(Xd, client=client)
    print(f"max |center diff| vs sklearn after {args.n2} iterations: "
          f"{np.abs(dk.cluster_centers_ - sk.cluster_centers_).max():.2e}, "
          f"inertia rel diff {abs(dk.inertia_ - sk.inertia_) / sk.inertia_:.2e}")
    base = statistics.median(times["sklearn"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:14s} median {med:8.1f} ms/iter  (runs: {', '.join(f'{t:.1f}' for t in ts)})"
              f"  ratio to sklearn {med / base:.2f}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
