"""Log and register a result twice: the native model and its scikit-learn twin.

The twin is registered only if it predicts exactly the native model's labels on a sample;
the two versions point at each other by tags.  A new version gets the ``challenger`` alias;
the first version of a name also becomes ``champion``.

Each model is logged as an MLflow 3 ``LoggedModel`` of the run (own ``model_id``, own storage,
shown under the run's "Logged models" and the experiment's Models tab), with the sha256 of every
file recorded as its ``integrity.sha256`` tag; versions are registered from ``models:/<model_id>``
(as ``mlflow.register_model`` does) and carry the same integrity tags.  Logging again on the
same run (a resumed search) makes new LoggedModels: no registered version's files ever change.
Models are logged first and registered afterwards, so no version ever exists without its files.

Labels are stable across retrains (:mod:`toolkit.registry.stable`): when the name already has a
``champion``, the new clusters are matched to its clusters and both models are reordered BEFORE
they are logged, so matched clusters keep the champion's IDs and the files are written once.
Each model also carries the registration sample as ``reference/sample.npy`` (in its manifest):
the reference on which later versions' churn is measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit import env
from toolkit.convert import (
    centers_of,
    check_equivalent,
    class_key,
    input_dtype,
    split_centered,
    with_cast,
    with_feature_names,
    without_training_labels,
)
from toolkit.errors import ModelError
from toolkit.registry import flavor, integrity, stable
from toolkit.registry.integrity import MODEL_ID_TAG, LoggedRef
from toolkit.registry.promote import CHALLENGER, CHAMPION, champion_of
from toolkit.stats.profile import TrainingProfile, build_profile, save_profile
from toolkit.tracking import log_metrics, log_tags
from toolkit.tracking.runs import client, tracking_uri

__all__ = ["CHALLENGER", "CHAMPION", "Registered", "Registration", "log_and_register", "sklearn_requirements"]

SKLEARN_PATH = "sklearn_model"
NATIVE_PATH = "native_model"


@dataclass
class Registered:
    """What :func:`log_and_register` logged and registered (URIs are ``models:/<model_id>``)."""

    native_name: str
    native_version: str
    sklearn_name: str | None
    sklearn_version: str | None
    agreement: float
    native_uri: str
    sklearn_uri: str | None
    native_model_id: str | None = None
    sklearn_model_id: str | None = None
    #: The renumbering applied to match the champion's IDs: ``order[registered id]`` is the fit's
    #: own id of that cluster; None when the models keep the fitted numbering.
    order: list[int] | None = None

    def relabel(self, fitted: Any) -> Any:
        """``fitted`` per-cluster rows (centres, ...) or labels in the registered numbering."""
        if self.order is None:
            return fitted
        return np.asarray(fitted)[self.order] if np.ndim(fitted) == 2 else _inverse(self.order)[np.asarray(fitted)]


def _inverse(order: list[int]) -> np.ndarray:
    """``inverse[fitted id] = registered id`` of a renumbering ``order``."""
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return inverse


@dataclass(frozen=True)
class Registration:
    """What a registration needs besides the models and their sample: where, under which names, how.

    Attributes:
        run_id: the run both models are linked to (``source_run_id``).
        backend: the backend's name (tags).
        native_name: registered model name of the native model.
        sklearn_name: registered model name of the twin.
        feature_names: column names for the signature and input example (``x0..x{d-1}`` when
            empty or not as wide as the sample).
        search_parent_run_id: tagged on the versions when a search registered them.
        register: False logs the models without registering them.
        metrics: the fit's metrics, attached to both LoggedModels (with ``twin_agreement``).
        native_serialization: ``"kmeans-npy"`` (default, no executable content) or
            ``"pickle"`` (opt-in) for the native model.
        stable_labels: when ``native_name`` has a champion, match the clusters to its and
            reorder both models first so matched clusters keep its IDs (``stable.*`` tags).
    """

    run_id: str
    backend: str
    native_name: str
    sklearn_name: str
    feature_names: Sequence[str] = ()
    search_parent_run_id: str | None = None
    register: bool = True
    metrics: Mapping[str, float] | None = None
    native_serialization: str = flavor.KMEANS_NPY
    stable_labels: bool = True


@dataclass(frozen=True)
class _Payload:
    """What both LoggedModels of one registration carry besides the model itself."""

    run_id: str
    sample: np.ndarray
    names: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]
    profile: TrainingProfile


@dataclass
class _Stable:
    """The models in the registered numbering (:func:`_stabilize`), and what says so."""

    native: Any
    twin: Any
    profile: TrainingProfile | None
    tags: dict[str, str]
    order: list[int] | None = None
    #: The version of the champion's twin (the champion of the twin's own name), or "".
    champion_twin: str = ""


def sklearn_requirements() -> list[str]:
    """Pinned requirements of the twin (given explicitly: MLflow's inference costs ~6 s)."""
    return env.pinned_requirements(("scikit-learn", "skops", "numpy", "scipy", "pandas"))


def _signature(sample: np.ndarray, feature_names: list[str], dtype: Any = np.float32) -> tuple[Any, Any]:
    """(signature, input example): int32 labels out; the example frame names the columns.

    No MLflow input schema: MLflow would drop unknown columns before the model's pyfunc face
    could refuse them (see :func:`toolkit.registry.flavor.output_signature`).
    """
    import pandas as pd

    frame = pd.DataFrame(sample[:5].astype(dtype), columns=feature_names)
    return flavor.output_signature(), frame


def warm_up() -> None:
    """Import and index now what logging the scikit-learn twin needs (a search calls it while it
    waits for its baseline, before registering).

    Saving the twin imports skops (about a second) and MLflow's requirement check maps every
    installed distribution's modules once per process (most of another); both are one-time
    costs that otherwise fall between the search's last trial and its registered model.
    """
    import skops.io  # noqa: F401

    from toolkit._compat import mlflow_index_installed_packages

    mlflow_index_installed_packages()  # private to MLflow: a renamed helper only means no warm-up


def _log_sklearn(twin: Any, payload: _Payload) -> LoggedRef:
    """Log the twin (skops) with the reference sample and the training profile, as a
    LoggedModel of ``payload.run_id``."""
    import mlflow.sklearn

    # In the dtype of the twin's centers: `mlflow models serve` casts requests to the
    # signature's types, and scikit-learn predicts only rows of the centers' float width.
    sample = payload.sample
    signature, example = _signature(sample, payload.names, input_dtype(twin))
    centers = np.asarray(centers_of(twin))
    # The training columns' names ride with the twin: it predicts DataFrames without warning
    # and refuses other columns, like a model fitted on a frame (a copy: the caller's model,
    # perhaps the native one itself, keeps predicting unnamed arrays).
    twin = with_feature_names(without_training_labels(twin), payload.names)
    # A cast step in front: stock mlflow.sklearn predicts float32 and float64 rows alike.
    twin = with_cast(twin)

    def save(local: str, mlmodel: Any) -> dict[str, str]:
        mlflow.sklearn.save_model(
            twin,
            local,
            mlflow_model=mlmodel,
            serialization_format="skops",
            signature=signature,
            input_example=example,
            pip_requirements=sklearn_requirements(),
        )
        flavor.serve_with_toolkit(mlmodel, local)  # pyfunc/serve through the checked loader
        stable.save_reference(local, sample)  # before the manifest is taken: it covers the file
        save_profile(local, payload.profile)
        return {integrity.FORMAT_TAG: flavor.SKOPS, integrity.CLASS_TAG: class_key(split_centered(twin)[0]),
                integrity.SHAPE_TAG: f"{centers.shape[0]}x{centers.shape[1]}"}

    kmeans = split_centered(twin)[0]  # the k-means' hyperparameters, not its Pipeline's
    params = {k: v for k, v in kmeans.get_params(deep=False).items() if isinstance(v, (str, int, float, bool))}
    return integrity.log_model_dir(payload.run_id, SKLEARN_PATH, save, model_type="sklearn_twin", params=params,
                                   tags={"kind": "sklearn_twin", **payload.tags}, metrics=payload.metrics)


def _names_for(feature_names: list[str], n_features: int) -> list[str]:
    """The models' column names: the dataset's (``x0..x{d-1}`` for blobs, the files' columns,
    a bundled dataset's own names), else ``x0..x{d-1}`` -- scikit-learn's own default names
    (``get_feature_names_out``) -- when none are known or they do not match the width."""
    if feature_names and len(feature_names) == n_features:
        return [str(n) for n in feature_names]
    return [f"x{i}" for i in range(n_features)]


def _set_aliases(name: str, ver: str) -> None:
    c = client()
    c.set_registered_model_alias(name, CHALLENGER, ver)
    if champion_of(name) is None:  # no champion yet: the first registration takes the title
        c.set_registered_model_alias(name, CHAMPION, ver)
        c.set_model_version_tag(name, ver, "promotion.reason", "first registration: no champion existed")


def _register(ref: LoggedRef, name: str, run_id: str, tags: dict[str, str]) -> str:
    from toolkit._compat import mlflow_process_tracking_uri

    c = client()
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="k-means models registered by kmeans-lifecycle")
    # The registry keeps its own copy of the checksums: loads compare both records.  A local
    # (sqlite) registry resolves the "models:/<id>" source through MLflow's process-wide
    # tracking URI, not this client's: point it at this store for the call (MLflow has no
    # public way that leaves os.environ alone: toolkit._compat.mlflow_process_tracking_uri).
    with mlflow_process_tracking_uri(tracking_uri()):
        mv = c.create_model_version(name, source=ref.uri, run_id=run_id, model_id=ref.model_id,
                                    tags={**tags, **ref.tags, MODEL_ID_TAG: ref.model_id})
    return str(mv.version)


