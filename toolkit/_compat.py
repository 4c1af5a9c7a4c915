"""Every reach into a library's private attributes, tables or functions, in one guarded place.

The toolkit uses public API wherever the libraries offer one.  Where they do not, the private
thing is touched *only* here, by a function whose docstring names the library, the private
name, the version range it was checked against and the public fallback (if any).  Each entry is
also listed in :data:`REACHES` with a probe that checks, on the installed versions, that the
private thing still exists with the shape the toolkit relies on; :func:`check` runs every probe
and ``tests/test_compat.py`` runs each one as its own test, so a release that renames or
reshapes one fails loudly, naming the entry, instead of breaking a search silently.

This is the idea MLflow applies to its own patching of other libraries: every autologging patch
goes through one guarded mechanism (``mlflow.utils.autologging_utils.safe_patch``, built on
``gorilla``) instead of ad-hoc monkeypatching scattered through the code.

Nothing here imports MLflow, Optuna, Dask or cuML at module level: each entry imports its
library when called, so importing this module costs nothing and the CPU path never imports cuML.
This module imports no other ``toolkit`` module (it is a leaf of the import graph).

Versions checked (the installed set when each entry was written or re-checked):
MLflow 3.17.2, Optuna 5.1.0, Dask/distributed 2026.8.0, Python 3.11.7, cuML 25.x (see
``shared/RAPIDS_FACTS.md``; GPU-only, not probed on the CPU path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REACHES",
    "CompatError",
    "Reach",
    "check",
    "optuna_set_trial_user_attr",
    "optuna_study_id",
    "optuna_trial_id",
]


class CompatError(RuntimeError):
    """A private thing the toolkit relies on is gone or changed shape in an installed library."""


@dataclass(frozen=True)
class Reach:
    """One use of a library's private thing.

    Attributes
    ----------
    name:
        The :mod:`toolkit._compat` function that holds the reach.
    library:
        The distribution whose private thing is used (``mlflow``, ``optuna``, ...).
    private:
        The private attribute, table or function used.
    checked:
        The version range of ``library`` it was checked against (PEP 440 specifier).
    public:
        The public fallback, or why there is none.
    probe:
        Raises (any exception) when the private thing is missing or changed shape on the
        installed version; ``None`` for entries that cannot be probed on this machine (GPU).
    """

    name: str
    library: str
    private: str
    checked: str
    public: str
    probe: Callable[[], None] | None


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# ---------------------------------------------------------------------------------------------
# Optuna
# ---------------------------------------------------------------------------------------------


def optuna_trial_id(trial: Any) -> int:
    """The storage id of an Optuna ``Trial`` or ``FrozenTrial`` (unique across studies of a storage).

    Library: Optuna.  Private: ``Trial._trial_id`` / ``FrozenTrial._trial_id``.
    Checked: optuna >=4.0,<6 (5.1.0).  Public fallback: none -- Optuna exposes only ``number``
    (unique within one study); the storage id is what ties an MLflow child run to the row of the
    Optuna storage when several studies share it.
    """
    return int(trial._trial_id)


def optuna_study_id(study: Any) -> int:
    """The storage id of an Optuna ``Study`` or ``FrozenStudy``.

    Library: Optuna.  Private: ``Study._study_id`` / ``FrozenStudy._study_id``.
    Checked: optuna >=4.0,<6 (5.1.0).  Public fallback: ``storage.get_study_id_from_name(name)``
    (``BaseStorage`` is public) -- one storage query per study instead of reading the attribute
    already loaded by ``get_all_studies()``.
    """
    return int(study._study_id)


def optuna_set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute on a trial the caller holds only as a ``FrozenTrial`` (e.g. a stale RUNNING one).

    Library: Optuna.  Private: ``Study._storage`` (and the trial's ``_trial_id``); the storage
    method ``BaseStorage.set_trial_user_attr`` itself is public.  Checked: optuna >=4.0,<6 (5.1.0).
    Public fallback: ``Trial.set_user_attr`` works only on a live ``Trial`` handed out by
    ``study.ask()``; a trial left RUNNING by a stopped driver has none.
    """
    study._storage.set_trial_user_attr(optuna_trial_id(trial), key, value)


def _probe_optuna_ids() -> None:
    import optuna
    from optuna.study._frozen import FrozenStudy

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    _require(isinstance(trial._trial_id, int), "Trial._trial_id is not an int")
    frozen = study.trials[0]
    _require(isinstance(frozen._trial_id, int) and frozen._trial_id == trial._trial_id,
             "FrozenTrial._trial_id differs from Trial._trial_id")
    _require(isinstance(study._study_id, int), "Study._study_id is not an int")
    summaries = study._storage.get_all_studies()
    _require(all(isinstance(s, FrozenStudy) and isinstance(s._study_id, int) for s in summaries),
             "FrozenStudy._study_id is not an int")
    _require(summaries[0]._study_id == study._study_id, "FrozenStudy._study_id differs from Study._study_id")


def _probe_optuna_storage() -> None:
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.ask()
    _require(isinstance(study._storage, optuna.storages.BaseStorage), "Study._storage is not a BaseStorage")
    optuna_set_trial_user_attr(study, study.trials[0], "probe", True)
    _require(study.trials[0].user_attrs.get("probe") is True, "set_trial_user_attr did not reach the trial")


# ---------------------------------------------------------------------------------------------
# The register and the check
# ---------------------------------------------------------------------------------------------

REACHES: tuple[Reach, ...] = (
    Reach("optuna_trial_id", "optuna", "Trial._trial_id, FrozenTrial._trial_id", ">=4.0,<6",
          "none (Trial.number is unique only within a study)", _probe_optuna_ids),
    Reach("optuna_study_id", "optuna", "FrozenStudy._study_id", ">=4.0,<6",
          "BaseStorage.get_study_id_from_name (one query per study)", _probe_optuna_ids),
    Reach("optuna_set_trial_user_attr", "optuna", "Study._storage", ">=4.0,<6",
          "Trial.set_user_attr (live trials only)", _probe_optuna_storage),
)


def check(names: list[str] | None = None) -> None:
    """Probe every reach (or those named) on the installed versions.

    Raises
    ------
    CompatError
        For the first reach whose private thing is gone or changed shape; the message names the
        entry, the library and installed version, the private thing and the range checked.
    """
    for reach in REACHES:
        if reach.probe is None or (names is not None and reach.name not in names):
            continue
        try:
            reach.probe()
        except Exception as exc:  # any failure of a probe is the finding
            raise CompatError(
                f"toolkit._compat.{reach.name}: {reach.library} {_installed(reach.library)} changed "
                f"{reach.private} (checked against {reach.library}{reach.checked}): {type(exc).__name__}: {exc} "
                f"-- fix: update toolkit/_compat.py ({reach.public})"
            ) from exc
