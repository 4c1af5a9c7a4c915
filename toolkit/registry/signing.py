"""Signed models: a signature over each model folder's files, made when the model is logged and
checked before any of its files is read.

Checksums held by the tracking store protect against accidents, not against someone who can
write both the artifact store and the store's tags: such a person rewrites the manifest with
the files.  A signature made with a private key that never reaches the store closes that gap.

Layout: the OpenSSF model-signing format (the ``model-signing`` package, v1.x), so the
signature of a logged model can also be checked with ``model_signing`` itself.  Each model
folder holds ``model.sig``, a Sigstore bundle (JSON, media type
``application/vnd.dev.sigstore.bundle.v0.3+json``) whose DSSE envelope carries an in-toto
Statement v1 with predicate type ``https://model_signing/signature/v1.0``.  The predicate lists
every file of the folder (``resources``: name, ``sha256``, digest; ``MLmodel`` included,
``model.sig`` itself excluded) and, under ``kmeans_lifecycle`` (a field model-signing's own
verifier ignores, as its v1.0 predicate says of unknown fields), what a loader needs to decide
safely: the serialization format (``kmeans-npy`` / ``skops`` / ``pickle``), the model class, the
centres' shape, the LoggedModel's id, a format version and the toolkit's version.  Loaders take
these from the signed statement only, never from tags or the MLmodel file.

Keys (ECDSA P-256 -- what model-signing's key verifier checks -- or Ed25519; PEM files):

* ``KMEANS_LIFECYCLE_SIGNING_KEY``: the private key that signs (a PEM file path).
* ``KMEANS_LIFECYCLE_TRUSTED_KEYS``: the public keys a load accepts (PEM files or folders of
  them, separated by ``os.pathsep``).
* Neither set (the embedded default): a key pair made for the tracking store on first use, in
  ``${XDG_DATA_HOME:-~/.local/share}/kmeans-lifecycle/keys/<hash of the store URI>/`` -- a
  per-user folder, never inside the store.  Loading then trusts that key (or the public half of
  ``KMEANS_LIFECYCLE_SIGNING_KEY``) and prints one warning line saying so.

``python -m mlproject.keygen --out DIR`` writes a key pair.  The private key is only ever read
from its file: it is never logged, tagged, uploaded or printed.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, ModelError
from toolkit.names import SIGNING_ALGORITHMS

__all__ = [
    "ALGORITHMS",
    "ALLOW_PICKLE_ENV",
    "ALLOW_UNSIGNED_ENV",
    "FORMAT_VERSION",
    "PREDICATE_TYPE",
    "SIGNATURE_FILE",
    "SIGNING_KEY_ENV",
    "TRUSTED_KEYS_ENV",
    "SignedModel",
    "TrustedKey",
    "allow_pickle",
    "allow_unsigned",
    "generate_key",
    "key_hint",
    "read_signature",
    "sign_dir",
    "signing_key",
    "store_key_dir",
    "trusted_keys",
    "write_key_pair",
]

#: The signature file of a model folder (the name model-signing uses by default).
SIGNATURE_FILE = "model.sig"
SIGNING_KEY_ENV = "KMEANS_LIFECYCLE_SIGNING_KEY"
TRUSTED_KEYS_ENV = "KMEANS_LIFECYCLE_TRUSTED_KEYS"
ALLOW_PICKLE_ENV = "KMEANS_LIFECYCLE_ALLOW_PICKLE"
ALLOW_UNSIGNED_ENV = "KMEANS_LIFECYCLE_ALLOW_UNSIGNED"
#: Version of the ``kmeans_lifecycle`` section of the predicate.
FORMAT_VERSION = 1
#: Key algorithms :func:`generate_key` makes.
ALGORITHMS = SIGNING_ALGORITHMS

PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: Files the signature does not cover: itself, and what MLflow's own download writes into a
#: registered model's storage (``mlflow.pyfunc.load_model("models:/...")``).
_IGNORED = (SIGNATURE_FILE, "registered_model_meta")
#: The section of the predicate with what loaders decide on; model-signing ignores it.
_SECTION = "kmeans_lifecycle"
#: Keys of that section every signature must have.
_REQUIRED = ("format", "model_class", "centers_shape", "model_id", "format_version", "toolkit_version")
_MAX_SIGNATURE_BYTES = 8 << 20
_PRIVATE_NAME = "signing-key.pem"
_PUBLIC_NAME = "signing-key.pub.pem"
_KEY_FIX = (f"set {SIGNING_KEY_ENV} to a PEM private key file (ECDSA P-256 or Ed25519), e.g. one made by "
            "`python -m mlproject.keygen --out DIR`")
_TRUST_FIX = (f"add the signer's public key to {TRUSTED_KEYS_ENV} (PEM files or folders, separated by "
              f"'{os.pathsep}') if you trust it, or re-register the model with a trusted key")
_warned_default_trust = False


# -- keys ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustedKey:
    """A public key a load accepts, and where it came from (for messages)."""

    key: Any
    source: str

    @property
    def hint(self) -> str:
        return key_hint(self.key)


def _public_pem(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(public_key: Any) -> str:
    """Hex sha256 of the key's PEM (SubjectPublicKeyInfo): the bundle's ``publicKey.hint``, as
    model-signing computes it."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