def log_and_register(native_model: Any, twin: Any, sample: np.ndarray, registration: Registration,
                     profile: TrainingProfile | None = None) -> Registered:
    """Log both models on ``registration.run_id`` as LoggedModels and register them, linked, with aliases.

    Args:
        native_model: the backend's fitted model.
        twin: its scikit-learn ``KMeans`` twin.
        sample: rows on which the twin (and the native model rebuilt from its files) must
            predict exactly the native model's labels.  The first ``stable.MAX_REFERENCE_ROWS``
            rows are stored with each model as its reference sample.
        registration: the run, names and options (:class:`Registration`).
        profile: the fit's training profile (cluster shares and distance histogram,
            :mod:`toolkit.stats.profile`) in the fit's own cluster order; reordered with the
            clusters and stored with both models as ``monitoring/profile.json``.  None: computed
            from ``sample``.

    Raises:
        ModelError: the twin disagrees with the native model (nothing of the twin is
            registered; the native model is still logged and registered, tagged as such).
    """
    reg = registration
    # float64 rows stay float64: a model of centred data predicts raw rows far from 0 (see
    # toolkit.data), which float32 would collapse.  Other rows are float32, as always.
    sample = np.asarray(sample)
    sample = sample if sample.dtype == np.float64 else sample.astype(np.float32)
    champion = champion_of(reg.native_name) if reg.register else None
    st = _stabilize(native_model, twin, champion, sample, reg, profile)
    agreement = float(check_equivalent(st.native, st.twin, sample))
    log_metrics(reg.run_id, {"twin_agreement": agreement})
    if st.profile is None:
        st.profile = build_profile(sample, None, centers_of(st.native),
                                   source=f"registration sample ({len(sample)} rows)")
    payload = _Payload(reg.run_id, sample, _names_for(list(reg.feature_names), sample.shape[1]),
                       {**{k: float(v) for k, v in (reg.metrics or {}).items()}, "twin_agreement": agreement},
                       {"backend": reg.backend}, st.profile)
    native, sk = _log_pair(st, payload, reg, twin_ok=agreement == 1.0)
    sk_uri, sk_id = (sk.uri, sk.model_id) if sk is not None else (None, None)
    if not reg.register:
        return Registered(reg.native_name, "", None, None, agreement, native.uri, sk_uri, native.model_id, sk_id)
    common = {
        "source_run_id": reg.run_id,
        "backend": reg.backend,
        "equivalence.agreement": f"{agreement:.6f}",
        "equivalence.sample_rows": str(len(sample)),
        **({"search_parent_run_id": reg.search_parent_run_id} if reg.search_parent_run_id else {}),
    }
    native_ver, sk_ver = _register_pair(native, sk, st, reg, common)
    _set_aliases(reg.native_name, native_ver)
    log_tags(reg.run_id, {"registry.native": f"{reg.native_name}/{native_ver}",
                          "registry.sklearn": f"{reg.sklearn_name}/{sk_ver}" if sk_ver else "not registered"})
    if sk is None:
        raise _twin_rejected(reg.native_name, native_ver, agreement, len(sample))
    return Registered(reg.native_name, native_ver, reg.sklearn_name, sk_ver, agreement, native.uri, sk_uri,
                      native.model_id, sk_id, st.order)


