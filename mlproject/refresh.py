"""Entry point ``refresh``: fit new data from the champion's centres, register a challenger.

    mlflow run . -e refresh -P model_name=blobs-kmeans -P config=experiments/blobs.yaml \
        -P overrides="data.random_state=7" --env-manager local

The fit starts from ``<model_name>@champion``'s centres (one initialisation) on the config's data
and backend; the result is registered label-stable under the champion's names with the
``challenger`` alias (``promote`` decides whether it replaces the champion).  The last line
says how far the centres moved.
"""

from __future__ import annotations

import argparse

from mlproject._cli import FIELD_KEYS, add_config_options, entry_parser, load_config, run_main

#: Options that set a config key: option name -> dotted key (k comes from the champion).
OPTIONS = {name: FIELD_KEYS[name] for name in ("backend", "n_workers", "scheduler_address")}


def build_parser() -> argparse.ArgumentParser:
    """The ``refresh`` options (``MLproject``'s ``refresh`` parameters, one for one)."""
    parser = entry_parser("refresh", "mlproject.refresh",
                          "fit new data from the champion's centres and register a label-stable challenger")
    parser.add_argument("--model-name", dest="model_name", required=True,
                        help="registered model whose champion to refresh (native or twin name)")
    add_config_options(parser, OPTIONS)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    cfg = load_config(args, OPTIONS)

    from mlproject._cli import describe_registered, describe_run, say_made
    from toolkit.console import say
    from toolkit.refresh import refresh

    out = refresh(cfg, args.model_name)
    reg = out.registered
    say_made([describe_run(out.run_id), describe_registered(reg)], out.run_id)
    say(f"refresh finished: {out.model_name} v{reg.native_version} (challenger) from champion "
        f"v{out.champion_version} on backend {cfg.backend}: centre shift max {out.shift_max:.4g}, "
        f"mean {out.shift_mean:.4g} over {len(out.shifts)} clusters")
    return 0


if __name__ == "__main__":
    run_main(main)
