"""Migrate the versions of a registered model that today's loader refuses into the current
safe, signed format, as NEW versions.

Earlier releases wrote formats this release does not load by default:

* ``run-artifacts`` (release 0.1.0): the native model a cloudpickle file (``model.pkl``) and the
  twin a skops file, both saved as run artifacts and registered from the run's artifact folder,
  with no checksums and no signature;
* ``unsigned`` (checksums, before signatures): a LoggedModel whose files' sha256 the store
  recorded (``integrity.sha256``) but with no ``model.sig``;
* ``signed-pickle``: a signed model in the opt-in pickle format;
* ``signed-no-cast``: a signed scikit-learn twin registered before twins had a cast step (0.2.0
  as first cut): stock ``mlflow.sklearn`` refuses rows of the other float width; it is rebuilt
  with the cast (its signature already vouches for its files: any trust suffices).

:func:`migrate` loads each such version ONCE under a trust decision the caller states
(``trust``: :data:`UNSIGNED` accepts files nobody signed -- checked against the store's checksums
where it has them, read without running code; :data:`PICKLE` also unpickles, which runs code), rebuilds
the model in the ``kmeans-npy`` / skops formats, signs and registers it as a new version, checks
that it predicts exactly the old model's labels, copies the old version's tags, moves its
aliases and records the decision (``migrated_from``, ``migration.trust``,
``migration.toolkit_version``, ...).  The old versions' files are never changed; each gets a
``migration.migrated_to`` tag, so a second migration skips it.  A native model and its twin are
migrated together and linked again (``twin.name`` / ``twin.version``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.errors import ModelError, first_line
from toolkit.names import MIGRATE_TRUST_LEVELS
from toolkit.registry import flavor, integrity, signing, stable
from toolkit.tracking.runs import client

__all__ = [
    "MIGRATED_FROM_TAG",
    "MIGRATED_TO_TAG",
    "PICKLE",
    "TRUST_LEVELS",
    "UNSIGNED",
    "Migrated",
    "Migration",
    "classify",
    "migrate",
    "parse_trust",
]

#: Trust levels, each accepting what the ones before it accept.
TRUST_LEVELS = MIGRATE_TRUST_LEVELS
UNSIGNED, PICKLE = TRUST_LEVELS
#: On the new version: the URI of the version it was migrated from.
MIGRATED_FROM_TAG = "migrated_from"
#: On the old version: the number of the version that replaced it.
MIGRATED_TO_TAG = "migration.migrated_to"
_TRUST_TAG = "migration.trust"
_TOOLKIT_TAG = "migration.toolkit_version"
_SOURCE_FORMAT_TAG = "migration.source_format"
_RUN_TAG = "migration.run_id"
_AT_TAG = "migration.migrated_at"
#: Formats an old version can be in, with the trust each needs.
RUN_ARTIFACTS, UNSIGNED_LM, SIGNED_PICKLE, CURRENT = "run-artifacts", "unsigned", "signed-pickle", "current"
SIGNED_NO_CAST = "signed-no-cast"
# Tags never copied to the new version: its own integrity record, its own twin link, the old
# version's migration marks.
_NOT_COPIED = (*integrity.INTEGRITY_TAGS, integrity.MODEL_ID_TAG, integrity.SIGNER_TAG, "twin.version",
               MIGRATED_TO_TAG)


def parse_trust(value: str) -> str:
    """The trust level ``value`` names (``unsigned`` or ``pickle``).

    Raises:
        ModelError: another value.
    """
    from toolkit.errors import option_hint

    got = (value or "").strip().lower()
    if got not in TRUST_LEVELS:
        raise ModelError(f"trust must be {' or '.join(TRUST_LEVELS)}, got {value!r}",
                         f"pass {option_hint('trust', UNSIGNED)} to accept unsigned models (read without running "
                         f"code) or {option_hint('trust', PICKLE)} to also unpickle old pickled models (runs code: "
                         "only for a store you trust)")
    return got


def _covers(trust: str, needed: str) -> bool:
    return TRUST_LEVELS.index(trust) >= TRUST_LEVELS.index(needed)


@dataclass
class Migration:
    """What an old version is: its format and the trust its load needs."""

    name: str
    version: str
    source_format: str
    needs: str | None  # None: loads as is (current)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class Migrated:
    """One version's outcome: ``new_version`` set when migrated, ``skipped`` the reason otherwise."""

    name: str
    version: str
    new_version: str | None = None
    skipped: str | None = None
    aliases: list[str] = field(default_factory=list)
    source_format: str = ""


