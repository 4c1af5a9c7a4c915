"""Entry point ``promote``: move ``champion`` to ``challenger`` only if it scores better and
changes at most ``max_churn`` of the champion's reference labels (``registry.max_churn``).

    mlflow run . -e promote -P model_name=blobs-kmeans -P config=experiments/blobs.yaml --env-manager local

The decision is recorded in a run named ``promote <model> v<challenger>`` in the experiment of
the challenger's training run (see :func:`mlproject._cli.record_run`).
"""

from __future__ import annotations

import argparse

from mlproject._cli import add_config_options, add_flag, config_help, entry_parser, load_config, run_main
from toolkit._compat import argparse_actions
from toolkit.config import parse_flag

#: Options that set a config key: option name -> dotted key.
OPTIONS = {"metric": "registry.eval_metric", "max_churn": "registry.max_churn"}


def build_parser() -> argparse.ArgumentParser:
    """The ``promote`` options (``MLproject``'s ``promote`` parameters, one for one)."""
    parser = entry_parser("promote", "mlproject.promote", "promote a registered k-means model by alias")
    parser.add_argument("--model-name", dest="model_name", required=True,
                        help="registered model name (its scikit-learn twin is promoted with it)")
    add_config_options(parser, OPTIONS)
    # The help of the config-backed options says what they mean here, not only their key.
    for action in argparse_actions(parser):
        if action.dest == "metric":
            action.help = config_help(OPTIONS["metric"], "the metric the two models are compared on")
        elif action.dest == "max_churn":
            action.help = config_help(OPTIONS["max_churn"], "largest share of relabelled reference rows, 0..1")
    add_flag(parser, "force", "promote even if the challenger loses")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    # Through the config, so a bad value is refused in one line like any other setting.
    cfg = load_config(args, OPTIONS)
    force = parse_flag(args.force, "force")

    from mlproject._cli import describe_record, record_run, say_made
    from toolkit.console import say
    from toolkit.data import load_dataset
    from toolkit.registry import model_experiment, promote
    from toolkit.registry.integrity import get_version
    from toolkit.registry.promote import CHALLENGER, CHAMPION, PromotionPolicy
    from toolkit.tracking import get_or_create_experiment, log_metrics, log_params, log_tags

    metric = cfg.registry.eval_metric
    # Looked up first: the run is named after the version it decides on, and kept beside it.
    challenger = get_version(args.model_name, CHALLENGER)
    run_name = f"promote {args.model_name} v{challenger.version}"
    # A version registered without a run has no experiment of its own: the config's then.
    home = model_experiment(args.model_name, str(challenger.version)) or get_or_create_experiment(cfg.experiment_name)
    with record_run(home, run_name, {"entry_point": "promote"}) as run_id:
        dataset = load_dataset(cfg.data)
        X = dataset.X if not dataset.is_lazy else dataset.X.compute()
        X = dataset.raw(X)  # the models predict the data's own coordinates (it may have been centred)
        # `mlflow run` has already logged its -P values as params (metric="from-config" when left
        # out) and MLflow refuses to change a logged param: the effective values are eval.*.
        log_params(run_id, {"promote.model_name": args.model_name, "promote.force": force,
                            "promote.challenger_version": challenger.version, "eval.metric": metric,
                            "eval.data": dataset.name, "eval.rows": dataset.n_samples,
                            "eval.max_churn": cfg.registry.max_churn})
        res = promote(args.model_name, X, dataset.y, PromotionPolicy(metric=metric, force=force, seed=cfg.metrics.seed,
                                                                    max_churn=cfg.registry.max_churn),
                      columns=list(dataset.feature_names or ()) or None)
        log_metrics(run_id, {"challenger_score": res.challenger_score,
                             **({"champion_score": res.champion_score} if res.champion_score is not None else {}),
                             **({"churn": res.churn} if res.churn is not None else {})})
        log_tags(run_id, {"promotion.outcome": "promoted" if res.promoted else "rejected",
                          "promotion.reason": res.reason,
                          "promotion.challenger_version": res.challenger_version,
                          "promotion.champion_version": str(res.champion_version)})
    verdict = "promoted to champion" if res.promoted else "kept as challenger"
    say(f"{res.name} v{res.challenger_version} {verdict}: {res.reason}")
    made = describe_record(run_id)
    if res.promoted:
        twin = _twin_line(challenger)
        made.append(f"alias {CHAMPION}: {res.name} v{res.challenger_version}{twin} "
                    f"(was {'v' + res.champion_version if res.champion_version else 'unset'})")
    else:
        made.append(f"no alias moved: {CHAMPION} stays on {res.name} v{res.champion_version}")
    say_made(made, run_id)
    return 0


def _twin_line(challenger: object) -> str:
    """`` and <twin> v<n>``: the scikit-learn twin, promoted with the native model (its version
    tags name it: ``twin.name``, ``twin.version``), or "" when it has none."""
    tags = getattr(challenger, "tags", None) or {}
    if tags.get("twin.name") and tags.get("twin.version"):
        return f" and {tags['twin.name']} v{tags['twin.version']}"
    return ""


if __name__ == "__main__":
    run_main(main)
