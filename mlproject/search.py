"""Entry point ``search``: a hyperparameter search, one parent run with a child run per trial.

    mlflow run . -e search -P config=experiments/blobs.yaml -P backend=sklearn \
        -P strategy=optuna -P n_trials=20 --env-manager local
"""

from __future__ import annotations

from mlproject._cli import base_parser, load_config, run_main

_SEARCH_FLAGS = {
    "strategy": "search.strategy",
    "n_trials": "search.n_trials",
    "objective": "search.objective",
    "resume": "search.resume",
    "storage": "search.storage",
    "parallelism": "search.parallelism",
}


def main() -> int:
    parser = base_parser("hyperparameter search for k-means, tracked in MLflow")
    for flag in _SEARCH_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default="",
                            help=f"override {_SEARCH_FLAGS[flag]}")
    args = parser.parse_args()
    cfg = load_config(args, _SEARCH_FLAGS)

    from toolkit.console import say
    from toolkit.search import search
    from toolkit.tracking import run_url

    out = search(cfg, register=cfg.registry.register_best)
    say(
        f"search {out.study_name}: {out.counts['complete']} complete, {out.counts['failed']} failed, "
        f"{out.counts['pruned']} pruned"
    )
    say(f"best {out.objective} = {out.best_value:.4f} with {_short(out.best_params)}")
    if "adjusted_rand" in out.best_metrics:
        line = f"best model adjusted Rand index vs ground truth: {out.best_metrics['adjusted_rand']:.4f}"
        if out.baseline is not None:
            line += f"  (baseline scikit-learn KMeans with k = true classes: {out.baseline:.4f})"
        say(line)
    say(f"experiment: {out.experiment}   parent run: {out.parent_run_id}")
    say(f"look: {run_url(out.parent_run_id)}")
    return 0


def _short(params: dict) -> str:
    keys = ("n_clusters", "init", "n_init", "max_iter", "tol", "oversampling_factor")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)


if __name__ == "__main__":
    run_main(main)