def _twin_rejected(native_name: str, native_ver: str, agreement: float, rows: int) -> ModelError:
    """Tag version ``native_ver`` as registered without its twin, and the error that says so."""
    c = client()
    c.set_model_version_tag(native_name, native_ver, "twin.name", "")
    c.set_model_version_tag(native_name, native_ver, "twin.rejected",
                            f"scikit-learn twin agreed on {agreement:.4%} of {rows} rows; not registered")
    return ModelError(
        f"the scikit-learn twin agrees with the native model on only {agreement:.4%} of the sample; "
        f"{native_name} v{native_ver} registered without a twin",
        "check the conversion for this backend (toolkit/convert.py)",
    )


def _stabilize(native: Any, twin: Any, champion: Any, sample: np.ndarray, reg: Registration,
               profile: TrainingProfile | None) -> _Stable:
    """Both models (and the profile) renumbered to match ``champion``'s cluster IDs, as copies
    made before anything is logged: the registered files are never rewritten."""
    if not reg.register:
        return _Stable(native, twin, profile, {})
    if not reg.stable_labels:
        return _Stable(native, twin, profile, {f"{stable.TAG_PREFIX}status": "off: IDs as fitted"})
    champion_twin = str((champion.tags or {}).get("twin.version") or "") if champion is not None else ""
    try:
        st = stable.stabilize(native, twin, champion, sample, list(reg.feature_names) or None)
    except ModelError as exc:
        # A champion that cannot be read (registered by an older kmeans-lifecycle, or failing
        # its integrity check) must not block the registration that replaces it: the IDs stay
        # as fitted and the version says why.  Promotion checks the champion again anyway.
        return _Stable(native, twin, profile, {f"{stable.TAG_PREFIX}status": f"not matched: {exc.problem}"[:4_500]},
                       champion_twin=champion_twin)
    order = None
    if st.matching is not None and not st.matching.is_identity:
        order = [int(i) for i in st.matching.order]
    if profile is not None and st.matching is not None:  # the profile follows the IDs
        profile = profile.reorder(st.matching.order)
    return _Stable(st.native, st.twin, profile, dict(st.tags), order, champion_twin)


