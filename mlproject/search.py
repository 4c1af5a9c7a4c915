"""Entry points ``search`` and ``main``: a hyperparameter search, one parent run with a child
run per trial.

    mlflow run . -e search -P config=experiments/blobs.yaml -P backend=sklearn \
        -P strategy=optuna -P n_trials=20 --env-manager local
"""

from __future__ import annotations

import argparse

from mlproject._cli import FIELD_KEYS, add_config_options, entry_parser, load_config, run_main
from toolkit.errors import launched_entry_point

#: Options that set a config key: option name -> dotted key (``resume`` is a yes/no key).
OPTIONS = {
    "backend": FIELD_KEYS["backend"],
    "strategy": "search.strategy",
    "n_trials": "search.n_trials",
    "objective": "search.objective",
    "parallelism": "search.parallelism",
    "resume": "search.resume",
    "storage": "search.storage",
    "n_workers": FIELD_KEYS["n_workers"],
    "scheduler_address": FIELD_KEYS["scheduler_address"],
}


def build_parser() -> argparse.ArgumentParser:
    """The ``search`` options (``MLproject``'s ``search`` and ``main`` parameters, one for one)."""
    parser = entry_parser(launched_entry_point() or "search", "mlproject.search",
                          "hyperparameter search for k-means, tracked in MLflow (one child run per trial)")
    add_config_options(parser, OPTIONS)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    cfg = load_config(args, OPTIONS)

    from mlproject._cli import describe_registered, describe_run, say_made
    from toolkit.console import say
    from toolkit.errors import option_hint
    from toolkit.redact import redact
    from toolkit.search import search
    from toolkit.search.study import default_storage

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
    trials = sum(out.counts.get(k, 0) for k in ("complete", "failed", "pruned"))
    made = [f"parent {describe_run(out.parent_run_id)}, {trials} trial(s) as its child runs"]
    if out.registered is not None:
        made.append(describe_registered(out.registered))
    # Optuna runs every search but scikit-learn's own grid/random ones (runner.search's rule).
    if cfg.search.strategy == "optuna" or cfg.backend != "sklearn":
        made.append(f"study {out.study_name} in {redact(cfg.search.storage or default_storage())} "
                    f"(continue it with {option_hint('resume', 'true')})")
    say_made(made, out.parent_run_id)
    return 0


def _short(params: dict) -> str:
    keys = ("n_clusters", "init", "n_init", "max_iter", "tol", "oversampling_factor")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)


if __name__ == "__main__":
    run_main(main)
