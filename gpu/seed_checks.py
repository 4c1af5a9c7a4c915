#!/usr/bin/env python3
"""Seed checks of the raw GPU stack, independent of toolkit/: cuML and cuML-Dask against scikit-learn.

On 100k x 2 blobs (6 centres, std 0.1):
  reference   scikit-learn KMeans (float64): labels, inertia, centres
  cuml        cuml.KMeans: ARI vs the reference labels; inertia of its centres on the same data
  cuml-dask   cuml.dask.cluster.KMeans on a LocalCUDACluster: the same, plus
              get_combined_model() -> cuml.KMeans.from_sklearn(combined.as_sklearn()) (single GPU)
              -> as_sklearn() (CPU twin): the three predict the same labels on the data
Prints one JSON object (and writes it to --json-out). Without cuML or a GPU the GPU parts are
reported as skipped: exit 0, or 1 with --require-gpu. Exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=100_000)
    ap.add_argument("--n-features", type=int, default=2)
    ap.add_argument("--centers", type=int, default=6)
    ap.add_argument("--std", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partitions", type=int, default=4, help="dask_cudf partitions for cuml-dask")
    ap.add_argument("--backends", default="cuml,cuml-dask", help="comma-separated subset of cuml,cuml-dask")
    ap.add_argument("--min-ari", type=float, default=0.999)
    ap.add_argument("--inertia-rtol", type=float, default=1e-3)
    ap.add_argument("--require-gpu", action="store_true", help="fail (exit 1) when cuML or the GPU is missing")
    ap.add_argument("--cpu-self-check", action="store_true",
                    help="also run the comparison code on a second scikit-learn fit (exercises it without a GPU)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    bad = set(args.backends.split(",")) - {"cuml", "cuml-dask"}
    if bad:
        ap.error(f"unknown backend(s): {', '.join(sorted(bad))}")
    if args.n_samples < args.centers:
        ap.error("--n-samples must be at least --centers")
    return args


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=args.n_samples, n_features=args.n_features, centers=args.centers,
                      cluster_std=args.std, random_state=args.seed)
    return X.astype(np.float32), y


def inertia_at(X: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest of `centers`, in float64 on the host."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    d = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    return float(d.min(axis=1).sum())


def reference(X: np.ndarray, args: argparse.Namespace) -> dict:
    from sklearn.cluster import KMeans

    t = time.perf_counter()
    km = KMeans(n_clusters=args.centers, n_init=10, random_state=args.seed).fit(X.astype(np.float64))
    return {"model": km, "labels": km.labels_, "inertia": float(km.inertia_),
            "inertia_at_centres": inertia_at(X, km.cluster_centers_), "seconds": time.perf_counter() - t}


def to_host(a) -> np.ndarray:
    for attr in ("to_numpy", "get"):
        if hasattr(a, attr) and not isinstance(a, np.ndarray):
            try:
                return np.asarray(getattr(a, attr)())
            except Exception:
                pass
    return np.asarray(a)


def compare(name: str, labels, centers, own_inertia, ref: dict, X: np.ndarray, args, t0: float) -> dict:
    from sklearn.metrics import adjusted_rand_score

    labels = to_host(labels)
    ari = float(adjusted_rand_score(ref["labels"], labels))
    at = inertia_at(X, to_host(centers))
    rel = abs(at - ref["inertia_at_centres"]) / max(ref["inertia_at_centres"], 1e-12)
    return {"backend": name, "ari_vs_sklearn": ari, "inertia_own": float(own_inertia),
            "inertia_at_centres": at, "sklearn_inertia_at_centres": ref["inertia_at_centres"],
            "inertia_rel_diff": rel, "seconds": round(time.perf_counter() - t0, 2),
            "ok": ari >= args.min_ari and rel <= args.inertia_rtol}


def check_cuml(X: np.ndarray, ref: dict, args) -> dict:
    import cuml
    import cupy as cp

    t0 = time.perf_counter()
    km = cuml.KMeans(n_clusters=args.centers, random_state=args.seed, n_init=10, output_type="numpy")
    km.fit(cp.asarray(X))
    return compare("cuml", km.labels_, km.cluster_centers_, km.inertia_, ref, X, args, t0)


def check_cuml_dask(X: np.ndarray, ref: dict, args) -> dict:
    import cudf
    import cuml
    import dask_cudf
    from cuml.dask.cluster import KMeans as DaskKMeans
    from dask_cuda import LocalCUDACluster
    from distributed import Client

    t0 = time.perf_counter()
    with LocalCUDACluster(n_workers=1, dashboard_address=None) as cluster, Client(cluster) as client:
        df = cudf.DataFrame({f"x{i}": X[:, i] for i in range(X.shape[1])})
        ddf = dask_cudf.from_cudf(df, npartitions=args.partitions).persist()
        km = DaskKMeans(client=client, n_clusters=args.centers, init="k-means||", random_state=args.seed)
        km.fit(ddf)
        dist_labels = to_host(km.predict(ddf).compute())
        combined = km.get_combined_model()
        result = compare("cuml-dask", dist_labels, combined.cluster_centers_, getattr(km, "inertia_", np.nan),
                         ref, X, args, t0)
        # The combined model is a KMeansMG (needs a handle); rebuild a plain single-GPU model.
        single = cuml.KMeans.from_sklearn(combined.as_sklearn())
        twin = single.as_sklearn()
        single_labels = to_host(single.predict(X))
        twin_labels = twin.predict(X.astype(twin.cluster_centers_.dtype))
        result.update({
            "combined_type": type(combined).__name__, "single_type": type(single).__name__,
            "twin_type": type(twin).__name__,
            "single_eq_twin": int((single_labels == twin_labels).sum()),
            "dist_eq_single": int((dist_labels == single_labels).sum()),
            "n": len(X),
        })
        result["ok"] = (result["ok"] and type(single) is cuml.KMeans
                        and result["single_eq_twin"] == len(X) and result["dist_eq_single"] == len(X))
        result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: dict = {"args": {k: v for k, v in vars(args).items() if k != "json_out"}, "checks": []}
    X, _ = make_data(args)
    ref = reference(X, args)
    out["sklearn"] = {"inertia": ref["inertia"], "inertia_at_centres": ref["inertia_at_centres"],
                      "seconds": round(ref["seconds"], 2)}
    try:
        import cuml  # noqa: F401
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
        gpu = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        out["gpu"] = gpu
        skip = None
    except Exception as exc:  # no cuML, no CuPy, no driver, no device
        skip = f"{type(exc).__name__}: {exc}"[:300]
    failed = False
    if args.cpu_self_check:
        from sklearn.cluster import KMeans

        t0 = time.perf_counter()
        km = KMeans(n_clusters=args.centers, n_init=3, random_state=args.seed + 1).fit(X)
        res = compare("sklearn-self", km.labels_, km.cluster_centers_, km.inertia_, ref, X, args, t0)
        failed |= not res["ok"]
        out["checks"].append(res)
    for name in args.backends.split(","):
        if skip:
            out["checks"].append({"backend": name, "skipped": skip})
            continue
        try:
            fn = check_cuml if name == "cuml" else check_cuml_dask
            res = fn(X, ref, args)
        except Exception as exc:
            res = {"backend": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                   "traceback": traceback.format_exc()[-3000:]}
        failed |= not res.get("ok", False)
        out["checks"].append(res)
    out["ok"] = not failed and not (skip and args.require_gpu)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