def _log_pair(st: _Stable, payload: _Payload, reg: Registration, twin_ok: bool) -> tuple[LoggedRef, LoggedRef | None]:
    """Log the native model, and the twin when it agrees, as LoggedModels naming each other."""
    signature, example = _signature(payload.sample, payload.names, payload.sample.dtype)

    def extras(local: str) -> None:
        # The reference sample and the training profile go in with the files, before the
        # checksums: never added later.
        stable.save_reference(local, payload.sample)
        save_profile(local, payload.profile)

    native = flavor.log_model(st.native, payload.run_id, NATIVE_PATH, metrics=payload.metrics, tags=payload.tags,
                              check_sample=payload.sample, extra_files=extras,
                              backend=reg.backend, signature=signature, input_example=example,
                              serialization=reg.native_serialization, feature_names=payload.names)
    sk = _log_sklearn(st.twin, payload) if twin_ok else None
    log_tags(payload.run_id, {"twin.equivalent": str(twin_ok),
                              "twin.agreement": f"{payload.metrics['twin_agreement']:.6f}"})
    if sk is not None:  # each LoggedModel names the other, as the versions do
        c = client()
        c.set_logged_model_tags(native.model_id, {"twin.model_id": sk.model_id})
        c.set_logged_model_tags(sk.model_id, {"twin.model_id": native.model_id})
    return native, sk


def _register_pair(native: LoggedRef, sk: LoggedRef | None, st: _Stable, reg: Registration,
                   common: dict[str, str]) -> tuple[str, str | None]:
    """Register the native model and (when logged) the twin, linked by tags; the twin gets its aliases.

    ``common``: the tags of both versions.
    """
    native_ver = _register(native, reg.native_name, reg.run_id, {**common, **st.tags, "kind": "native",
                                                                 "device": flavor.model_device(st.native)})
    if sk is None:
        return native_ver, None
    twin_stable = dict(st.tags)
    key = f"{stable.TAG_PREFIX}champion_version"
    if key in twin_stable and st.champion_twin:
        twin_stable[key] = st.champion_twin  # the champion of the twin's own name
    sk_ver = _register(sk, reg.sklearn_name, reg.run_id, {**common, **twin_stable, "kind": "sklearn_twin",
                                                          "twin.name": reg.native_name, "twin.version": native_ver})
    c = client()
    c.set_model_version_tag(reg.native_name, native_ver, "twin.name", reg.sklearn_name)
    c.set_model_version_tag(reg.native_name, native_ver, "twin.version", sk_ver)
    _set_aliases(reg.sklearn_name, sk_ver)
    return native_ver, sk_ver


def model_experiment(name: str | None, version: str | None, model_id: str | None = None) -> str | None:
    """The experiment id of a model version's source run (or of its logged model), if known:
    where the runs that act on a model (promote, predict, a drift report) are recorded."""
    from toolkit.tracking.runs import client

    c = client()
    with contextlib.suppress(Exception):
        if name and version:
            run_id = c.get_model_version(name, version).run_id
            if run_id:
                return str(c.get_run(run_id).info.experiment_id)
    with contextlib.suppress(Exception):
        if model_id:
            return str(c.get_logged_model(model_id).experiment_id)
    return None
