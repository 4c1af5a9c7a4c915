"""Label-stable models: a retrain keeps the champion's cluster IDs.

k-means numbers its clusters in whatever order its initialisation found them, so every retrain
reshuffles the IDs and breaks every table keyed on "cluster 3".  Before a new model of a name
that has a ``champion`` is logged, its clusters are matched to the champion's (an optimal
assignment on centroid distances, :func:`scipy.optimize.linear_sum_assignment`) and its centres
are reordered in a copy of the model so that matched clusters carry the champion's IDs.  This
happens BEFORE logging: the registered files are written once, already in the stable order,
and never rewritten.

An estimator's labels are the rows of its ``cluster_centers_``, so its IDs are always
``0..k-1``:

* more clusters than the champion: the extra ones get the IDs after the champion's highest
  (``stable.new_ids``);
* fewer: the champion clusters left without a match are recorded as vanished
  (``stable.vanished_ids``); a matched cluster whose champion ID is ``>= k`` cannot keep it and
  takes the lowest free ID (``stable.champion_ids`` then says ``{id: champion's id}`` with the
  two different).

``stable.mapping`` is the renumbering applied: ``{fitted id: registered id}`` (the fit's own
numbering, as its labels came out, to the IDs the registered models predict).  The run that
made the model logs its centroids in the registered numbering too (:mod:`toolkit.train`).

The **churn** is the share of a reference sample whose label changes between the champion and
the (reordered) challenger.  The reference sample is the registration sample, stored with every
model as ``reference/sample.npy`` inside its LoggedModel (so it is covered by the sha256
manifest) and read back with ``allow_pickle=False`` only from a verified copy.

Nothing of cuML is imported here: a cuML model is reordered through scikit-learn and converted
back (:func:`toolkit.convert.to_cuml`), which imports cuML inside the GPU-only branch.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.convert import (
    centers_of,
    check_equivalent,
    split_centered,
    to_numpy,
    without_training_labels,
)
from toolkit.errors import ModelError
from toolkit.registry import flavor, integrity

__all__ = [
    "MAX_REFERENCE_ROWS",
    "REFERENCE_FILE",
    "TAG_PREFIX",
    "Matching",
    "Stabilized",
    "churn",
    "load_with_reference",
    "match_centers",
    "read_reference",
    "reorder",
    "save_reference",
    "stabilize",
]

#: Where the reference sample lives inside a logged model folder (covered by its manifest).
REFERENCE_FILE = "reference/sample.npy"
#: Rows kept as the reference sample: enough for a churn figure to 0.05 %, small beside the model.
MAX_REFERENCE_ROWS = 2_000
TAG_PREFIX = "stable."


@dataclass(frozen=True)
class Matching:
    """How the clusters of a new fit map onto the champion's.

    ``order[new_id]`` is the fit's own index of the cluster that gets ID ``new_id``.
    """

    order: np.ndarray
    mapping: dict[int, int | None]
    distances: dict[int, float]
    new_ids: list[int]
    vanished_ids: list[int]

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.order, np.arange(len(self.order))))

    @property
    def applied(self) -> dict[int, int]:
        """The renumbering: ``{fitted id: registered id}`` (``stable.mapping``)."""
        return dict(sorted((int(raw), new_id) for new_id, raw in enumerate(self.order.tolist())))


def match_centers(new: Any, old: Any) -> Matching:
    """Match the centres ``new`` (k_new x d) to the champion's ``old`` (k_old x d).

    The matching minimises the summed Euclidean distance between matched centres.

    Raises:
        ModelError: the two have a different number of features.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    new = np.asarray(to_numpy(new), dtype=np.float64)
    old = np.asarray(to_numpy(old), dtype=np.float64)
    if new.ndim != 2 or old.ndim != 2 or new.shape[1] != old.shape[1]:
        raise ModelError(f"cannot match clusters of shape {new.shape} to the champion's {old.shape}",
                         "register it under a new name: its features differ from the champion's")
    k_new, k_old = len(new), len(old)
    cost = cdist(new, old)
    rows, cols = linear_sum_assignment(cost)
    matched = {int(i): int(j) for i, j in zip(rows, cols, strict=True)}
    ids: dict[int, int] = {i: j for i, j in matched.items() if j < k_new}
    free = iter(sorted(set(range(k_new)) - set(ids.values())))
    # Matched clusters whose champion ID does not fit in 0..k_new-1 (k shrank), then the clusters
    # the champion never had (k grew: these IDs are k_old, k_old+1, ... -- after the highest).
    for i in sorted(i for i in matched if i not in ids):
        ids[i] = next(free)
    unmatched = [i for i in range(k_new) if i not in matched]
    for i in unmatched:
        ids[i] = next(free)
    order = np.empty(k_new, dtype=np.int64)
    for raw, new_id in ids.items():
        order[new_id] = raw
    mapping = {ids[i]: matched.get(i) for i in range(k_new)}
    distances = {ids[i]: float(cost[i, j]) for i, j in matched.items()}
    return Matching(
        order=order,
        mapping=dict(sorted(mapping.items())),
        distances=dict(sorted(distances.items())),
        new_ids=sorted(ids[i] for i in unmatched),
        vanished_ids=sorted(set(range(k_old)) - set(matched.values())),
    )


