"""Entry point ``predict``: score CSV/Parquet files in parallel with a registered model.

    mlflow run . -e predict -P model_uri=models:/blobs-kmeans-sklearn@champion \
        -P input="data/*.parquet" -P output=predictions.parquet --env-manager local
"""

from __future__ import annotations

import argparse

from mlproject._cli import run_main
from toolkit.config import parse_flag


def main() -> int:
    parser = argparse.ArgumentParser(description="score files with a registered k-means model")
    parser.add_argument("--model-uri", required=True, help="models:/name@alias, models:/name/version, runs:/id/path")
    parser.add_argument("--input", required=True, help="CSV/Parquet file, directory or glob")
    parser.add_argument("--output", required=True, help="Parquet directory to write (must not exist)")
    parser.add_argument("--columns", default="", help="comma-separated feature columns (default: all)")
    parser.add_argument("--n-workers", default="2")
    parser.add_argument("--scheduler-address", default="")
    parser.add_argument("--overwrite", default="false")
    args = parser.parse_args()

    from toolkit.cluster import dask_client
    from toolkit.config import ClusterConfig
    from toolkit.console import say
    from toolkit.serving import load_predictor, resolve, score_files
    from toolkit.serving.loader import require_device

    # Resolved (and its files checked) once, before a cluster starts: a bad URI, a tampered
    # file or a GPU model on a machine without a GPU fails here, in one line.
    source = resolve(args.model_uri)
    require_device(source)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] or None
    cfg = ClusterConfig(n_workers=int(args.n_workers or 2), scheduler_address=args.scheduler_address or None)
    with dask_client(cfg, gpu=source.device == "gpu") as client:
        predictor = load_predictor(source, client=client)
        try:
            info = score_files(predictor, args.input, args.output, columns,
                               overwrite=parse_flag(args.overwrite, "overwrite"))
        finally:  # on a shared cluster (--scheduler-address), take the model off its workers
            if hasattr(predictor, "close"):
                predictor.close()
    say(f"scored {info['files']} file(s) in {info['partitions']} partition(s) -> {info['output']}")
    return 0


if __name__ == "__main__":
    run_main(main)
