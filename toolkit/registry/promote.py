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

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import numpy as np

from toolkit.errors import DataError, ModelError, option_hint
from toolkit.metrics import METRIC_DIRECTIONS
from toolkit.registry import flavor, stable
from toolkit.registry.integrity import get_version, twin_of  # get_version re-exported: part of this API
from toolkit.stats.scores import score_clustering
from toolkit.tracking.runs import client

__all__ = ["PromotionOptions", "PromotionPolicy", "PromotionResult", "champion_of", "evaluate_version", "get_version",
           "promote"]

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


class PromotionOptions(TypedDict, total=False):
    """The fields of :class:`PromotionPolicy`, accepted by :func:`promote` as keywords."""

    metric: str
    force: bool
    seed: int
    max_churn: float


@dataclass(frozen=True)
class PromotionPolicy:
    """How a challenger is judged against the champion.

    Attributes:
        metric: the metric both versions are scored on (a key of
            :data:`toolkit.metrics.METRIC_DIRECTIONS`).
        force: promote whatever the scores and churn (and without loading a champion that
            cannot be loaded).
        seed: the scores' and the stand-in reference sample's seed.
        max_churn: the largest share (0..1; 1 = no gate) of the champion's reference sample the
            challenger may relabel.

    Raises:
        ModelError: ``max_churn`` outside 0..1.
    """

    metric: str = "silhouette"
    force: bool = False
    seed: int = 0
    max_churn: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.max_churn) <= 1.0:
            raise ModelError(f"max_churn must be between 0 and 1, got {self.max_churn}",
                             "pass a share of the reference sample, e.g. 0.1 (1 = no gate)")
        object.__setattr__(self, "max_churn", float(self.max_churn))


def promote(name: str, X: np.ndarray, y: np.ndarray | None = None, policy: PromotionPolicy | None = None, *,
            columns: list[str] | None = None, **options: Unpack[PromotionOptions]) -> PromotionResult:
    """Score ``name@challenger`` against ``name@champion`` and move ``champion`` if it wins.

    It must win on ``metric`` AND relabel at most ``max_churn`` (0..1; 1 = no gate) of the
    champion's reference sample; ``force`` promotes regardless.

    Args:
        name: the registered model (its twin's aliases move with it).
        X: the evaluation data both versions are scored on.
        y: its ground-truth labels (``adjusted_rand`` needs them).
        policy: how to judge (:class:`PromotionPolicy`; default: silhouette, no churn gate).
        columns: the names of ``X``'s columns, in order: checked against the challenger's
            (None: ``X`` is taken to be in the models' order).
        **options: :class:`PromotionPolicy` fields (``metric``, ``force``, ``seed``,
            ``max_churn``), overriding ``policy``'s.

    Raises:
        ModelError: no such model or alias, a model failing its integrity check, or
            ``max_churn`` outside 0..1.
        DataError: ``columns`` are not the challenger's (in number, names or order).
    """
    policy = dataclasses.replace(policy or PromotionPolicy(), **options)
    challenger = get_version(name, CHALLENGER)
    champion = champion_of(name)
    direction = METRIC_DIRECTIONS[policy.metric]  # an unknown metric fails before any model is loaded
    model, _ = _load_scoring(challenger)
    ours = flavor.trained_columns(model)  # the scoring model is a twin: it knows them
    if columns is not None and ours is not None and [str(c) for c in columns] != ours:
        raise DataError(f"the evaluation data's columns ({', '.join(map(str, columns))}) are not those challenger "
                        f"v{challenger.version} of {name!r} was trained on ({', '.join(ours)})",
                        "evaluate on data with the model's columns, in its order (data.columns)")
    contest = _Contest(name, challenger, champion, model, _score(model, X, y, policy.metric, policy.seed),
                       direction, policy)
    outcome = contest.decide(X, y)
    contest.record(outcome)
    return PromotionResult(name, policy.metric, str(challenger.version),
                           str(champion.version) if champion is not None else None, contest.score,
                           outcome.champion_score, outcome.promoted, outcome.reason, outcome.churn, policy.max_churn)


