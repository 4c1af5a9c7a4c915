"""Integrity of logged models: a signature over every file, verified before any read.

Every model the toolkit logs is an MLflow 3 ``LoggedModel`` of its own (own ``model_id``, own
storage), linked to the run that made it.  When it is logged, the folder is signed
(:mod:`toolkit.registry.signing`: ``model.sig`` lists every file's sha256 and the format, class
and centres' shape loaders decide on), and the sha256 of every file is also recorded as a JSON
manifest ``{relative_path: sha256}`` in the ``integrity.sha256`` tag of the LoggedModel (and
copied to each registered version) -- for people: someone who can write the store can rewrite
tags, so loads trust the signature.  Loading downloads the files into a private temporary
folder, verifies ``model.sig`` with the trusted keys and compares the files with the signed
list before a single model file is read: an untrusted signature, or a changed, missing or extra
file, is refused with a one-line :class:`~toolkit.errors.ModelError` naming it.  Unsigned models
(logged by the previous release) load only with ``KMEANS_LIFECYCLE_ALLOW_UNSIGNED=1``, checked
against the store's manifest as before.

URIs understood: ``models:/name@alias``, ``models:/name/version`` (or ``/latest``),
``models:/<model_id>``, ``runs:/<run_id>/<logged model name>`` and a local copy of a logged
model (matched to its LoggedModel by the ``model_id`` of its MLmodel file, then checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import ModelError, first_line
from toolkit.registry import signing

__all__ = [
    "CLASS_TAG",
    "FORMAT_TAG",
    "INTEGRITY_TAGS",
    "MANIFEST_TAG",
    "MODEL_ID_TAG",
    "SHAPE_TAG",
    "SIGNER_TAG",
    "LoggedRef",
    "VerifiedModel",
    "check_files",
    "fetch_verified",
    "get_version",
    "log_model_dir",
    "manifest_of",
    "model_id_of_version",
    "registered_versions",
    "sha256_file",
    "twin_of",
    "verify",
]

MANIFEST_TAG = "integrity.sha256"
FORMAT_TAG = "integrity.format"
CLASS_TAG = "integrity.model_class"
SHAPE_TAG = "integrity.centers_shape"
#: Version tag naming the LoggedModel a registered version was made from.
MODEL_ID_TAG = "integrity.model_id"
INTEGRITY_TAGS = (MANIFEST_TAG, FORMAT_TAG, CLASS_TAG, SHAPE_TAG)
#: LoggedModel (and version) tag with the signing key's hint (hex sha256 of its public PEM):
#: a convenience for people; loads trust the signature, not this tag.
SIGNER_TAG = "integrity.signer"
#: The signed statement's names of the integrity tags' facts.
_SIGNED_FACTS = {FORMAT_TAG: "format", CLASS_TAG: "model_class", SHAPE_TAG: "centers_shape"}

# MLflow's own ``download_artifacts("models:/name/version")`` (used by mlflow.pyfunc.load_model
# and ``mlflow models serve``) writes this file into the model's storage.  The toolkit never
# reads it, so it is neither downloaded into a verified copy nor counted as an extra file.
_MLFLOW_WRITTEN = frozenset({"registered_model_meta"})
# LoggedModel tag values above this are truncated silently by MLflow (MAX_TAG_VAL_LENGTH, 8000).
_MAX_TAG_CHARS = 7_500
_REREGISTER = ("re-register the model with this kmeans-lifecycle (rerun the search, or "
               "`mlflow run . -e train -P register=true`) and promote the new version")


def _migrate_fix(name: str | None, trust: str = "unsigned") -> str:
    """The fix for a model an earlier release wrote: the ``migrate`` entry point rewrites it as a
    new, signed version (toolkit/registry/migrate.py), under the trust the user states."""
    return (f"migrate it to a new signed version: `mlflow run . -e migrate -P model_name={name or 'NAME'} "
            f"-P trust={trust}` (trust=pickle also reads pickled models; it runs their code), or "
            + _REREGISTER)


def sha256_file(path: str) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: str) -> dict[str, str]:
    """``{relative posix path: absolute path}`` of every file under ``root`` (links included)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = full
    return out


