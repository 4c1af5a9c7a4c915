"""Log and register a result twice: the native model and its scikit-learn twin.

The twin is registered only if it predicts exactly the native model's labels on a sample;
the two versions point at each other by tags.  A new version gets the ``challenger`` alias;
the first version of a name also becomes ``champion``.  Models are logged as run artifacts
first and registered afterwards, so no version ever exists without its files.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from toolkit.convert import check_equivalent, input_dtype
from toolkit.errors import ModelError
from toolkit.registry import flavor
from toolkit.registry.promote import CHALLENGER, CHAMPION
from toolkit.tracking import log_metrics, log_tags
from toolkit.tracking.runs import client

__all__ = ["CHALLENGER", "CHAMPION", "Registered", "log_and_register", "sklearn_requirements"]

SKLEARN_PATH = "sklearn_model"
NATIVE_PATH = "native_model"


@dataclass
class Registered:
    native_name: str
    native_version: str
    sklearn_name: str | None
    sklearn_version: str | None
    agreement: float
    native_uri: str
    sklearn_uri: str | None


def sklearn_requirements() -> list[str]:
    """Pinned requirements of the twin (given explicitly: MLflow's inference costs ~6 s)."""
    reqs = []
    for lib in ("scikit-learn", "skops", "numpy", "scipy", "pandas"):
        try:
            reqs.append(f"{lib}=={version(lib)}")
        except PackageNotFoundError:
            continue
    return reqs


def _signature(sample: np.ndarray, feature_names: list[str], dtype: Any = np.float32) -> tuple[Any, Any]:
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame(sample[:5].astype(dtype), columns=feature_names)
    labels = np.zeros(len(frame), dtype=np.int32)
    return infer_signature(frame, labels), frame


def _log_sklearn(twin: Any, run_id: str, sample: np.ndarray, feature_names: list[str]) -> str:
    import mlflow.sklearn

    # In the dtype of the twin's centers: `mlflow models serve` casts requests to the
    # signature's types, and scikit-learn predicts only rows of the centers' float width.
    signature, example = _signature(sample, feature_names, input_dtype(twin))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model")
        mlflow.sklearn.save_model(
            twin,
            local,
            serialization_format="skops",
            signature=signature,
            input_example=example,
            pip_requirements=sklearn_requirements(),
        )
        client().log_artifacts(run_id, local, SKLEARN_PATH)
    return f"runs:/{run_id}/{SKLEARN_PATH}"


def _names_for(feature_names: list[str], n_features: int) -> list[str]:
    if feature_names and len(feature_names) == n_features:
        return [str(n) for n in feature_names]
    return [f"x{i}" for i in range(n_features)]


def _set_aliases(name: str, ver: str) -> None:
    c = client()
    c.set_registered_model_alias(name, CHALLENGER, ver)
    try:
        c.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet: the first registration takes the title
        c.set_registered_model_alias(name, CHAMPION, ver)
        c.set_model_version_tag(name, ver, "promotion.reason", "first registration: no champion existed")


def _register(uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
    c = client()
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="k-means models registered by kmeans-lifecycle")
    mv = c.create_model_version(name, source=_artifact_source(uri), run_id=run_id, tags=tags)
    return str(mv.version)


def _artifact_source(uri: str) -> str:
    """The storage location behind a ``runs:/`` URI (what the registry copies)."""
    run_id, _, path = uri[len("runs:/"):].partition("/")
    root = client().get_run(run_id).info.artifact_uri
    return f"{root.rstrip('/')}/{path}"


def log_and_register(
    native_model: Any,
    twin: Any,
    *,
    run_id: str,
    backend: str,
    native_name: str,
    sklearn_name: str,
    sample: np.ndarray,
    feature_names: list[str],
    search_parent_run_id: str | None = None,
    register: bool = True,
) -> Registered:
    """Log both models on ``run_id`` and register them, linked, with aliases.

    Raises:
        ModelError: the twin disagrees with the native model (nothing of the twin is
            registered; the native model is still logged and registered, tagged as such).
    """

    sample = np.asarray(sample, dtype=np.float32)
    names = _names_for(feature_names, sample.shape[1])
    agreement = float(check_equivalent(native_model, twin, sample))
    log_metrics(run_id, {"twin_agreement": agreement})
    signature, example = _signature(sample, names)
    native_uri = flavor.log_model(
        native_model, run_id, NATIVE_PATH, backend=backend, signature=signature, input_example=example
    )
    twin_ok = agreement == 1.0
    sklearn_uri = _log_sklearn(twin, run_id, sample, names) if twin_ok else None
    log_tags(run_id, {"twin.equivalent": str(twin_ok), "twin.agreement": f"{agreement:.6f}"})
    if not register:
        return Registered(native_name, "", None, None, agreement, native_uri, sklearn_uri)
    common = {
        "source_run_id": run_id,
        "backend": backend,
        "equivalence.agreement": f"{agreement:.6f}",
        "equivalence.sample_rows": str(len(sample)),
    }
    if search_parent_run_id:
        common["search_parent_run_id"] = search_parent_run_id
    native_ver = _register(native_uri, native_name, run_id, {**common, "kind": "native",
                                                              "device": flavor.model_device(native_model)})
    sk_ver = None
    c = client()
    if twin_ok:
        sk_ver = _register(sklearn_uri, sklearn_name, run_id, {**common, "kind": "sklearn_twin",
                                                                "twin.name": native_name,
                                                                "twin.version": native_ver})
        c.set_model_version_tag(native_name, native_ver, "twin.name", sklearn_name)
        c.set_model_version_tag(native_name, native_ver, "twin.version", sk_ver)
        _set_aliases(sklearn_name, sk_ver)
    else:
        c.set_model_version_tag(native_name, native_ver, "twin.name", "")
        c.set_model_version_tag(
            native_name, native_ver, "twin.rejected",
            f"scikit-learn twin agreed on {agreement:.4%} of {len(sample)} rows; not registered",
        )
    _set_aliases(native_name, native_ver)
    log_tags(run_id, {"registry.native": f"{native_name}/{native_ver}",
                      "registry.sklearn": f"{sklearn_name}/{sk_ver}" if sk_ver else "not registered"})
    if not twin_ok:
        raise ModelError(
            f"the scikit-learn twin agrees with the native model on only {agreement:.4%} of the sample; "
            f"{native_name} v{native_ver} registered without a twin",
            "check the conversion for this backend (toolkit/convert.py)",
        )
    return Registered(native_name, native_ver, sklearn_name, sk_ver, agreement, native_uri, sklearn_uri)