def reorder(model: Any, order: np.ndarray) -> Any:
    """A copy of fitted ``model`` whose cluster ``new_id`` is the fit's cluster ``order[new_id]``.

    Works on ``cluster_centers_`` (all that predict needs) for scikit-learn, ``DaskKMeans``
    (its ``_origin`` does not depend on the order) and dask-ml; ``labels_`` is dropped, as the
    registry does anyway.  cuML goes through scikit-learn and back (GPU-only branch).  The
    model passed in is never changed.
    """
    order = np.asarray(order, dtype=np.int64)
    if np.array_equal(order, np.arange(len(order))):
        return model
    inner = split_centered(model)[0]
    if inner is not model:  # centred, or a twin with its cast: its k-means (the last step) is reordered
        out = copy.copy(model)
        out.steps = [*model.steps[:-1], (model.steps[-1][0], reorder(inner, order))]
        return out
    if flavor.model_device(model) == "gpu":  # pragma: no cover - GPU
        from toolkit.convert import to_cuml, to_sklearn

        return to_cuml(reorder(to_sklearn(model), order))
    out = without_training_labels(model)
    if out is model:
        out = copy.copy(model)
    centers = to_numpy(model.cluster_centers_)
    if len(order) != len(centers):
        raise ModelError(f"a reordering of {len(order)} clusters given for a model of {len(centers)}",
                         "report this as a bug")
    out.cluster_centers_ = np.ascontiguousarray(centers[order])
    return out


def churn(champion: Any, challenger: Any, sample: Any) -> float:
    """Share of ``sample`` rows whose label differs between the two models (IDs compared as is)."""
    return 1.0 - check_equivalent(champion, challenger, sample)