def manifest_of(local_dir: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of the model folder ``local_dir``."""
    return {rel: sha256_file(full) for rel, full in sorted(_walk(local_dir).items())}


def _client() -> Any:
    from toolkit.tracking.runs import client

    return client()


# -- logging ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRef:
    """A LoggedModel the toolkit logged: its id, storage and the integrity tags recorded."""

    model_id: str
    artifact_location: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """``models:/<model_id>``: the source MLflow 3 itself registers versions from."""
        return f"models:/{self.model_id}"

    @property
    def manifest(self) -> dict[str, str]:
        return json.loads(self.tags[MANIFEST_TAG])


def _str_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (params or {}).items() if v is not None}


def log_model_dir(
    run_id: str,
    name: str,
    save: Callable[[str, Any], Mapping[str, str]],
    *,
    model_type: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> LoggedRef:
    """Log a model as a new LoggedModel of ``run_id``, signed, and record its files' checksums.

    The folder is signed (:mod:`toolkit.registry.signing`: ``model.sig`` over every file, the
    format, class, centres' shape and model id) before it is uploaded; the tags repeat the
    checksums and facts for people and for models loaded with ``KMEANS_LIFECYCLE_ALLOW_UNSIGNED``.

    Args:
        run_id: the run that produced the model (``source_run_id``; the model is also added to
            the run's outputs, so it shows under the run's "Logged models").
        name: the LoggedModel's name (``native_model`` / ``sklearn_model``).
        save: ``save(local_dir, mlflow_model)`` writes the MLflow model folder ``local_dir``
            (``mlflow_model`` is the :class:`mlflow.models.Model` carrying the new ``model_id``)
            and returns ``{FORMAT_TAG, CLASS_TAG, SHAPE_TAG}``.
        model_type: LoggedModel type (searchable in the Models tab).
        params: LoggedModel parameters (hyperparameters); values become strings.
        tags: more LoggedModel tags.
        metrics: metrics attached to the model (also logged on the run, linked by model_id).

    Returns:
        The READY model's reference.  On any failure the LoggedModel is finalized FAILED (its
        storage is never reused) and the error is raised.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    c = _client()
    # The key first: a misconfigured key fails before anything is written to the store.
    key, _ = signing.signing_key()
    experiment_id = c.get_run(run_id).info.experiment_id
    lm = c.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                               params=_str_params(params), model_type=model_type, tags=dict(tags or {}))
    try:
        info, manifest, hint = _upload_signed(c, lm, run_id, save, key)
        recorded = {MANIFEST_TAG: json.dumps(manifest, sort_keys=True, separators=(",", ":")), **info,
                    SIGNER_TAG: hint}
        if len(recorded[MANIFEST_TAG]) > _MAX_TAG_CHARS:
            raise ModelError(f"the checksum manifest of {name} has {len(manifest)} files, too many for a tag",
                             "log fewer files with the model")
        c.set_logged_model_tags(lm.model_id, recorded)
        c.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step=0)])
        if metrics:
            _log_model_metrics(c, run_id, lm.model_id, metrics)
        c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    except BaseException:
        with contextlib.suppress(Exception):
            c.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        raise
    return LoggedRef(lm.model_id, lm.artifact_location, recorded)


def _upload_signed(c: Any, lm: Any, run_id: str, save: Callable[[str, Any], Mapping[str, str]],
                   key: Any) -> tuple[dict[str, str], dict[str, str], str]:
    """Save the model folder with ``save``, sign it and upload it as LoggedModel ``lm``'s files.

    Returns:
        (the integrity tags ``save`` returned, the files' checksums with ``model.sig``, the signer hint).
    """
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="kmeans-log-") as tmp:
        local = os.path.join(tmp, "model")
        # As Model.log does in MLflow 3: the MLmodel names the LoggedModel it belongs to.
        mlmodel = Model(artifact_path=lm.artifact_location, run_id=run_id,
                        model_uuid=lm.model_id, model_id=lm.model_id)
        info = dict(save(local, mlmodel))
        facts = {name: info[tag] for tag, name in _SIGNED_FACTS.items()}
        hint = signing.sign_dir(local, manifest_of(local), {**facts, "model_id": lm.model_id}, key)
        manifest = manifest_of(local)  # model.sig included
        c.log_model_artifacts(lm.model_id, local)
    return info, manifest, hint


