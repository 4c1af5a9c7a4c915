"""Credentials never reach the record: one function that masks them in any text.

A database or tracking URL may carry a password (``postgresql://u:secret@host/db``,
``http://u:secret@mlflow:5000``) or a token in its query (``?password=...``).  Everything the
toolkit writes for a person or into MLflow (params, tags, error tags, console lines, error
messages) passes through :func:`redact` at the point where it leaves the process, so a secret
given anywhere upstream is masked wherever it would surface.

Secrets are better not given in URLs at all: ``search.storage`` expands ``${VAR}`` references
from the environment at the moment it connects (:func:`expand_env`), so the record holds the
reference, never the value; libpq's ``PGPASSWORD`` or ``~/.pgpass`` work as usual.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

__all__ = ["MASK", "expand_env", "has_credentials", "redact", "redact_any", "redact_logs"]

MASK = "***"

# scheme://user:password@  -- the password runs to the last "@" before the host, so an
# unescaped "@" inside it is masked too.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>[^\s/?#]*)@")
# password=..., token=... in a query string or a libpq keyword string.
_KEYWORD = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)(?P<secret>[^&;\s]+)",
    re.IGNORECASE,
)
_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def redact(text: Any) -> Any:
    """``text`` with URL passwords and ``password=``-style values replaced by ``***``.

    Non-strings are returned unchanged, so the function can wrap any value on its way out.
    ``${VAR}`` references are left as they are: they are not secrets.
    """
    if not isinstance(text, str) or ("@" not in text and "=" not in text):
        return text
    out = _USERINFO.sub(lambda m: m["head"] + ":" + (m["secret"] if _ENV_REF.fullmatch(m["secret"]) else MASK) + "@",
                        text)
    return _KEYWORD.sub(lambda m: m["head"] + (m["secret"] if _ENV_REF.fullmatch(m["secret"]) else MASK), out)


def redact_any(value: Any) -> Any:
    """:func:`redact` applied to strings inside lists, tuples and dicts as well."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_any(v) for v in value)
    return value


def has_credentials(text: str | None) -> bool:
    """Whether ``text`` holds a literal secret that :func:`redact` would mask."""
    return bool(text) and redact(text) != text


def expand_env(text: str) -> str:
    """``${VAR}`` references replaced by the environment's values (a missing one is an error)."""
    from toolkit.errors import ConfigError

    def value(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} (referenced as ${{{name}}}) is not set",
                              f"export {name}=... before starting the search")
        return os.environ[name]

    return _ENV_REF.sub(value, text)


class _RedactingFilter(logging.Filter):
    """Masks credentials in a log record's final message (a filter may rewrite the record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked is not message and masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = _RedactingFilter()


def redact_logs(*loggers: str) -> None:
    """Mask credentials in what these loggers, and the handlers of ``mlflow`` and the root
    logger, print.

    Libraries log the URL they failed to reach, password included (MLflow's system-metrics
    thread warns ``API request to http://u:secret@host/... failed`` when the server is down):
    those lines leave the process through logging, not through the toolkit's own prints.  A
    logger's filter sees only records created on it, a handler's sees every record it prints,
    so both are installed (once each).
    """
    targets = [logging.getLogger(name) for name in loggers]
    for name in ("mlflow", ""):
        targets.extend(logging.getLogger(name).handlers)
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)