@dataclass(frozen=True)
class _Outcome:
    """One promotion's decision and the figures behind it."""

    promoted: bool
    reason: str
    champion_score: float | None
    churn: float | None = None
    reference: str = ""  # the rows churn was measured on, as the tag says it


@dataclass(frozen=True)
class _Contest:
    """The two versions of one promotion, the challenger's scoring model and score, the policy."""

    name: str
    challenger: Any
    champion: Any | None
    model: Any
    score: float
    direction: str
    policy: PromotionPolicy

    def decide(self, X: np.ndarray, y: np.ndarray | None) -> _Outcome:
        """Promote or not, and why."""
        champion, policy = self.champion, self.policy
        if champion is None:
            return _Outcome(True, "no champion existed", None)
        if champion.version == self.challenger.version:
            return _Outcome(False, "challenger already is the champion", self.score)
        loaded = _load_champion(self.name, champion, policy.force)
        if loaded is None:
            return _Outcome(True, f"{policy.metric} {self.score:.6g}; champion v{champion.version} cannot be "
                                  "loaded, not compared; forced", float("nan"))
        return self._compare(*loaded, X, y)

    def _compare(self, model: Any, ref: np.ndarray | None, X: np.ndarray, y: np.ndarray | None) -> _Outcome:
        """The decision against a loaded champion (``model``, its reference sample ``ref``)."""
        policy, version = self.policy, self.champion.version
        ours, theirs = flavor.trained_columns(self.model), flavor.trained_columns(model)
        if ours is not None and theirs is not None and ours != theirs:
            # Scored on the same rows, one of the two would read them in the wrong order.
            return _Outcome(policy.force, f"the challenger's columns ({', '.join(ours)}) are not champion v{version}'s "
                                          f"({', '.join(theirs)}): not compared" + ("; forced" if policy.force else ""),
                            float("nan"))
        score = _score(model, X, y, policy.metric, policy.seed)
        wins = _better(self.score, score, self.direction)
        reference, label = _reference(ref, str(version), X, policy.seed)
        churn = stable.churn(model, self.model, reference)
        calm = churn <= policy.max_churn
        verdict = "beats" if wins else "does not beat"
        shown, limit = _churn_figure(churn, policy.max_churn)
        reason = (f"{policy.metric} {self.score:.6g} {verdict} champion v{version}'s {score:.6g} "
                  f"({self.direction}); churn {shown} {'<=' if calm else '>'} max {limit}"
                  + ("; forced" if policy.force and not (wins and calm) else ""))
        return _Outcome((wins and calm) or policy.force, reason, score, churn, label)

    def tags(self, outcome: _Outcome) -> dict[str, str]:
        """The ``promotion.*`` tags of the challenger (and, when promoted, of its twin)."""
        tags = {
            "promotion.metric": self.policy.metric,
            "promotion.score": f"{self.score:.6g}",
            "promotion.reason": outcome.reason,
            "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "promotion.outcome": "promoted" if outcome.promoted else "rejected",
        }
        if self.champion is not None and self.champion.version != self.challenger.version:
            tags["promotion.champion_version"] = str(self.champion.version)
            tags["promotion.champion_score"] = f"{outcome.champion_score:.6g}"
            if outcome.churn is not None:
                tags["promotion.churn"] = f"{outcome.churn:.6f}"
                tags["promotion.max_churn"] = f"{self.policy.max_churn:g}"
                tags["promotion.churn_reference"] = outcome.reference
        return tags

    def record(self, outcome: _Outcome) -> None:
        """Write the decision: move the aliases when promoted, else tag the challenger only."""
        tags = self.tags(outcome)
        if outcome.promoted:
            _move_champion(self.name, self.challenger, self.champion, tags, outcome.reason)
            return
        c = client()
        for k, v in tags.items():
            c.set_model_version_tag(self.name, self.challenger.version, k, v)


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
