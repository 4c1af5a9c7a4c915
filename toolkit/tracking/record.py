"""What a fit leaves in MLflow: params, metrics, tags, centroids, a plot and the dataset."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from toolkit.redact import redact
from toolkit.tracking.runs import client

__all__ = [
    "log_artifacts_dir",
    "log_centroids",
    "log_dataset",
    "log_metrics",
    "log_params",
    "log_tags",
    "tags_for",
]

_MAX_PARAM = 6000


def _str(value: Any) -> str:
    # Masked on the way out: a URL given with a password is recorded as u:***@host.
    s = "None" if value is None else redact(str(value))
    return s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100 (MLflow's per-call limit)."""
    from mlflow.entities import Param

    items = [Param(str(k), _str(v)) for k, v in params.items()]
    c = client()
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite metrics in one batch (NaN metrics, e.g. silhouette of one cluster, are skipped)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(str(k), float(v), now, step)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    if items:
        client().log_batch(run_id, metrics=items)


def log_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(str(k), _str(v)) for k, v in tags.items()]
    if items:
        client().log_batch(run_id, tags=items)


def tags_for(backend: Any, cluster: Mapping[str, str] | None = None) -> dict[str, str]:
    """Backend, device, library versions and cluster tags for a run."""
    tags = {
        "backend": backend.name,
        "device": backend.device,
        "parallelism": backend.parallelism,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    for pkg, ver in backend.library_versions().items():
        tags[f"version.{pkg}"] = ver
    tags.update(cluster or {})
    return tags


def log_artifacts_dir(run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, local_dir, artifact_path)


def log_centroids(
    run_id: str,
    centers: np.ndarray,
    feature_names: list[str] | None = None,
    plot_data: tuple[np.ndarray, np.ndarray] | None = None,
    artifact_path: str = "centroids",
    title: str = "",
    artifact_uri: str | None = None,
) -> None:
    """Write centroids as CSV and ``.npy`` (and the plot PNG when ``plot_data`` is given).

    ``artifact_uri`` (the run's, when the caller has it) skips a tracking-store round trip.
    """
    centers = np.asarray(centers)
    names = feature_names if feature_names and len(feature_names) == centers.shape[1] else [
        f"x{i}" for i in range(centers.shape[1])
    ]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "centroids.csv"), "w", newline="") as fh:
            fh.write(_centroids_csv(centers, names))
        np.save(os.path.join(tmp, "centroids.npy"), centers)
        if plot_data is not None:
            from toolkit.tracking.plots import centroid_plot

            fig = centroid_plot(plot_data[0], plot_data[1], centers, title=title)
            fig.savefig(os.path.join(tmp, "centroids.png"), dpi=90)
            import matplotlib.pyplot as plt

            plt.close(fig)
        if artifact_uri:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            from toolkit.tracking.retry import call
            from toolkit.tracking.runs import registry_uri, tracking_uri

            # The store's URIs passed on: an mlflow-artifacts:/ URI is resolved against them.
            repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri(), registry_uri=registry_uri())
            call(repo.log_artifacts, tmp, artifact_path, uri=tracking_uri(), what="log_artifacts")
        else:
            log_artifacts_dir(run_id, tmp, artifact_path)


def _centroids_csv(centers: np.ndarray, names: list[str]) -> str:
    """The table ``DataFrame(centers, columns=names).to_csv()`` writes (index ``cluster``), in
    a quarter of the time: every child run of a search writes one."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["cluster", *names])
    # Shortest round-trip text per value: float32's own (as pandas writes it), else Python's repr.
    text = centers.astype(str) if centers.dtype == np.float32 else [[repr(v) for v in row] for row in centers.tolist()]
    nan = np.isnan(centers) if centers.dtype.kind == "f" else np.zeros(centers.shape, bool)
    for i, row in enumerate(text):
        out.writerow([i, *("" if nan[i, j] else v for j, v in enumerate(row))])
    return buf.getvalue()


def log_dataset(run_id: str, dataset: Any, context: str = "training") -> None:
    """Record the dataset as a run input (metadata only: source, digest, schema)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema

    if dataset.files:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        first = dataset.files[0]  # a URL (s3://...) as it is; a local path made absolute
        source = resolve_dataset_source(first if "://" in first else os.path.abspath(first),
                                         candidate_sources=_distinct_sources())
    else:
        source = CodeDatasetSource(tags={"generator": dataset.source})
    schema = Schema([ColSpec(DataType.float, str(n)) for n in dataset.feature_names])
    meta = MetaDataset(source=source, name=dataset.name, digest=dataset.digest(), schema=schema).to_dict()
    entity = DatasetInput(
        # The public entity, from the public dict (Dataset.to_dict), as MLflow builds it itself.
        dataset=DatasetEntity(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"],
                              source=meta["source"], schema=meta.get("schema"), profile=meta.get("profile")),
        tags=[InputTag(key="mlflow.data.context", value=context)],
    )
    _log_inputs_tolerating_a_race(run_id, entity)


def _distinct_sources() -> list[Any]:
    """MLflow's registered dataset sources, the last of each class name only.

    MLflow registers its local artifact source once per scheme of the local artifact repository
    ('' and 'file'): two classes of one name, ``LocalArtifactDatasetSource``, both matching any
    local path, so resolving one warns on the console that it "can be interpreted in multiple
    ways" and takes the last.  Offering only the last of each name resolves to that same class,
    without the warning, and leaves every other source as it was.
    """
    from mlflow.data.dataset_source_registry import get_registered_sources

    return list({cls.__name__: cls for cls in get_registered_sources()}.values())


#: How a store reports that another writer inserted the same dataset row first (PostgreSQL through
#: the server, MySQL, sqlite): MLflow's ``log_inputs`` looks the dataset up, then inserts it.
_DATASET_RACE = ("dataset_pk", "duplicate key", "unique constraint failed: datasets", "duplicate entry")


def _log_inputs_tolerating_a_race(run_id: str, entity: Any, attempts: int = 3) -> None:
    """``log_inputs``, again when a concurrent search logged the same dataset to the experiment
    between MLflow's look-up and its insert: the retry finds that row and links it (eight
    searches on one server lost a driver to this)."""
    for attempt in range(attempts):
        try:
            client().log_inputs(run_id, datasets=[entity])
            return
        except Exception as exc:
            if attempt == attempts - 1 or not any(m in str(exc).lower() for m in _DATASET_RACE):
                raise
            time.sleep(0.05 * (attempt + 1))
