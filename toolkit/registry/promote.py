"""Promotion by alias: the ``challenger`` replaces the ``champion`` only when it scores better.

Both versions are scored on the same evaluation data with the same metric (through their
scikit-learn twins, so promotion runs on any machine).  The decision, the scores and who was
replaced are written as version tags; the twin's registered model gets the same aliases so the
two names never disagree about who is champion.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import ModelError
from toolkit.metrics import METRIC_DIRECTIONS, cluster_metrics
from toolkit.registry.integrity import get_version  # re-exported: part of this module's API
from toolkit.tracking.runs import client

__all__ = ["PromotionResult", "evaluate_version", "get_version", "promote"]

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class PromotionResult:
    name: str
    metric: str
    challenger_version: str
    champion_version: str | None
    challenger_score: float
    champion_score: float | None
    promoted: bool
    reason: str


def _scoring_model(mv: Any) -> Any:
    """The scikit-learn model to score a version with (itself, or its registered twin).

    Every model is loaded through :func:`toolkit.registry.flavor.load_model`, which checks its
    files against the registry's checksums first.  The counterpart that is not scored (a native
    model scored through its twin, or the native model of a twin) is checked too: promotion
    moves the aliases of both.
    """
    from toolkit.registry.flavor import load_model
    from toolkit.registry.integrity import verify

    tags = mv.tags or {}
    own = f"models:/{mv.name}/{mv.version}"
    twin = _twin_of(mv)
    if tags.get("kind") == "sklearn_twin" or twin is None:
        model = load_model(own)
        if twin is not None:
            verify(f"models:/{twin[0]}/{twin[1]}")
        return model
    verify(own)
    return load_model(f"models:/{twin[0]}/{twin[1]}")


def evaluate_version(mv: Any, X: np.ndarray, y: np.ndarray | None, metric: str, seed: int = 0) -> float:
    """``metric`` of version ``mv``'s clustering of ``X``."""
    model = _scoring_model(mv)
    labels = np.asarray(model.predict(X))
    centers = np.asarray(model.cluster_centers_, dtype=np.float64)
    inertia = float(((X - centers[labels]) ** 2).sum())
    if metric == "adjusted_rand" and y is None:
        raise ModelError("metric adjusted_rand needs ground-truth labels; the evaluation data has none",
                         "use silhouette, davies_bouldin, calinski_harabasz or inertia")
    scores = cluster_metrics(X, labels, len(centers), inertia=inertia, y_true=y, seed=seed)
    return float(scores[metric])


def _better(a: float, b: float, direction: str) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    return a > b if direction == "maximize" else a < b


def _twin_of(mv: Any) -> tuple[str, str] | None:
    tags = mv.tags or {}
    if tags.get("twin.name") and tags.get("twin.version"):
        return tags["twin.name"], tags["twin.version"]
    return None


def promote(name: str, X: np.ndarray, y: np.ndarray | None = None, metric: str = "silhouette",
            force: bool = False, seed: int = 0) -> PromotionResult:
    """Score ``name@challenger`` against ``name@champion`` and move ``champion`` if it wins."""
    c = client()
    challenger = get_version(name, CHALLENGER)
    try:
        champion = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        champion = None
    direction = METRIC_DIRECTIONS[metric]
    ch_score = evaluate_version(challenger, X, y, metric, seed)
    if champion is None:
        promoted, reason, champ_score = True, "no champion existed", None
    elif champion.version == challenger.version:
        promoted, reason, champ_score = False, "challenger already is the champion", ch_score
    else:
        champ_score = evaluate_version(champion, X, y, metric, seed)
        wins = _better(ch_score, champ_score, direction)
        promoted = wins or force
        verdict = "beats" if wins else "does not beat"
        reason = (f"{metric} {ch_score:.6g} {verdict} champion v{champion.version}'s {champ_score:.6g} "
                  f"({direction})") + ("; forced" if force and not wins else "")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {
        "promotion.metric": metric,
        "promotion.score": f"{ch_score:.6g}",
        "promotion.reason": reason,
        "promotion.decided_at": stamp,
        "promotion.outcome": "promoted" if promoted else "rejected",
    }
    if champion is not None and champion.version != challenger.version:
        tags["promotion.champion_version"] = str(champion.version)
        tags["promotion.champion_score"] = f"{champ_score:.6g}"
    if promoted:
        _move_champion(name, challenger, champion, tags, reason)
    else:
        for k, v in tags.items():
            c.set_model_version_tag(name, challenger.version, k, v)
    return PromotionResult(name, metric, str(challenger.version),
                           str(champion.version) if champion is not None else None,
                           ch_score, champ_score, promoted, reason)


def _move_champion(name: str, challenger: Any, champion: Any, tags: dict[str, str], reason: str) -> None:
    c = client()
    pairs = [(name, challenger, champion)]
    twin = _twin_of(challenger)
    if twin is not None:
        twin_champion = None
        with contextlib.suppress(Exception):  # no champion yet
            twin_champion = c.get_model_version_by_alias(twin[0], CHAMPION)
        pairs.append((twin[0], c.get_model_version(twin[0], twin[1]), twin_champion))
    for model_name, new, old in pairs:
        extra = dict(tags)
        if old is not None and old.version != new.version:
            extra["promotion.replaced_version"] = str(old.version)
            c.set_model_version_tag(model_name, old.version, "promotion.replaced_by", str(new.version))
            c.set_model_version_tag(model_name, old.version, "promotion.replaced_reason", reason)
        for k, v in extra.items():
            c.set_model_version_tag(model_name, new.version, k, v)
        c.set_registered_model_alias(model_name, CHAMPION, new.version)
