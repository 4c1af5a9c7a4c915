"""Entry point ``train``: one k-means fit, tracked in MLflow.

    mlflow run . -e train -P config=experiments/blobs.yaml -P backend=sklearn --env-manager local
"""

from __future__ import annotations

import argparse

from mlproject._cli import FIELD_KEYS, add_config_options, add_flag, entry_parser, load_config, run_main
from toolkit.config import parse_flag

#: Options that set a config key: option name -> dotted key.
OPTIONS = {name: FIELD_KEYS[name] for name in ("backend", "n_clusters", "n_workers", "scheduler_address")}


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` options (``MLproject``'s ``train`` parameters, one for one)."""
    parser = entry_parser("train", "mlproject.train", "one k-means fit, tracked in MLflow")
    add_config_options(parser, OPTIONS)
    add_flag(parser, "register", "register the native model and its scikit-learn twin (challenger alias)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    cfg = load_config(args, OPTIONS)
    register = parse_flag(args.register, "register")

    from mlproject._cli import describe_registered, describe_run, say_made
    from toolkit.console import say
    from toolkit.train import train

    outcome = train(cfg, register=register)
    shown = {k: round(v, 4) for k, v in outcome.metrics.items()}
    say(f"train finished: backend={cfg.backend} k={cfg.model.n_clusters} metrics={shown}")
    made = [describe_run(outcome.run_id)]
    if outcome.registered is not None:
        made.append(describe_registered(outcome.registered))
    say_made(made, outcome.run_id)
    return 0


if __name__ == "__main__":
    run_main(main)
