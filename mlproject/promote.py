"""Entry point ``promote``: move ``champion`` to ``challenger`` only if it scores better and
changes at most ``max_churn`` of the champion's reference labels (``registry.max_churn``).

    mlflow run . -e promote -P model_name=blobs-kmeans -P config=experiments/blobs.yaml --env-manager local
"""

from __future__ import annotations

from mlproject._cli import base_parser, load_config, run_main
from toolkit.config import parse_flag


def main() -> int:
    parser = base_parser("promote a registered k-means model by alias", fields=())
    parser.add_argument("--model-name", dest="model_name", required=True, help="registered model name")
    parser.add_argument("--metric", default="", help="evaluation metric (default: registry.eval_metric)")
    parser.add_argument("--max-churn", dest="max_churn", default="",
                        help="largest share of relabelled reference rows, 0..1 (default: registry.max_churn)")
    parser.add_argument("--force", default="false", help="true: promote even if the challenger loses")
    args = parser.parse_args()
    # Through the config, so a bad value is refused in one line like any other setting.
    cfg = load_config(args, extra={"max_churn": "registry.max_churn"})

    from toolkit.console import say
    from toolkit.data import load_dataset
    from toolkit.registry import promote
    from toolkit.tracking import log_metrics, log_params, log_tags, tracked_run

    metric = args.metric or cfg.registry.eval_metric
    with tracked_run(cfg.experiment_name, f"promote-{args.model_name}", {"entry_point": "promote"}) as run_id:
        dataset = load_dataset(cfg.data)
        X = dataset.X if not dataset.is_lazy else dataset.X.compute()
        # `mlflow run` has already logged its -P values as params (metric="" when left out) and
        # MLflow refuses to change a logged param: the effective metric is logged as eval.metric.
        log_params(run_id, {"model_name": args.model_name, "force": args.force, "eval.metric": metric,
                            "eval.data": dataset.name, "eval.rows": dataset.n_samples,
                            "eval.max_churn": cfg.registry.max_churn})
        res = promote(args.model_name, X, dataset.y, metric=metric,
                      force=parse_flag(args.force, "force"), seed=cfg.metrics.seed,
                      max_churn=cfg.registry.max_churn)
        log_metrics(run_id, {"challenger_score": res.challenger_score,
                             **({"champion_score": res.champion_score} if res.champion_score is not None else {}),
                             **({"churn": res.churn} if res.churn is not None else {})})
        log_tags(run_id, {"promotion.outcome": "promoted" if res.promoted else "rejected",
                          "promotion.reason": res.reason,
                          "promotion.challenger_version": res.challenger_version,
                          "promotion.champion_version": str(res.champion_version)})
    verdict = "promoted to champion" if res.promoted else "kept as challenger"
    say(f"{res.name} v{res.challenger_version} {verdict}: {res.reason}")
    return 0


if __name__ == "__main__":
    run_main(main)