def _check_key_type(key: Any, where: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ed25519.Ed25519PublicKey):
        return
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in ("secp256r1", "secp384r1",
                                                                               "secp521r1"):
        return
    raise ConfigError(f"{where} is a {type(public).__name__.lstrip('_')} key, not ECDSA (P-256/384/521) or Ed25519",
                      "make a key with `python -m mlproject.keygen --out DIR`")


def generate_key(algorithm: str = "ecdsa-p256") -> Any:
    """A new private key: ``ecdsa-p256`` (default; model-signing's key verifier checks it) or
    ``ed25519``."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"unknown key algorithm {algorithm!r}", f"use one of {', '.join(ALGORITHMS)}")


def _private_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, key: Any) -> None:
    """Write ``key`` to ``path`` (mode 0600 from its creation); fails if ``path`` exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_private_pem(key))


def write_key_pair(out: str | os.PathLike[str], algorithm: str = "ecdsa-p256",
                   overwrite: bool = False) -> tuple[Path, Path]:
    """Make a key pair in folder ``out``: ``signing-key.pem`` (private, mode 0600) and
    ``signing-key.pub.pem`` (public).

    Raises:
        ConfigError: unknown algorithm, or the files exist and ``overwrite`` is false.
    """
    key = generate_key(algorithm)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / _PRIVATE_NAME, folder / _PUBLIC_NAME
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing and not overwrite:
        from toolkit.errors import option_hint

        raise ConfigError(f"{', '.join(existing)} already exist(s)",
                          f"choose another folder, or pass {option_hint('overwrite', 'true')} to replace the key pair")
    for p in (private, public):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    _write_private(private, key)
    public.write_bytes(_public_pem(key.public_key()))
    return private, public


def _load_private(path: str, where: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the private key file {path!r} ({exc.strerror or type(exc).__name__})",
                          _KEY_FIX) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{where}: the private key in {path!r} is encrypted",
                          "use an unencrypted PEM key file readable only by you (mode 0600)") from None
    except Exception:
        # Never the parser's message: it could quote the file.
        raise ConfigError(f"{where}: {path!r} is not a PEM private key", _KEY_FIX) from None
    _check_key_type(key, f"{where} ({path})")
    return key


def _normalized_store(uri: str) -> str:
    """The store URI as one string per store: sqlite and file paths made absolute, credentials
    dropped (a changed password is the same store)."""
    from urllib.parse import urlsplit, urlunsplit

    from toolkit.tracking._sqlite import sqlite_file

    db = sqlite_file(uri)
    if db is not None:
        return "sqlite:///" + db
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # a path (or C:\...)
        return "file://" + os.path.realpath(parts.path if parts.scheme == "file" else uri)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def store_key_dir(store_uri: str | None = None) -> Path:
    """The per-user folder of the key pair made for tracking store ``store_uri`` (default: the
    current one): ``${XDG_DATA_HOME:-~/.local/share}/kmeans-lifecycle/keys/<hash of the URI>``."""
    if store_uri is None:
        from toolkit.tracking.runs import tracking_uri

        store_uri = tracking_uri()
    digest = hashlib.sha256(_normalized_store(store_uri).encode()).hexdigest()[:16]
    return _data_home() / "kmeans-lifecycle" / "keys" / digest