def _log_model_metrics(c: Any, run_id: str, model_id: str, metrics: Mapping[str, float]) -> None:
    """``metrics`` on the run, linked to the LoggedModel ``model_id`` (one batch)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(str(k), float(v), now, 0, run_id=run_id, model_id=model_id)
                                 for k, v in metrics.items()])


# -- locating ---------------------------------------------------------------------------------
@dataclass
class _Located:
    model_id: str
    label: str  # how messages name the model
    name: str | None = None
    version: str | None = None
    version_tags: dict[str, str] | None = None
    local_dir: str | None = None  # a local copy to check instead of the LoggedModel's storage


def _parse_model_id(source: str | None) -> str | None:
    """``m-...`` from ``models:/m-...`` (how MLflow 3 registers LoggedModels), else None."""
    if source and source.startswith("models:/"):
        body = source[len("models:/"):].strip("/")
        if body.startswith("m-") and "/" not in body and "@" not in body:
            return body
    return None


def model_id_of_version(mv: Any) -> str:
    """The LoggedModel behind registered version ``mv``.

    Raises:
        ModelError: the version was registered from run artifacts by an older kmeans-lifecycle
            (no recorded checksums).
    """
    model_id = _parse_model_id(getattr(mv, "source", None)) or getattr(mv, "model_id", None)
    if not model_id:
        raise ModelError(
            f"{mv.name} v{mv.version} was registered by an older kmeans-lifecycle from run artifacts "
            f"({mv.source}) with no recorded checksums, so it cannot be verified and is not loaded",
            _migrate_fix(mv.name, "pickle" if (mv.tags or {}).get("kind") != "sklearn_twin" else "unsigned"),
        )
    return str(model_id)


def twin_of(mv: Any) -> tuple[str, str] | None:
    """(name, version) of the registered twin linked to version ``mv`` by its ``twin.*`` tags, or None."""
    tags = mv.tags or {}
    if tags.get("twin.name") and tags.get("twin.version"):
        return tags["twin.name"], tags["twin.version"]
    return None


def registered_versions(name: str, missing_fix: str = "check the name (mlflow ui, Models tab)") -> list[Any]:
    """Every version of registered model ``name`` (all pages), oldest first.

    Raises:
        ModelError: no registered model of that name (``missing_fix`` is the fix it names).
    """
    c = _client()
    try:
        c.get_registered_model(name)
    except Exception:
        raise ModelError(f"registered model {name!r} does not exist", missing_fix) from None
    quoted = name.replace("\\", "\\\\").replace("'", "\\'")
    versions, token = [], None
    while True:
        page = c.search_model_versions(f"name='{quoted}'", page_token=token)
        versions += [v for v in page if v.name == name]  # the filter is a pattern for some stores
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted({int(v.version): v for v in versions}.values(), key=lambda v: int(v.version))


def get_version(name: str, alias: str) -> Any:
    """The model version behind ``name@alias``, with a one-line error when it does not exist.

    Here, below :mod:`toolkit.registry.promote` (which re-exports it), so that resolving a URI
    never imports the promotion code: that import closed a cycle promote -> flavor -> integrity.
    """
    c = _client()
    try:
        c.get_registered_model(name)
    except Exception:
        raise ModelError(f"registered model {name!r} does not exist",
                         "run a search first or check the name (mlflow ui, Models tab)") from None
    try:
        return c.get_model_version_by_alias(name, alias)
    except Exception:
        # "challenger" is promote.CHALLENGER, the alias every new version gets (not imported:
        # this module sits below promote).
        raise ModelError(f"alias {alias!r} is not set on registered model {name!r}",
                         "register a new version (it becomes challenger) or set the alias") from None


def _version(uri: str) -> Any:
    """The ModelVersion behind ``models:/name@alias`` or ``models:/name/version|latest``."""
    body = uri[len("models:/"):]
    c = _client()
    if "@" in body:
        name, alias = body.split("@", 1)
        return get_version(name, alias)
    name, _, ver = body.partition("/")
    try:
        c.get_registered_model(name)
    except Exception:
        raise ModelError(f"registered model {name!r} does not exist",
                         "check the name (mlflow ui, Models tab) or register one with a search") from None
    if ver.lower() == "latest" or not ver:
        versions = c.search_model_versions(f"name='{name}'")
        if not versions:
            raise ModelError(f"registered model {name!r} has no versions", "register one with a search")
        return max(versions, key=lambda v: int(v.version))
    try:
        return c.get_model_version(name, ver)
    except Exception:
        raise ModelError(f"version {ver!r} of registered model {name!r} does not exist",
                         f"use an existing version or an alias, e.g. models:/{name}@champion") from None


def _status(lm: Any) -> str:
    status = lm.status
    return str(getattr(status, "name", None) or status).rpartition(".")[2]


def _run_model_id(uri: str) -> str:
    """The newest READY LoggedModel named ``<path>`` of run ``<run>`` for ``runs:/<run>/<path>``."""
    run_id, _, path = uri[len("runs:/"):].partition("/")
    path = path.strip("/")
    c = _client()
    try:
        run = c.get_run(run_id)
    except Exception as exc:
        raise ModelError(f"cannot load model {uri!r}: {first_line(exc, 300)}",
                         "check the URI (models:/name@alias, models:/name/version, runs:/id/path)") from None
    models = [m for m in c.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{path}'",
    ) if _status(m) == "READY"]
    if models:
        # A resumed search logs again on the same run: the newest model is the run's current one.
        return max(models, key=lambda m: m.creation_timestamp).model_id
    old_layout = False
    with contextlib.suppress(Exception):
        old_layout = bool(c.list_artifacts(run_id, path))
    if old_layout:
        raise ModelError(
            f"{uri!r} is a model saved as run artifacts by an older kmeans-lifecycle, with no recorded "
            "checksums, so it cannot be verified and is not loaded", _REREGISTER)
    raise ModelError(f"cannot load model {uri!r}: run {run_id} has no logged model named {path!r}",
                     "check the URI (models:/name@alias, models:/name/version, runs:/id/path)")


def _local_model_id(path: str) -> str:
    """The ``model_id`` a local model folder's MLmodel names (checked against its manifest later)."""
    import yaml

    mlmodel = os.path.join(path, "MLmodel")
    if not os.path.isfile(mlmodel):
        raise ModelError(f"{path!r} is not an MLflow model (no MLmodel file)", "point at a logged model")
    try:
        with open(mlmodel) as fh:
            model_id = (yaml.safe_load(fh) or {}).get("model_id")
    except Exception:
        model_id = None
    if not isinstance(model_id, str) or not model_id:
        raise ModelError(
            f"the model folder {path!r} names no logged model (no model_id in its MLmodel), so its files "
            "cannot be checked and it is not loaded",
            "load it by its registry URI (models:/name@alias) or " + _REREGISTER)
    return model_id


