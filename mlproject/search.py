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
    from toolkit.redact import redact
    from toolkit.search import search
    from toolkit.search.study import STORAGE_TAG, default_storage
    from toolkit.tracking.runs import client

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
        storage = client().get_run(out.parent_run_id).data.tags.get(STORAGE_TAG) or redact(default_storage())
        made.append(f"study {out.study_name} in {storage}; continue it with: "
                    f"{_resume_command(args, storage, out.study_name, out.experiment)}")
    say_made(made, out.parent_run_id)
    return 0


def _resume_command(args: argparse.Namespace, storage: str, study_name: str, experiment: str) -> str:
    """The command that continues this search: the options given, the study and its storage,
    ``resume=true``; as typed under ``mlflow run`` (``-P``, in the parent's experiment) or run
    directly (``--``)."""
    import os
    import shlex

    from mlproject._cli import NO_OVERRIDES, is_unset
    from toolkit.redact import redact

    replaced = ("resume", "search.resume", "storage", "search.storage", "search.study_name")
    words = [w for chunk in args.overrides if chunk.strip() not in ("", NO_OVERRIDES) for w in shlex.split(chunk)
             if w.partition("=")[0] not in replaced]
    options = {name: getattr(args, name) for name in OPTIONS
               if name not in ("resume", "storage") and not is_unset(getattr(args, name))}
    options.update(resume="true", storage=storage)
    overrides = shlex.join([*words, f"search.study_name={study_name}"])
    launched = launched_entry_point()
    if launched:
        parts = ["mlflow run . -e", launched, f"-P config={shlex.quote(args.config)}",
                 *(f"-P {k}={shlex.quote(str(v))}" for k, v in options.items()),
                 f"-P overrides={shlex.quote(overrides)}", f"--experiment-name {shlex.quote(experiment)}",
                 "--env-manager local"]
    else:
        parts = ["python -m mlproject.search", f"--config {shlex.quote(args.config)}",
                 *(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in options.items()),
                 f"--set {shlex.quote(overrides)}"]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return (f"MLFLOW_TRACKING_URI={shlex.quote(redact(uri))} " if uri else "") + " ".join(parts)


def _short(params: dict) -> str:
    keys = ("n_clusters", "init", "n_init", "max_iter", "tol", "oversampling_factor")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)


if __name__ == "__main__":
    run_main(main)