def _store_key(create: bool) -> tuple[Any, Path] | None:
    """The tracking store's own private key (made on first use when ``create``), or None."""
    folder = store_key_dir()
    private = folder / _PRIVATE_NAME
    if not private.exists():
        if not create:
            return None
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_key()
        # Written aside and linked in: two processes making the key at once agree on one.
        fd, tmp = tempfile.mkstemp(prefix=".key-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:  # mkstemp creates it 0600
                fh.write(_private_pem(key))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, private)
        finally:
            os.unlink(tmp)
        with contextlib.suppress(Exception):
            from toolkit.redact import redact
            from toolkit.tracking.runs import tracking_uri

            (folder / "store.txt").write_text(redact(_normalized_store(tracking_uri())) + "\n")
    key = _load_private(str(private), "the tracking store's signing key")
    public = folder / _PUBLIC_NAME
    if not public.exists():
        with contextlib.suppress(OSError):
            public.write_bytes(_public_pem(key.public_key()))
    return key, private


def signing_key() -> tuple[Any, str]:
    """(private key, where it came from): ``KMEANS_LIFECYCLE_SIGNING_KEY``, else the tracking
    store's own key pair, made on first use.

    Raises:
        ConfigError: the configured file is missing, unreadable, not a PEM private key, or of
            another algorithm.
    """
    path = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if path:
        return _load_private(path, SIGNING_KEY_ENV), SIGNING_KEY_ENV
    found = _store_key(create=True)
    assert found is not None
    return found[0], f"the tracking store's key ({found[1]})"


def _load_public_file(path: Path, where: str, strict: bool) -> Any | None:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except Exception:
        if strict:
            raise ConfigError(f"{where}: {str(path)!r} is not a readable PEM public key",
                              f"list public key files (or folders of them) in {TRUSTED_KEYS_ENV}") from None
        return None
    _check_key_type(key, f"{where} ({path})")
    return key


def _configured_trust(value: str) -> list[TrustedKey]:
    keys: list[TrustedKey] = []
    for entry in (e.strip() for e in value.split(os.pathsep)):
        if not entry:
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            for file in sorted(p for p in path.iterdir() if p.is_file()):
                key = _load_public_file(file, TRUSTED_KEYS_ENV, strict=False)  # private keys etc. skipped
                if key is not None:
                    keys.append(TrustedKey(key, str(file)))
        elif path.is_file():
            keys.append(TrustedKey(_load_public_file(path, TRUSTED_KEYS_ENV, strict=True), str(path)))
        else:
            raise ConfigError(f"{TRUSTED_KEYS_ENV} names {entry!r}, which does not exist",
                              "list existing public key files or folders")
    if not keys:
        raise ConfigError(f"{TRUSTED_KEYS_ENV} is set but names no PEM public key",
                          "list public key files (or folders of them), e.g. a keygen's signing-key.pub.pem")
    return keys


def trusted_keys() -> list[TrustedKey]:
    """The public keys a load accepts: ``KMEANS_LIFECYCLE_TRUSTED_KEYS``; else, with one warning
    line per process, the public half of ``KMEANS_LIFECYCLE_SIGNING_KEY`` or of the tracking
    store's own key (none when the store has none yet).

    Raises:
        ConfigError: a configured key file or folder is missing or holds no public key.
    """
    global _warned_default_trust
    value = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
    if value:
        return _configured_trust(value)
    path = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if path:
        keys = [TrustedKey(_load_private(path, SIGNING_KEY_ENV).public_key(), SIGNING_KEY_ENV)]
        which = f"the public half of {SIGNING_KEY_ENV}"
    else:
        found = _store_key(create=False)
        keys = [TrustedKey(found[0].public_key(), str(found[1]))] if found else []
        which = f"this tracking store's own key ({store_key_dir()})"
    if not _warned_default_trust:
        from toolkit.console import say

        _warned_default_trust = True
        say(f"warning: no {TRUSTED_KEYS_ENV} set: models are trusted when signed with {which}; to choose "
            f"whom to trust, set {TRUSTED_KEYS_ENV} to the signers' public key files (python -m mlproject.keygen)")
    return keys