def _locate(uri: str) -> _Located:
    if os.path.isdir(uri):
        return _Located(_local_model_id(uri), f"local model {uri!r}", local_dir=uri)
    model_id = _parse_model_id(uri)
    if model_id:
        return _Located(model_id, f"logged model {model_id}")
    if uri.startswith("models:/"):
        mv = _version(uri)
        return _Located(model_id_of_version(mv), f"registered model {mv.name} v{mv.version}", mv.name,
                        str(mv.version),
                        dict(mv.tags or {}))
    if uri.startswith("runs:/"):
        model_id = _run_model_id(uri)
        return _Located(model_id, f"{uri} (logged model {model_id})")
    raise ModelError(f"cannot load model {uri!r}: not a models:/ or runs:/ URI or a local model folder",
                     "check the URI (models:/name@alias, models:/name/version, runs:/id/path)")


def _expected(loc: _Located) -> tuple[Any, dict[str, str], dict[str, str]]:
    """(LoggedModel, its integrity tags, its manifest), cross-checked with the version's tags."""
    c = _client()
    try:
        lm = c.get_logged_model(loc.model_id)
    except Exception:
        raise ModelError(f"{loc.label}: logged model {loc.model_id} does not exist",
                         "check the URI, or " + _REREGISTER) from None
    if _status(lm) != "READY":
        raise ModelError(f"{loc.label}: logged model {loc.model_id} is {_status(lm)}, not READY "
                         "(its logging did not finish)", _REREGISTER)
    tags = {k: lm.tags[k] for k in INTEGRITY_TAGS if k in (lm.tags or {})}
    if MANIFEST_TAG not in tags:
        raise ModelError(f"{loc.label}: logged model {loc.model_id} has no recorded checksums "
                         f"({MANIFEST_TAG} tag), so it cannot be verified and is not loaded", _REREGISTER)
    if loc.version_tags is not None:
        # The registry holds its own copy: both must agree, or one of them was edited.
        for key, value in tags.items():
            if loc.version_tags.get(key) != value:
                raise ModelError(f"{loc.label}: its {key} tag differs from logged model {loc.model_id}'s; "
                                 "the registry's record was changed, the model is not loaded", _REREGISTER)
    try:
        manifest = json.loads(tags[MANIFEST_TAG])
        if not isinstance(manifest, dict) or not manifest:
            raise ValueError("empty")
    except ValueError:
        raise ModelError(f"{loc.label}: its {MANIFEST_TAG} tag is not a checksum manifest", _REREGISTER) from None
    for rel in manifest:
        parts = str(rel).split("/")
        if rel.startswith("/") or ".." in parts or "" in parts or "\\" in rel:
            raise ModelError(f"{loc.label}: its manifest names an unsafe path {rel!r}", _REREGISTER)
    return lm, tags, manifest


