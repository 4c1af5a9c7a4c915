"""Entry point ``predict``: score CSV/Parquet files in parallel with a registered model.

    mlflow run . -e predict -P model_uri=models:/blobs-kmeans-sklearn@champion \
        -P input="data/*.parquet" -P output=predictions.parquet --env-manager local

The job is recorded in a run named ``predict <model>`` (e.g. ``predict blobs-kmeans@champion``)
in the experiment of the model's training run (see :func:`mlproject._cli.record_run`): model
URI and version, input, output, rows and partitions.
"""

from __future__ import annotations

import argparse
from typing import Any

from mlproject._cli import add_flag, entry_parser, run_main
from toolkit.config import parse_flag

#: ``columns``' default: the model's own columns, found by name (every column of the input for a
#: model that did not record them).
ALL_COLUMNS = "all"
#: ``scheduler_address``' default: ``DASK_SCHEDULER_ADDRESS`` if set, else a local cluster.
AUTO_SCHEDULER = "auto"


def build_parser() -> argparse.ArgumentParser:
    """The ``predict`` options (``MLproject``'s ``predict`` parameters, one for one)."""
    parser = entry_parser("predict", "mlproject.predict", "score files with a registered k-means model")
    parser.add_argument("--model-uri", required=True,
                        help="models:/name@alias, models:/name/version, models:/<model_id> or runs:/<id>/<path>")
    parser.add_argument("--input", required=True, help="CSV/Parquet file, directory or glob")
    parser.add_argument("--output", required=True, help="Parquet directory to write (must not exist, see --overwrite)")
    parser.add_argument("--columns", default=ALL_COLUMNS,
                        help="comma-separated feature columns, in the model's order (default: "
                             f"{ALL_COLUMNS}: the model's own columns, found by name; every column for a model "
                             "that did not record them)")
    parser.add_argument("--n-workers", default="2", help="workers of the local Dask cluster (default: 2)")
    parser.add_argument("--scheduler-address", default=AUTO_SCHEDULER,
                        help="tcp://host:8786 of a running Dask scheduler "
                             f"(default: {AUTO_SCHEDULER}: DASK_SCHEDULER_ADDRESS if set, else a local cluster)")
    add_flag(parser, "overwrite", "replace an existing output")
    parser.add_argument("--label-column", default="label",
                        help="the output column that holds the labels; an input that already has a column of "
                             "that name is refused, since it would be overwritten (default: label)")
    parser.add_argument("--on-nan", default="error",
                        help="rows with a missing feature value: error (refuse the input, naming the rows) or drop "
                             "(score the others; the output leaves them out) (default: error)")
    return parser


def _columns(value: str) -> list[str] | None:
    names = [c.strip() for c in value.split(",") if c.strip()]
    return None if names in ([], [ALL_COLUMNS]) else names


def _n_workers(value: str) -> int:
    from toolkit.errors import ConfigError, option_hint

    try:
        n = int(value or 2)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"n_workers={value!r} is not a positive whole number",
                          f"pass e.g. {option_hint('n_workers', 2)}")
    return n


def _rows_written(output: str) -> int:
    """Rows in the Parquet directory ``output``, from its footers (no data is read again)."""
    import fsspec
    import pyarrow.parquet as pq

    # fsspec: a local folder or an object-store URL alike (only the footers are fetched).
    fs, path = fsspec.core.url_to_fs(output)
    total = 0
    for f in fs.glob(f"{path.rstrip('/')}/*.parquet"):
        with fs.open(f, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def _record_params(source: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What the run records before scoring (``predict.*``: ``mlflow run`` has logged the -P
    values under the plain names, shell-quoted, and MLflow refuses to change a param)."""
    return {"predict.model_uri": args.model_uri, "predict.model_name": source.name or "",
            "predict.model_version": source.version or "", "predict.model_id": source.model_id or "",
            "predict.input": args.input, "predict.output": args.output,
            "predict.columns": args.columns or ALL_COLUMNS, "predict.on_nan": args.on_nan,
            "predict.label_column": args.label_column}


def _log_drift(source: Any, info: dict[str, Any], run_id: str) -> str:
    """Compare the statistics scoring gathered with the model's training profile and log the
    figures, plot and ``drift`` tag into ``run_id``; the tag's text ("" when none were gathered)."""
    if info.get("drift_stats") is None:
        return ""
    from toolkit.monitoring import drift_report, log_drift_report

    report = drift_report(source, info["drift_stats"], profile=info.get("profile"))
    log_drift_report(report, source, run_id=run_id)
    return report.tag


def main() -> int:
    args = build_parser().parse_args()
    overwrite = parse_flag(args.overwrite, "overwrite")
    columns = _columns(args.columns)
    n_workers = _n_workers(args.n_workers)
    address = None if args.scheduler_address.strip() in ("", AUTO_SCHEDULER) else args.scheduler_address

    from mlproject._cli import describe_record, record_run, say_made
    from toolkit.cluster import dask_client
    from toolkit.config import ClusterConfig
    from toolkit.console import say
    from toolkit.registry import model_experiment
    from toolkit.serving import load_predictor, resolve, score_files
    from toolkit.serving.loader import require_device
    from toolkit.tracking import log_params

    # Resolved (and its files checked) once, before a cluster starts: a bad URI, a tampered
    # file or a GPU model on a machine without a GPU fails here, in one line.
    source = resolve(args.model_uri)
    require_device(source)
    cfg = ClusterConfig(n_workers=n_workers, scheduler_address=address)
    # The one run of a predict: everything it records goes through run_id (drift figures too).
    home = model_experiment(source.name, source.version, source.model_id)
    run_name = f"predict {args.model_uri.removeprefix('models:/')}"
    with record_run(home, run_name, {"entry_point": "predict"}) as run_id:
        log_params(run_id, _record_params(source, args))
        with dask_client(cfg, gpu=source.device == "gpu") as client:
            predictor = load_predictor(source, client=client)
            try:
                info = score_files(predictor, args.input, args.output, columns, overwrite=overwrite,
                                   on_nan=args.on_nan.strip().lower(), label=args.label_column)
            finally:  # on a shared cluster (--scheduler-address), take the model off its workers
                if hasattr(predictor, "close"):
                    predictor.close()
        rows = _rows_written(info["output"])
        log_params(run_id, {"predict.files": info["files"], "predict.partitions": info["partitions"],
                            "predict.rows": rows, "predict.rows_dropped": info["rows_dropped"]})
        drift = _log_drift(source, info, run_id)
    say(f"scored {info['files']} file(s) in {info['partitions']} partition(s) -> {info['output']}")
    if info["rows_dropped"]:
        say(f"left out {info['rows_dropped']:,} row(s) with a missing value (NaN), as asked (on_nan=drop)")
    made = [*describe_record(run_id),
            f"output {info['output']}: {rows} row(s) in Parquet, the input's columns and a "
            f"{args.label_column!r} column"]
    if drift:
        made.append(f"drift report (drift/drift.png, drift.* metrics): {drift}")
    say_made(made, run_id)
    return 0


if __name__ == "__main__":
    run_main(main)