def _allow_unsigned() -> contextlib.AbstractContextManager[None]:
    # This migration's own trust decision stands in for the user's unsigned policy while the
    # old files are read: in this thread's context only, not the process environment.
    return signing.trusting_unsigned()


def _is_run_artifacts(mv: Any) -> bool:
    return not (integrity._parse_model_id(getattr(mv, "source", None)) or getattr(mv, "model_id", None))


def classify(mv: Any) -> Migration:
    """The format of version ``mv`` and the trust loading it needs (only the signature, or the
    MLmodel of a run-artifact model, is read; and a signed twin, with skops' trusted types, to see
    whether it has the cast step).

    Raises:
        ModelError: the version cannot be checked for a reason no migration fixes (a signature
            that does not verify, an untrusted key, changed files).
    """
    name, ver = mv.name, str(mv.version)
    if _is_run_artifacts(mv):
        with _downloaded(mv) as local:
            pickled = flavor.FLAVOR_NAME in _flavors(local)
        return Migration(name, ver, RUN_ARTIFACTS, PICKLE if pickled else UNSIGNED)
    with _allow_unsigned(), _quiet():
        verified = integrity.fetch_verified(f"models:/{name}/{ver}")
    with verified:
        fmt = verified.integrity.get(integrity.FORMAT_TAG)
        if not verified.signed:
            return Migration(name, ver, UNSIGNED_LM, PICKLE if fmt == flavor.PICKLE else UNSIGNED)
        if fmt == flavor.PICKLE:
            return Migration(name, ver, SIGNED_PICKLE, PICKLE)
        if fmt == flavor.SKOPS and _without_cast(verified):
            return Migration(name, ver, SIGNED_NO_CAST, UNSIGNED)
    return Migration(name, ver, CURRENT, None)


def _without_cast(verified: Any) -> bool:
    """Whether a signed twin predates the cast step (stock MLflow then predicts one float width only)."""
    from toolkit.convert import cast_dtype

    return cast_dtype(flavor.load_verified(verified)) is None


def _quiet() -> contextlib.AbstractContextManager[None]:
    # The unsigned-load warning is for loads; a classification reads nothing but checksums.
    from toolkit.console import quiet

    return quiet()


def _flavors(local: str) -> dict[str, Any]:
    from mlflow.models import Model

    try:
        return dict(Model.load(os.path.join(local, "MLmodel")).flavors)
    except Exception as exc:
        raise ModelError(f"{local} holds no readable MLmodel ({first_line(exc, 200)})",
                         "check the version's source in the registry") from None


@contextlib.contextmanager
def _downloaded(mv: Any) -> Iterator[str]:
    """A private copy of a run-artifact version's files (they were never checksummed)."""
    from mlflow.artifacts import download_artifacts

    tmp = tempfile.mkdtemp(prefix="kmeans-migrate-")
    try:
        try:
            with integrity._no_progress_bar():
                local = download_artifacts(artifact_uri=mv.source, dst_path=os.path.join(tmp, "model"))
        except Exception as exc:
            raise ModelError(f"{mv.name} v{mv.version}: cannot download its files from {mv.source} "
                             f"({first_line(exc, 200)})", "check that the store's artifact folder is there") from None
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Loaded:
    model: Any
    feature_names: list[str] | None
    reference: np.ndarray | None
    profile: Any
    example: np.ndarray | None
    backend: str


def _example_rows(local: str) -> np.ndarray | None:
    """The rows of a saved input example (``input_example.json``), if any."""
    path = os.path.join(local, "input_example.json")
    with contextlib.suppress(Exception):
        with open(path) as fh:
            doc = json.load(fh)
        rows = doc.get("data") if isinstance(doc, dict) else doc
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim == 2 and arr.size:
            return arr
    return None


def _schema_names(local: str) -> list[str] | None:
    from mlflow.models import Model

    with contextlib.suppress(Exception):
        sig = Model.load(os.path.join(local, "MLmodel")).signature
        if sig is not None and sig.inputs is not None and sig.inputs.has_input_names():
            return [str(n) for n in sig.inputs.input_names()]
    return None


