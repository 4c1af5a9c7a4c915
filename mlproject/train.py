"""Entry point ``train``: one k-means fit, tracked in MLflow.

    mlflow run . -e train -P config=experiments/blobs.yaml -P backend=sklearn --env-manager local
"""

from __future__ import annotations

from mlproject._cli import base_parser, load_config, run_main
from toolkit.config import parse_flag


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--register", default="false", help="true: register the native model and its twin")
    args = parser.parse_args()
    cfg = load_config(args)
    from toolkit.console import say
    from toolkit.tracking import run_url
    from toolkit.train import train

    outcome = train(cfg, register=parse_flag(args.register, "register"))
    shown = {k: round(v, 4) for k, v in outcome.metrics.items()}
    say(f"train finished: backend={cfg.backend} k={cfg.model.n_clusters} metrics={shown}")
    say(f"run: {run_url(outcome.run_id)}")
    return 0


if __name__ == "__main__":
    run_main(main)