# -- checking ---------------------------------------------------------------------------------
def check_files(local_dir: str, manifest: Mapping[str, str], label: str) -> None:
    """Refuse unless the files under ``local_dir`` are exactly those of ``manifest``, byte for byte.

    Raises:
        ModelError: one line naming the first changed, missing or extra file.
    """
    found = {rel: full for rel, full in _walk(local_dir).items() if rel not in _MLFLOW_WRITTEN}
    fix = ("treat its storage as tampered with: restore the file from a trusted copy, or " + _REREGISTER)
    for rel in sorted(set(manifest) | set(found)):
        if rel not in found:
            raise ModelError(f"{label} failed its integrity check: file {rel} is missing", fix)
        if rel not in manifest:
            raise ModelError(f"{label} failed its integrity check: unexpected file {rel} "
                             "(not among the files recorded when it was logged)", fix)
        if os.path.islink(found[rel]) or sha256_file(found[rel]) != manifest[rel]:
            raise ModelError(f"{label} failed its integrity check: file {rel} does not match the sha256 "
                             "recorded when it was logged", fix)


@dataclass
class VerifiedModel:
    """A private copy of a logged model whose signature verified with a trusted key and whose
    files matched the signed manifest (or, for an unsigned model the user chose to trust, the
    store's).

    ``integrity`` holds the facts loaders decide on (``integrity.format``, ``.model_class``,
    ``.centers_shape``, ``.sha256``), taken from the signed statement; ``signature`` is that
    statement (None only for an unsigned model loaded with ``KMEANS_LIFECYCLE_ALLOW_UNSIGNED``).
    """

    model_id: str
    local_path: str
    manifest: dict[str, str]
    integrity: dict[str, str]
    label: str
    name: str | None = None
    version: str | None = None
    version_tags: dict[str, str] | None = None
    _tmp: str | None = field(default=None, repr=False)
    signature: signing.SignedModel | None = None

    @property
    def signed(self) -> bool:
        """Whether the files were checked against a trusted signature."""
        return self.signature is not None

    def recheck(self) -> None:
        """Check the copy again (right before its files are read)."""
        check_files(self.local_path, self.manifest, self.label)

    def cleanup(self) -> None:
        """Delete the private copy."""
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> VerifiedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _copy_in(loc: _Located, lm: Any, tmp: str) -> str:
    dst = os.path.join(tmp, "model")
    if loc.local_dir is not None:
        # Copied (links followed) so that the checked bytes are the bytes read afterwards.
        try:
            shutil.copytree(loc.local_dir, dst)
        except (OSError, shutil.Error) as exc:
            raise ModelError(f"cannot copy {loc.label}: {first_line(exc, 300)}",
                             "check the folder's files and permissions") from None
        got = dst
    else:
        got = _download(loc, lm, dst)
    for rel in _MLFLOW_WRITTEN:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(got, rel))
    return got


def _no_progress_bar() -> Any:
    # MLflow draws a progress bar on stderr for every copy; entry points print one error line.
    # Off for this thread's context only: MLflow's own switch is process-wide (os.environ).
    from toolkit._compat import mlflow_artifact_progress_bar_off

    return mlflow_artifact_progress_bar_off()


