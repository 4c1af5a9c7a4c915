"""Promotion by alias: the ``challenger`` replaces the ``champion`` only when it scores better.

Both versions are scored on the same evaluation data with the same metric (through their
scikit-learn twins, so promotion runs on any machine).  The decision, the scores and who was
replaced are written as version tags; the twin's registered model gets the same aliases so the
two names never disagree about who is champion.  The scores are those of
:func:`toolkit.stats.scores.score_clustering`, the computation behind the ``clustering``
evaluator of ``mlflow.models.evaluate``: a decision can be checked by hand with it.

A challenger that wins on the metric is still kept back when it relabels too much: its **churn**
(the share of the champion's reference sample, stored with the champion, whose label differs
between the two) must be at most ``max_churn`` (1 = no gate).  ``force`` overrides both gates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import ModelError, option_hint
from toolkit.metrics import METRIC_DIRECTIONS
from toolkit.registry import stable
from toolkit.registry.integrity import get_version, twin_of  # get_version re-exported: part of this API
from toolkit.stats.scores import score_clustering
from toolkit.tracking.runs import client

__all__ = ["PromotionResult", "champion_of", "evaluate_version", "get_version", "promote"]

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
    churn: float | None = None
    max_churn: float = 1.0


def _scoring_model(mv: Any) -> Any:
    """The scikit-learn model to score a version with (itself, or its registered twin)."""
    return _load_scoring(mv)[0]


def _load_scoring(mv: Any) -> tuple[Any, np.ndarray | None]:
    """(scoring model, its reference sample or None) of version ``mv``.

    Every model is loaded through :func:`toolkit.registry.flavor.load_verified`, which checks its
    files against the registry's checksums first.  The counterpart that is not scored (a native
    model scored through its twin, or the native model of a twin) is checked too: promotion
    moves the aliases of both.
    """
    from toolkit.registry.integrity import verify

    tags = mv.tags or {}
    own = f"models:/{mv.name}/{mv.version}"
    twin = twin_of(mv)
    if tags.get("kind") == "sklearn_twin" or twin is None:
        loaded = stable.load_with_reference(own)
        if twin is not None:
            verify(f"models:/{twin[0]}/{twin[1]}")
        return loaded
    verify(own)
    return stable.load_with_reference(f"models:/{twin[0]}/{twin[1]}")


def evaluate_version(mv: Any, X: np.ndarray, y: np.ndarray | None, metric: str, seed: int = 0) -> float:
    """``metric`` of version ``mv``'s clustering of ``X``."""
    return _score(_scoring_model(mv), X, y, metric, seed)


def _score(model: Any, X: np.ndarray, y: np.ndarray | None, metric: str, seed: int) -> float:
    """``metric`` of ``model`` on ``X``: the figure the ``clustering`` evaluator of
    ``mlflow.models.evaluate`` reports, because it is the same function's."""
    if metric == "adjusted_rand" and y is None:
        raise ModelError("metric adjusted_rand needs ground-truth labels; the evaluation data has none",
                         "use silhouette, davies_bouldin, calinski_harabasz or inertia")
    return float(score_clustering(model, X, y, seed=seed).metrics[metric])


def _better(a: float, b: float, direction: str) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    return a > b if direction == "maximize" else a < b



def _churn_figure(value: float, limit: float) -> tuple[str, str]:
    """Churn and limit as text: two decimals, more where two would hide which side it is on."""
    for digits in (2, 4, 6):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if (a == b) == (value == limit):
            return a, b
    return f"{value:.6g}", f"{limit:.6g}"


def _reference(champion_ref: np.ndarray | None, champion_version: str, X: np.ndarray,
               seed: int) -> tuple[np.ndarray, str]:
    """The rows churn is measured on: the champion's reference sample, else the evaluation data's."""
    if champion_ref is not None and champion_ref.shape[1] == np.asarray(X).shape[1]:
        return champion_ref, f"champion v{champion_version}'s reference sample ({len(champion_ref)} rows)"
    # A champion registered before reference samples were kept: a seeded sample of X stands in.
    n = int(np.asarray(X).shape[0])
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, stable.MAX_REFERENCE_ROWS), replace=False))
    return np.asarray(X)[idx], f"the evaluation data ({len(idx)} rows)"