def allow_pickle(explicit: bool | None = None) -> bool:
    """Whether the user opted in to loading (signed) pickle content: ``explicit`` when given,
    else ``KMEANS_LIFECYCLE_ALLOW_PICKLE``."""
    if explicit is not None:
        return bool(explicit)
    from toolkit.config import env_flag

    return env_flag(ALLOW_PICKLE_ENV, default=False)


_TRUST_UNSIGNED: contextvars.ContextVar[bool] = contextvars.ContextVar("kmeans_trust_unsigned", default=False)


@contextlib.contextmanager
def trusting_unsigned() -> Iterator[None]:
    """Within the block, in this thread (context) only, unsigned models are trusted on the store's
    checksums as with ``KMEANS_LIFECYCLE_ALLOW_UNSIGNED=1``: a caller's own trust decision (a
    migration reading the old files), without changing the environment other threads read."""
    token = _TRUST_UNSIGNED.set(True)
    try:
        yield
    finally:
        _TRUST_UNSIGNED.reset(token)


def allow_unsigned() -> bool:
    """Whether the user chose to trust unsigned models on the store's checksums
    (``KMEANS_LIFECYCLE_ALLOW_UNSIGNED``, or :func:`trusting_unsigned` in this context)."""
    from toolkit.config import env_flag

    return _TRUST_UNSIGNED.get() or env_flag(ALLOW_UNSIGNED_ENV, default=False)


# -- signing ------------------------------------------------------------------------------------
def _pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of an in-toto payload (DSSE v1.0 protocol)."""
    return b"DSSEv1 %d %s %d %s" % (len(_PAYLOAD_TYPE), _PAYLOAD_TYPE.encode(), len(payload), payload)


def _sign_bytes(key: Any, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_ec_hash(key.public_key())))
    return key.sign(data)


def _ec_hash(public_key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(public_key.curve.key_size, hashes.SHA512())


def _verify_bytes(public_key: Any, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_ec_hash(public_key)))
        else:
            public_key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _root_digest(resources: Iterable[Mapping[str, str]]) -> str:
    """model-signing's subject digest: sha256 over the resources' digests, in their order."""
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def _toolkit_version() -> str:
    from toolkit._version import __version__  # the package metadata's (or the source tree's)

    return __version__


def sign_dir(local_dir: str, manifest: Mapping[str, str], info: Mapping[str, str], key: Any = None) -> str:
    """Write ``model.sig`` into ``local_dir``: a signature over ``manifest`` (``{relative path:
    sha256}`` of every file of the folder) and ``info`` (``format``, ``model_class``,
    ``centers_shape``, ``model_id``).

    Args:
        local_dir: the model folder, complete (its files are not read here).
        manifest: its files' sha256.
        info: what loaders decide on; the format version and the toolkit's version are added.
        key: the private key; default :func:`signing_key`.

    Returns:
        The public key's hint (hex sha256 of its PEM), recorded by the caller.
    """
    if key is None:
        key, _ = signing_key()
    resources = [{"name": name, "algorithm": "sha256", "digest": manifest[name]}
                 for name in sorted(manifest) if name not in _IGNORED]
    section = {**{k: str(v) for k, v in info.items()}, "format_version": str(FORMAT_VERSION),
               "toolkit_version": _toolkit_version()}
    statement = {
        "_type": _STATEMENT_TYPE,
        "subject": [{"name": os.path.basename(os.path.normpath(local_dir)),
                     "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": list(_IGNORED)},
            "resources": resources,
            _SECTION: section,
        },
    }
    payload = json.dumps(statement, indent=1).encode()
    hint = key_hint(key.public_key())
    bundle = {
        "mediaType": _BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": _PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(_sign_bytes(key, _pae(payload))).decode(), "keyid": ""}],
        },
    }
    path = os.path.join(local_dir, SIGNATURE_FILE)
    with open(path, "w") as fh:
        json.dump(bundle, fh, indent=1)
    return hint


# -- verifying ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedModel:
    """What a verified ``model.sig`` says: the files and the loader's facts, and who signed."""

    manifest: dict[str, str]
    info: dict[str, str]
    signer: str  # where the trusted key that verified it came from
    key_hint: str = field(default="")


_SAFE_NAME = re.compile(r"^[^\x00-\x1f\\]+$")