def _download(loc: _Located, lm: Any, dst: str) -> str:
    from mlflow.artifacts import download_artifacts

    try:
        with _no_progress_bar():
            return download_artifacts(artifact_uri=lm.artifact_location, dst_path=dst)
    except Exception as exc:
        raise ModelError(f"cannot download {loc.label}: {first_line(exc, 300)}",
                         "check the tracking server and the model's artifact store") from None


def _check_signed(local: str, loc: _Located, tags: Mapping[str, str],
                  signed: signing.SignedModel) -> tuple[dict[str, str], dict[str, str]]:
    """(manifest, integrity facts) of a copy whose signature verified: its files must be exactly
    the signed ones, the signature must be this model's, and the store's tags must not
    contradict it (a contradiction means the record was edited)."""
    sig_file = os.path.join(local, signing.SIGNATURE_FILE)
    manifest = {**signed.manifest, signing.SIGNATURE_FILE: sha256_file(sig_file)}
    check_files(local, manifest, loc.label)
    if signed.info["model_id"] != loc.model_id:
        raise ModelError(f"{loc.label}: its files are signed as logged model {signed.info['model_id']}, not "
                         f"{loc.model_id}; a whole model was swapped in", "treat its storage as tampered with, or "
                         + _REREGISTER)
    facts = {tag: signed.info[name] for tag, name in _SIGNED_FACTS.items()}
    facts[MANIFEST_TAG] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    for tag, value in facts.items():
        recorded = tags.get(tag)
        same = json.loads(recorded) == manifest if tag == MANIFEST_TAG and recorded else recorded == value
        if not same:
            raise ModelError(f"{loc.label}: its {tag} tag differs from what its signature says; the store's "
                             "record was changed, the model is not loaded", _REREGISTER)
    return manifest, facts


def _check_unsigned(local: str, loc: _Located, tags: Mapping[str, str], manifest: Mapping[str, str]) -> None:
    """An unsigned model: refused unless the user chose to trust the store's checksums."""
    if not signing.allow_unsigned():
        raise ModelError(
            f"{loc.label} is not signed (logged by an older kmeans-lifecycle, or its {signing.SIGNATURE_FILE} "
            "was removed), so it is not loaded",
            f"{_migrate_fix(loc.name)}; or, to trust the tracking store's checksums for unsigned models, set "
            f"{signing.ALLOW_UNSIGNED_ENV}=1")
    check_files(local, manifest, loc.label)
    from toolkit.console import say

    say(f"warning: {loc.label} is unsigned; loaded on the tracking store's checksums only "
        f"({signing.ALLOW_UNSIGNED_ENV}=1), which anyone who can write the store could have changed")


def fetch_verified(uri: str) -> VerifiedModel:
    """Download the model at ``uri`` into a private folder, verify its signature, check its files.

    The signature (``model.sig``) is verified with the trusted keys
    (:func:`toolkit.registry.signing.trusted_keys`) before any other file is read; then every
    file must be exactly one the signature lists.  Call :meth:`VerifiedModel.cleanup` (or use
    it as a context manager) when done.

    Raises:
        ModelError: the URI resolves to nothing, to a model logged without checksums, the
            signature is missing (unless ``KMEANS_LIFECYCLE_ALLOW_UNSIGNED=1``), untrusted or
            invalid, or the files differ from the signed ones.
        ConfigError: the trusted keys are misconfigured.
    """
    loc = _locate(uri)
    lm, tags, manifest = _expected(loc)
    tmp = tempfile.mkdtemp(prefix="kmeans-verified-")
    try:
        local = _copy_in(loc, lm, tmp)
        signed = signing.read_signature(local, loc.label)
        if signed is not None:
            manifest, tags = _check_signed(local, loc, tags, signed)
        else:
            _check_unsigned(local, loc, tags, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VerifiedModel(loc.model_id, local, dict(manifest), dict(tags), loc.label, loc.name, loc.version,
                         loc.version_tags, tmp, signed)


def verify(uri: str) -> None:
    """Verify the signature and files of the model at ``uri``, loading none of them."""
    fetch_verified(uri).cleanup()
