"""Choosing k without labels: which unsupervised criterion picks a k that matches the truth?

    python -m benchmarks.choose_k                       # digits and 8 blobs, k = 2..20
    python -m benchmarks.choose_k --k-max 16 --n-init 10 --resamples 10 --json out.json
    python -m benchmarks.choose_k --datasets none --search silhouette,stability   # the shipped search

For every k the same configuration is fitted once (scikit-learn backend, ``--n-init``
initialisations, ``model.random_state`` ``--seed``) through :func:`toolkit.train.fit_and_score`,
the path a search trial takes, with the resampling metrics on: silhouette, Calinski-Harabasz,
Davies-Bouldin, stability and prediction strength are the figures a search would optimise.
Each criterion then picks k with no label in sight; the adjusted Rand index of that k's fit
against the true classes says how well it chose.  Criteria:

* ``silhouette``, ``calinski_harabasz``: largest value; ``davies_bouldin``: smallest;
* ``stability``: largest mean pairwise ARI of refits on 80 % subsamples;
* ``prediction_strength``: Tibshirani & Walther's rule, the largest k whose strength is at
  least 0.8 (``-`` when no k reaches it: then k = 2, "no strong structure");
* ``silhouette x stability``: largest product;
* ``knee[silhouette, n_clusters]``: the knee point (:func:`toolkit.search.objectives.knee_point`)
  of the Pareto front of silhouette against k, what ``search.objectives: [silhouette,
  n_clusters]`` refits.

``--search`` runs the shipped ``experiments/digits.yaml`` search (20 Optuna trials over
k = 8..14, init and n_init, fixed seed) once per objective listed, on a temporary MLflow store
and a 2-worker local cluster, and reports the configuration it refits and its ARI.

Figures are recorded in docs/benchmarks.md ("Choosing k without labels (digits)").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np

#: Prediction strength a k must reach to count as real structure (Tibshirani & Walther 2005).
PS_THRESHOLD = 0.8


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits, make_blobs

    if name == "digits":
        X, y = load_digits(return_X_y=True)
    else:  # 8 true centres, overlapping enough that k is not trivial
        X, y = make_blobs(n_samples=2000, n_features=8, centers=8, cluster_std=2.0, random_state=0)
    return X.astype(np.float32), y


def scan(name: str, ks: list[int], n_init: int, seed: int, resamples: int) -> list[dict[str, float]]:
    """Every metric, and the ARI against the truth, of the fit for each k."""
    from toolkit.backends.scikit import SklearnBackend
    from toolkit.config import MetricsConfig, ModelConfig
    from toolkit.train import fit_and_score

    X, y = _data(name)
    backend = SklearnBackend()
    mcfg = MetricsConfig(silhouette_sample=2000, stability=True, stability_resamples=resamples)
    rows = []
    for k in ks:
        t0 = time.perf_counter()
        _, m = fit_and_score(backend, X, ModelConfig(n_clusters=k, n_init=n_init, random_state=seed), mcfg, y)
        rows.append({"k": k, **{key: float(m[key]) for key in (
            "adjusted_rand", "silhouette", "calinski_harabasz", "davies_bouldin", "stability",
            "prediction_strength")}, "seconds": time.perf_counter() - t0})
    return rows


def choose(rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """For each criterion: the k it picks, and that fit's ARI against the truth."""
    from toolkit.search.objectives import knee_point

    def pick(key: Any, best: Any = max) -> dict[str, Any]:
        row = best(rows, key=key)
        return {"k": int(row["k"]), "ari": row["adjusted_rand"]}

    out = {
        "silhouette": pick(lambda r: r["silhouette"]),
        "calinski_harabasz": pick(lambda r: r["calinski_harabasz"]),
        "davies_bouldin": pick(lambda r: r["davies_bouldin"], min),
        "stability": pick(lambda r: (r["stability"], -r["k"])),  # ties: the smaller k
    }
    strong = [r for r in rows if r["prediction_strength"] >= PS_THRESHOLD]
    row = max(strong, key=lambda r: r["k"]) if strong else min(rows, key=lambda r: r["k"])
    out["prediction_strength"] = {"k": int(row["k"]), "ari": row["adjusted_rand"], "reached": bool(strong)}
    out["silhouette x stability"] = pick(lambda r: r["silhouette"] * r["stability"])
    # The Pareto front of (silhouette up, k up) is the best silhouette seen at each k or above.
    front = [r for r in rows if not any(o["silhouette"] >= r["silhouette"] and o["k"] >= r["k"] and o is not r
                                        for o in rows)]
    i = knee_point(np.array([[r["silhouette"], r["k"]] for r in front]), ["maximize", "maximize"])
    out["knee[silhouette, n_clusters]"] = {"k": int(front[i]["k"]), "ari": front[i]["adjusted_rand"]}
    return out