def _load_run_artifacts(mv: Any) -> _Loaded:
    """Release 0.1.0's layout: ``model.pkl`` (native) or ``model.skops`` (twin) at the folder's root."""
    with _downloaded(mv) as local:
        flavors = _flavors(local)
        conf = flavors.get(flavor.FLAVOR_NAME)
        if conf is not None:
            import cloudpickle

            pkl = os.path.join(local, str(conf.get("pickled_model") or "model.pkl"))
            try:
                with open(pkl, "rb") as fh:
                    model = cloudpickle.load(fh)
            except Exception as exc:
                raise ModelError(f"{mv.name} v{mv.version}: its pickle {os.path.basename(pkl)} cannot be read "
                                 f"here ({first_line(exc, 200)})", "load it with the release that wrote it") from None
            backend = str(conf.get("backend") or (mv.tags or {}).get("backend") or "unknown")
        else:
            model = flavor._read_twin(local)
            backend = str((mv.tags or {}).get("backend") or "sklearn")
        names = _schema_names(local) or _feature_names_in(model)
        flavor._check_kmeans(model, _facts_of(model), f"{mv.name} v{mv.version}")
        return _Loaded(model, names, None, None, _example_rows(local), backend)


def _feature_names_in(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _facts_of(model: Any) -> dict[str, str]:
    from toolkit.convert import centers_of, class_key, split_centered

    shape = np.asarray(centers_of(model)).shape
    return {integrity.CLASS_TAG: flavor._current_key(class_key(split_centered(model)[0])) or "",
            integrity.SHAPE_TAG: f"{shape[0]}x{shape[1]}"}


def _load_logged(mv: Any) -> _Loaded:
    """An unsigned LoggedModel (checked against the store's checksums), a signed pickle or a
    signed twin without the cast step."""
    from toolkit.stats.profile import read_profile

    with _allow_unsigned(), integrity.fetch_verified(f"models:/{mv.name}/{mv.version}") as verified:
        fmt = verified.integrity.get(integrity.FORMAT_TAG)
        if fmt == flavor.PICKLE and not verified.signed:
            # The unsigned pickle: read only because the caller's trust says so (checked above).
            verified.recheck()
            model = flavor._read_native(verified.local_path, verified.integrity, None)
            model = flavor._check_kmeans(model, verified.integrity, verified.label)
        else:
            model = flavor.load_verified(verified, allow_pickle=True)
        if fmt == flavor.SKOPS:
            names = _feature_names_in(model)
            backend = str((mv.tags or {}).get("backend") or "sklearn")
        else:
            conf = flavor.flavor_conf(verified.local_path)
            names = conf.get("feature_names") or _schema_names(verified.local_path)
            backend = str(conf.get("backend") or (mv.tags or {}).get("backend") or "unknown")
        return _Loaded(model, names, stable.read_reference(verified), read_profile(verified),
                       _example_rows(verified.local_path), backend)


def _sample(loaded: _Loaded) -> np.ndarray:
    """Rows the migrated model must label exactly as the old one: the old reference sample (or
    input example) and the centres themselves."""
    from toolkit.convert import centers_of, input_dtype

    centres = np.asarray(centers_of(loaded.model), dtype=np.float64)
    parts = [p for p in (loaded.reference, loaded.example) if p is not None and p.shape[1] == centres.shape[1]]
    rows = np.vstack([*[np.asarray(p, dtype=np.float64) for p in parts], centres])
    return rows.astype(np.float64 if input_dtype(loaded.model) == np.float64 else np.float32)


def _names(loaded: _Loaded, width: int) -> list[str]:
    names = loaded.feature_names
    return [str(n) for n in names] if names and len(names) == width else [f"x{i}" for i in range(width)]


def _relog(loaded: _Loaded, twin: bool, run_id: str, source: Migration) -> integrity.LoggedRef:
    """Log ``loaded.model`` anew (kmeans-npy or skops, signed) as a LoggedModel of ``run_id``."""
    import pandas as pd

    from toolkit.convert import centers_of, check_equivalent
    from toolkit.registry import register
    from toolkit.stats.profile import build_profile, save_profile

    sample = _sample(loaded)
    names = _names(loaded, sample.shape[1])
    reference = loaded.reference if loaded.reference is not None else sample
    profile = loaded.profile or build_profile(reference, None, centers_of(loaded.model),
                                              source=f"migration sample ({len(reference)} rows)")
    tags = {"backend": loaded.backend, _SOURCE_FORMAT_TAG: source.source_format, MIGRATED_FROM_TAG: source.uri}
    if twin:
        ref = register._log_sklearn(loaded.model, register._Payload(run_id=run_id, sample=reference, names=names,
                                                                     metrics={}, tags=tags, profile=profile))
        check = flavor.load_model(ref.uri)
    else:
        def extras(local: str) -> None:
            stable.save_reference(local, reference)
            save_profile(local, profile)

        example = pd.DataFrame(sample[:5], columns=names)
        ref = flavor.log_model(loaded.model, run_id, register.NATIVE_PATH, tags=tags, check_sample=sample,
                               extra_files=extras, backend=loaded.backend, signature=flavor.output_signature(),
                               input_example=example, feature_names=names)
        check = flavor.load_model(ref.uri)
    agree = check_equivalent(loaded.model, check, sample)
    if agree < 1.0:
        raise ModelError(f"{source.name} v{source.version} migrated predicts other labels on {1 - agree:.2%} of "
                         "the check rows; nothing was registered", "report this as a bug")
    return ref


def _copied_tags(mv: Any) -> dict[str, str]:
    return {k: v for k, v in (mv.tags or {}).items() if k not in _NOT_COPIED and not k.startswith("migration.")}


def _record(source: Migration, trust: str, run_id: str) -> dict[str, str]:
    from toolkit._version import __version__

    return {MIGRATED_FROM_TAG: source.uri, _TRUST_TAG: trust, _TOOLKIT_TAG: __version__,
            _SOURCE_FORMAT_TAG: source.source_format, _RUN_TAG: run_id,
            _AT_TAG: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _register_new(mv: Any, ref: integrity.LoggedRef, run_id: str, tags: dict[str, str]) -> str:
    from toolkit.registry import register

    ver = register._register(ref, mv.name, run_id, {**_copied_tags(mv), **tags})
    c = client()
    with contextlib.suppress(Exception):
        c.update_model_version(mv.name, ver, description=f"{mv.name} v{mv.version} migrated to the signed format "
                                                         f"by kmeans-lifecycle ({tags[_SOURCE_FORMAT_TAG]}, trust "
                                                         f"{tags[_TRUST_TAG]})")
    return ver


def _move_aliases(mv: Any, new_version: str) -> list[str]:
    c = client()
    aliases = sorted(c.get_model_version(mv.name, mv.version).aliases or [])
    for alias in aliases:
        c.set_registered_model_alias(mv.name, alias, new_version)
    return aliases


def _migrated_to(mv: Any) -> str | None:
    """The version that already replaced ``mv`` (its ``migration.migrated_to`` tag, if that
    version still exists)."""
    target = (mv.tags or {}).get(MIGRATED_TO_TAG)
    if not target:
        return None
    with contextlib.suppress(Exception):
        client().get_model_version(mv.name, target)
        return str(target)
    return None


def _versions(name: str, version: str | None) -> list[Any]:
    if version is None:
        return integrity.registered_versions(name)
    integrity.registered_versions(name)  # the model's own one-line error first
    try:
        return [client().get_model_version(name, version)]
    except Exception:
        raise ModelError(f"version {version!r} of registered model {name!r} does not exist",
                         f"leave the version out to migrate every version of {name!r}") from None



def _pair(mv: Any) -> tuple[Any, Any | None]:
    """(native version, twin version or None) of the pair ``mv`` belongs to."""
    c = client()
    other = integrity.twin_of(mv)
    if other is None:
        return mv, None
    with contextlib.suppress(Exception):
        partner = c.get_model_version(*other)
        return (partner, mv) if (mv.tags or {}).get("kind") == "sklearn_twin" else (mv, partner)
    return mv, None


def migrate(name: str, trust: str, *, version: str | None = None, run_id: str,
            say: Callable[[str], None] | None = None) -> list[Migrated]:
    """Migrate every version of ``name`` (or only ``version``) that today's loader refuses.

    Args:
        name: a registered model (native or twin: pairs are migrated together).
        trust: what the caller accepts (:func:`parse_trust`): ``unsigned`` or ``pickle``.
        version: one version only.
        run_id: the run the new LoggedModels belong to (the migration's record).
        say: called with one line per version.

    Returns:
        One :class:`Migrated` per version looked at (the twins of a pair included).

    Raises:
        ModelError: a version needs more trust than ``trust`` (nothing of its pair is written),
            or cannot be read or rebuilt.
    """
    session = _Session(parse_trust(trust), run_id, say or (lambda _line: None))
    # Every version is classified before anything is written: too little trust for any of them
    # stops the command with the store as it was.
    for pair in session.plan(_versions(name, version)):
        session.apply(pair)
    return session.out


@dataclass
class _PairPlan:
    """A native version, its twin (or None) and each member's :class:`Migration` (None: skipped)."""

    native: Any
    twin: Any | None
    plans: list[tuple[Any, Migration | None]]


@dataclass
class _Session:
    """One :func:`migrate` call: the trust given, the run recording it, its lines and results."""

    trust: str
    run_id: str
    tell: Callable[[str], None]
    out: list[Migrated] = field(default_factory=list)

    def plan(self, versions: list[Any]) -> list[_PairPlan]:
        """The pairs of ``versions`` with something to migrate (each pair once).

        Raises:
            ModelError: a version needs more trust than given.
        """
        done: set[tuple[str, str]] = set()
        work: list[_PairPlan] = []
        for mv in versions:
            native, twin = _pair(mv)
            members = [m for m in (native, twin) if m is not None]
            if any((m.name, str(m.version)) in done for m in members):
                continue
            done.update((m.name, str(m.version)) for m in members)
            plans = [(m, self._classify(m)) for m in members]
            if any(p is not None for _, p in plans):
                work.append(_PairPlan(native, twin, plans))
        return work

    def _classify(self, m: Any) -> Migration | None:
        """How ``m`` is migrated; None (said and recorded) when it is skipped."""
        target = _migrated_to(m)
        if target is not None:
            self.tell(f"{m.name} v{m.version}: skipped, already migrated to v{target}")
            self.out.append(Migrated(m.name, str(m.version), skipped=f"already migrated to v{target}"))
            return None
        plan = classify(m)
        if plan.needs is None:
            self.tell(f"{m.name} v{m.version}: skipped, it is signed and loads as it is")
            self.out.append(Migrated(m.name, str(m.version), skipped="signed; loads as it is", source_format=CURRENT))
            return None
        if not _covers(self.trust, plan.needs):
            from toolkit.errors import option_hint

            raise ModelError(f"{m.name} v{m.version} is a {plan.source_format} model whose load needs trust "
                             f"{plan.needs!r}, more than the {self.trust!r} given; nothing was migrated",
                             f"pass {option_hint('trust', plan.needs)} if you trust this store's "
                             f"{'pickles (unpickling runs code)' if plan.needs == PICKLE else 'unsigned files'}")
        return plan

    def apply(self, pair: _PairPlan) -> None:
        """Register the new versions of ``pair``, link them, move the aliases, tag the old ones."""
        c = client()
        new: dict[str, str] = {}  # registered name -> new version
        for m, plan in pair.plans:
            if plan is None:
                continue
            is_twin = (m.tags or {}).get("kind") == "sklearn_twin" or m is pair.twin
            loaded = _load_run_artifacts(m) if plan.source_format == RUN_ARTIFACTS else _load_logged(m)
            ref = _relog(loaded, is_twin, self.run_id, plan)
            new[m.name] = _register_new(m, ref, self.run_id, _record(plan, self.trust, self.run_id))
        if pair.twin is not None:
            _relink(pair.native, pair.twin, new)
        for m, plan in pair.plans:
            if plan is None:
                continue
            ver = new[m.name]
            aliases = _move_aliases(m, ver)
            c.set_model_version_tag(m.name, m.version, MIGRATED_TO_TAG, ver)
            self.out.append(Migrated(m.name, str(m.version), ver, aliases=aliases, source_format=plan.source_format))
            moved = f"; aliases {', '.join(aliases)} moved to it" if aliases else ""
            self.tell(f"{m.name} v{m.version} ({plan.source_format}) -> v{ver}, signed, trust {self.trust}{moved}")


def _relink(native: Any, twin: Any, new: dict[str, str]) -> None:
    """Each member of the pair names the other's current version (``new``: name -> new version)."""
    c = client()
    n_ver, t_ver = new.get(native.name, str(native.version)), new.get(twin.name, str(twin.version))
    c.set_model_version_tag(native.name, n_ver, "twin.name", twin.name)
    c.set_model_version_tag(native.name, n_ver, "twin.version", t_ver)
    c.set_model_version_tag(twin.name, t_ver, "twin.name", native.name)
    c.set_model_version_tag(twin.name, t_ver, "twin.version", n_ver)