# -- the reference sample ---------------------------------------------------------------------
def save_reference(local_dir: str, sample: Any) -> None:
    """Write the reference sample (at most :data:`MAX_REFERENCE_ROWS` rows) into a model folder.

    Called inside the save step, before the manifest is computed, so it is checked like every
    other file of the model.
    """
    arr = np.asarray(to_numpy(sample))
    # float64 rows (raw rows of centred data, see toolkit.data) are kept: float32 would collapse them.
    arr = np.ascontiguousarray(arr[:MAX_REFERENCE_ROWS], dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    path = os.path.join(local_dir, *REFERENCE_FILE.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, arr, allow_pickle=False)


def read_reference(verified: integrity.VerifiedModel) -> np.ndarray | None:
    """The reference sample of a verified model copy, or None when it was logged without one."""
    if REFERENCE_FILE not in verified.manifest:
        return None
    verified.recheck()  # the bytes read are the bytes the store recorded
    arr = np.load(os.path.join(verified.local_path, *REFERENCE_FILE.split("/")), allow_pickle=False)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.dtype.kind != "f":
        raise ModelError(f"{verified.label}: its {REFERENCE_FILE} is not a 2-D float sample ({arr.shape}, "
                         f"{arr.dtype})", "re-register the model")
    return arr


def load_with_reference(uri: str, twin_hint: str | None = None) -> tuple[Any, np.ndarray | None]:
    """(model, reference sample or None) of the model at ``uri``, both from one verified copy."""
    with integrity.fetch_verified(uri) as verified:
        model = flavor.load_verified(verified, twin_hint)
        return model, read_reference(verified)


def _comparable_uri(mv: Any) -> str:
    """The URI to compare a champion version with: its scikit-learn twin when it has one.

    The twin predicts the same labels and loads on any machine (a cuML champion needs a GPU).
    """
    tags = mv.tags or {}
    if tags.get("kind") != "sklearn_twin" and tags.get("twin.name") and tags.get("twin.version"):
        return f"models:/{tags['twin.name']}/{tags['twin.version']}"
    return f"models:/{mv.name}/{mv.version}"


# -- registration -----------------------------------------------------------------------------
@dataclass
class Stabilized:
    """The models to log (reordered when a champion was matched) and the version tags to record."""

    native: Any
    twin: Any
    tags: dict[str, str] = field(default_factory=dict)
    matching: Matching | None = None
    churn: float | None = None


# Model version tag values are limited (5,000 characters in MLflow's stores): a record too long
# for a tag is replaced by a note rather than failing the registration.
_MAX_TAG_CHARS = 4_500


def _tag_json(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= _MAX_TAG_CHARS else f"too long for a tag ({len(text)} characters)"


def _ids_json(ids: list[int]) -> str:
    return _tag_json([int(i) for i in ids])


def stabilize(native: Any, twin: Any, champion: Any | None, sample: np.ndarray,
              feature_names: list[str] | None = None) -> Stabilized:
    """Reorder ``native`` and ``twin`` so their clusters keep the IDs of version ``champion``.

    Args:
        native: the backend's fitted model.
        twin: its scikit-learn twin (or None).
        champion: the ``ModelVersion`` holding the name's ``champion`` alias, or None.
        sample: the registration sample (the reference when the champion kept none).
        feature_names: the columns the new model was trained on, in order (None: not known).
            Centres are matched coordinate by coordinate, so the champion must have been
            trained on the same columns in the same order, where both are known.

    Returns:
        The models to log and the ``stable.*`` version tags.  With no champion the models are
        returned as they are.

    Raises:
        ModelError: the champion's files fail their integrity check, or its features differ
            (in number, or in their names or order).
    """
    if champion is None:
        return Stabilized(native, twin, {f"{TAG_PREFIX}status": "first registration: IDs as fitted"})
    old_model, reference = load_with_reference(_comparable_uri(champion))
    old_names = flavor.trained_columns(old_model)
    if feature_names and old_names is not None and old_names != [str(n) for n in feature_names]:
        raise ModelError(f"the model's columns ({', '.join(map(str, feature_names))}) are not those of champion "
                         f"v{champion.version} ({', '.join(old_names)}), so their clusters cannot be matched",
                         "train on the champion's columns in its order (data.columns), or register under a new name")
    match = match_centers(centers_of(native), centers_of(old_model))
    new_native = reorder(native, match.order)
    new_twin = reorder(twin, match.order) if twin is not None else None
    ref_label = f"champion v{champion.version}"
    if reference is None or reference.shape[1] != np.asarray(sample).shape[1]:
        reference, ref_label = np.asarray(sample)[:MAX_REFERENCE_ROWS], "this registration's sample"
    value = churn(old_model, new_native, reference)
    tags = {
        f"{TAG_PREFIX}status": "matched to champion",
        f"{TAG_PREFIX}champion_version": str(champion.version),
        # The renumbering applied (fitted id -> registered id); and each registered id's champion id.
        f"{TAG_PREFIX}mapping": _tag_json({str(k): v for k, v in match.applied.items()}),
        f"{TAG_PREFIX}champion_ids": _tag_json({str(k): v for k, v in match.mapping.items()}),
        f"{TAG_PREFIX}matched_distance": _tag_json({str(k): round(v, 6) for k, v in match.distances.items()}),
        f"{TAG_PREFIX}new_ids": _ids_json(match.new_ids),
        f"{TAG_PREFIX}vanished_ids": _ids_json(match.vanished_ids),
        f"{TAG_PREFIX}churn": f"{value:.6f}",
        f"{TAG_PREFIX}reference": f"{ref_label} ({len(reference)} rows)",
    }
    return Stabilized(new_native, new_twin, tags, match, value)