def search_digits(objectives: list[str], policy: str = "fixed") -> list[dict[str, Any]]:
    """The shipped digits search, once per objective: what it refits, and that model's ARI."""
    import os
    import tempfile
    from pathlib import Path

    from toolkit.config import load_experiment
    from toolkit.search import search

    config = Path(__file__).resolve().parents[1] / "experiments" / "digits.yaml"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.setdefault("KMEANS_QUIET", "1")
        for objective in objectives:
            cfg = load_experiment(config, [f"search.objective={objective}", f"search.seed_policy={policy}",
                                           f"search.storage={tmp}/optuna-{objective}.log",
                                           f"tracking.experiment=choose-k-{objective}", "tracking.log_plot=false"])
            res = search(cfg)
            p = res.best_params
            out.append({"objective": objective, "seed_policy": policy, "k": int(p["n_clusters"]),
                        "init": p["init"], "n_init": int(p["n_init"]), "value": res.best_value,
                        "ari": float(res.best_metrics["adjusted_rand"])})
            print(f"search objective={objective} policy={policy}: {out[-1]}", flush=True)
    return out


def _markdown(name: str, rows: list[dict[str, float]], chosen: dict[str, dict[str, Any]]) -> str:
    lines = [f"{name}: per k", "",
             "| k | ARI | silhouette | Calinski-Harabasz | Davies-Bouldin | stability | prediction strength |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['adjusted_rand']:.3f} | {r['silhouette']:.4f} | {r['calinski_harabasz']:.1f} | "
              f"{r['davies_bouldin']:.3f} | {r['stability']:.3f} | {r['prediction_strength']:.3f} |" for r in rows]
    lines += ["", f"{name}: k chosen without labels", "", "| criterion | k | ARI |", "|---|---:|---:|"]
    for crit, c in chosen.items():
        note = " (no k reaches 0.8)" if c.get("reached") is False else ""
        lines.append(f"| {crit} | {c['k']}{note} | {c['ari']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits,blobs8")
    p.add_argument("--k-min", type=int, default=2)
    p.add_argument("--k-max", type=int, default=20)
    p.add_argument("--n-init", type=int, default=4, help="initialisations per fit (digits.yaml: 4)")
    p.add_argument("--seed", type=int, default=0, help="model.random_state of every fit")
    p.add_argument("--resamples", type=int, default=5, help="metrics.stability_resamples")
    p.add_argument("--search", default="", help="objectives to run the digits.yaml search with")
    p.add_argument("--seed-policy", default="fixed", help="search.seed_policy of --search")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    # One BLAS/OpenMP thread: on a shared machine oversubscribed threads made fits 10x slower.
    from threadpoolctl import threadpool_limits

    report: dict[str, Any] = {"settings": vars(args)}
    with threadpool_limits(limits=1):
        for name in [d.strip() for d in args.datasets.split(",") if d.strip() not in ("", "none")]:
            rows = scan(name, list(range(args.k_min, args.k_max + 1)), args.n_init, args.seed, args.resamples)
            chosen = choose(rows)
            report[name] = {"per_k": rows, "chosen": chosen}
            print(_markdown(name, rows, chosen), end="\n\n", flush=True)
    if args.search:
        report["search"] = search_digits([o.strip() for o in args.search.split(",") if o.strip()],
                                         args.seed_policy)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