def _bad(label: str, what: str) -> ModelError:
    return ModelError(f"{label}: its signature ({SIGNATURE_FILE}) {what}, so the model is not loaded",
                      "treat its storage as tampered with: restore it from a trusted copy, or re-register the model")


def _parse_bundle(path: str, label: str) -> tuple[bytes, list[bytes], str]:
    """(payload, signatures, key hint) of the bundle at ``path``; nothing is trusted yet."""
    if os.path.islink(path) or os.path.getsize(path) > _MAX_SIGNATURE_BYTES:
        raise _bad(label, "is a link or too large")
    try:
        with open(path, "rb") as fh:
            bundle = json.loads(fh.read())
        envelope = bundle["dsseEnvelope"]
        if bundle.get("mediaType") != _BUNDLE_MEDIA_TYPE or envelope.get("payloadType") != _PAYLOAD_TYPE:
            raise ValueError("media type")
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
        hint = str(((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _bad(label, "is not a model-signing bundle") from None
    if not sigs:
        raise _bad(label, "holds no signature")
    return payload, sigs, hint


def _parse_statement(payload: bytes, label: str) -> tuple[dict[str, str], dict[str, str]]:
    """(manifest, kmeans_lifecycle section) of a verified payload, checked for consistency."""
    try:
        statement = json.loads(payload)
        if statement["_type"] != _STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
            raise ValueError("type")
        predicate = statement["predicate"]
        serialization = predicate["serialization"]
        if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
            raise ValueError("serialization")
        resources = predicate["resources"]
        manifest: dict[str, str] = {}
        for r in resources:
            name, digest = str(r["name"]), str(r["digest"]).lower()
            if r["algorithm"] != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("digest")
            parts = name.split("/")
            if (not _SAFE_NAME.match(name) or name.startswith("/") or ".." in parts or "" in parts
                    or name in _IGNORED or name in manifest):
                raise ValueError("name")
            manifest[name] = digest
        subjects = statement["subject"]
        if len(subjects) != 1 or subjects[0]["digest"]["sha256"] != _root_digest(resources):
            raise ValueError("subject")
        section = {str(k): str(v) for k, v in predicate[_SECTION].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _bad(label, "verifies but its statement is not a kmeans-lifecycle model signature") from None
    missing = [k for k in _REQUIRED if not section.get(k)]
    if missing or not manifest:
        raise _bad(label, f"verifies but lacks {', '.join(missing) or 'files'}")
    if section["format_version"] != str(FORMAT_VERSION):
        raise ModelError(f"{label} was signed by kmeans-lifecycle {section['toolkit_version']} in signature format "
                         f"{section['format_version']}, which this version does not read",
                         "load it with that kmeans-lifecycle or a newer one")
    return manifest, section


def read_signature(local_dir: str, label: str, keys: list[TrustedKey] | None = None) -> SignedModel | None:
    """Verify ``local_dir/model.sig`` with the trusted keys; None when the folder has none.

    Only the signature file is read; the caller then checks the folder's files against the
    returned manifest before reading any of them.

    Raises:
        ModelError: the signature is malformed, made by a key not trusted here, or does not
            verify.
        ConfigError: the trusted keys are misconfigured.
    """
    path = os.path.join(local_dir, SIGNATURE_FILE)
    if not os.path.lexists(path):
        return None
    payload, sigs, hint = _parse_bundle(path, label)
    keys = trusted_keys() if keys is None else keys
    if not keys:
        raise ModelError(f"{label} is signed (key {hint[:16] or 'unnamed'}) but no key is trusted here",
                         _TRUST_FIX)
    # The hint only orders the tries: every trusted key gets its chance, none is taken on its word.
    data = _pae(payload)
    for tk in sorted(keys, key=lambda k: k.hint != hint):
        if any(_verify_bytes(tk.key, sig, data) for sig in sigs):
            manifest, section = _parse_statement(payload, label)
            return SignedModel(manifest, section, tk.source, tk.hint)
    if hint and not any(tk.hint == hint for tk in keys):
        raise ModelError(f"{label} is signed with a key that is not trusted here (key {hint[:16]})", _TRUST_FIX)
    raise _bad(label, "does not verify with the trusted key(s)")