def promote(name: str, X: np.ndarray, y: np.ndarray | None = None, metric: str = "silhouette",
            force: bool = False, seed: int = 0, max_churn: float = 1.0) -> PromotionResult:
    """Score ``name@challenger`` against ``name@champion`` and move ``champion`` if it wins.

    It must win on ``metric`` AND relabel at most ``max_churn`` (0..1; 1 = no gate) of the
    champion's reference sample; ``force`` promotes regardless.

    Raises:
        ModelError: no such model or alias, a model failing its integrity check, or
            ``max_churn`` outside 0..1.
    """
    if not 0.0 <= float(max_churn) <= 1.0:
        raise ModelError(f"max_churn must be between 0 and 1, got {max_churn}",
                         "pass a share of the reference sample, e.g. 0.1 (1 = no gate)")
    max_churn = float(max_churn)
    c = client()
    challenger = get_version(name, CHALLENGER)
    champion = champion_of(name)
    direction = METRIC_DIRECTIONS[metric]
    ch_model, _ = _load_scoring(challenger)
    ch_score = _score(ch_model, X, y, metric, seed)
    churn: float | None = None
    ref_label = ""
    if champion is None:
        promoted, reason, champ_score = True, "no champion existed", None
    elif champion.version == challenger.version:
        promoted, reason, champ_score = False, "challenger already is the champion", ch_score
    elif (loaded := _load_champion(name, champion, force)) is None:
        promoted, champ_score = True, float("nan")
        reason = f"{metric} {ch_score:.6g}; champion v{champion.version} cannot be loaded, not compared; forced"
    else:
        champ_model, champ_ref = loaded
        champ_score = _score(champ_model, X, y, metric, seed)
        wins = _better(ch_score, champ_score, direction)
        reference, ref_label = _reference(champ_ref, str(champion.version), X, seed)
        churn = stable.churn(champ_model, ch_model, reference)
        calm = churn <= max_churn
        promoted = (wins and calm) or force
        verdict = "beats" if wins else "does not beat"
        shown, limit = _churn_figure(churn, max_churn)
        reason = (f"{metric} {ch_score:.6g} {verdict} champion v{champion.version}'s {champ_score:.6g} "
                  f"({direction}); churn {shown} {'<=' if calm else '>'} max {limit}"
                  + ("; forced" if force and not (wins and calm) else ""))
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
        if churn is not None:
            tags["promotion.churn"] = f"{churn:.6f}"
            tags["promotion.max_churn"] = f"{max_churn:g}"
            tags["promotion.churn_reference"] = ref_label
    if promoted:
        _move_champion(name, challenger, champion, tags, reason)
    else:
        for k, v in tags.items():
            c.set_model_version_tag(name, challenger.version, k, v)
    return PromotionResult(name, metric, str(challenger.version),
                           str(champion.version) if champion is not None else None,
                           ch_score, champ_score, promoted, reason, churn, max_churn)


def _load_champion(name: str, champion: Any, force: bool) -> tuple[Any, np.ndarray | None] | None:
    """The champion's scoring model and reference sample; None when it cannot be loaded and ``force``.

    An upgraded store's champion may be a model this release refuses to load (unsigned, pickled,
    registered before checksums).  It must not hold the alias hostage: ``force`` moves the alias
    without loading it (its files are neither read nor changed).
    """
    try:
        return _load_scoring(champion)
    except ModelError as exc:
        if force:
            return None
        raise ModelError(f"champion v{champion.version} of {name!r} cannot be loaded to compare with: "
                         f"{exc.problem}",
                         f"promote with {option_hint('force', 'true')} to move the champion alias "
                         f"without loading it, or migrate it first (`mlflow run . -e migrate -P model_name={name} "
                         "-P trust=pickle`: a new signed version takes its aliases)") from None


def champion_of(name: str) -> Any | None:
    """The version holding ``name@champion``, or None (no such model or alias yet)."""
    try:
        return client().get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None


def _move_champion(name: str, challenger: Any, champion: Any, tags: dict[str, str], reason: str) -> None:
    c = client()
    pairs = [(name, challenger, champion)]
    twin = twin_of(challenger)
    if twin is not None:
        pairs.append((twin[0], c.get_model_version(twin[0], twin[1]), champion_of(twin[0])))
    for model_name, new, old in pairs:
        extra = dict(tags)
        if old is not None and old.version != new.version:
            extra["promotion.replaced_version"] = str(old.version)
            c.set_model_version_tag(model_name, old.version, "promotion.replaced_by", str(new.version))
            c.set_model_version_tag(model_name, old.version, "promotion.replaced_reason", reason)
        for k, v in extra.items():
            c.set_model_version_tag(model_name, new.version, k, v)
        c.set_registered_model_alias(model_name, CHAMPION, new.version)
