"""Entry point ``verify``: check a model, or every version of a registered model, for CI/CD gates.

    mlflow run . -e verify -P model_name=blobs-kmeans-sklearn --env-manager local
    python -m mlproject.verify --model-uri models:/blobs-kmeans@champion

Each model is checked the way every load is (:func:`toolkit.registry.integrity.fetch_verified`):
its files are downloaded into a private folder and compared with the record the tracking store
holds; none is deserialized.  One line per failure, then a summary; the exit status is non-zero
when any failed (2, the entry points' status for a refusal), so a pipeline stops before a
tampered or unverifiable model is deployed.  Nothing is written to the store.
"""

from __future__ import annotations

import argparse
import sys

from mlproject._cli import entry_parser, run_main

#: The default of ``model_uri`` and ``model_name``: not given (exactly one of them must be).
NOT_GIVEN = "none"


def build_parser() -> argparse.ArgumentParser:
    """The ``verify`` options (``MLproject``'s ``verify`` parameters, one for one)."""
    parser = entry_parser("verify", "mlproject.verify",
                          "check a model's files against the tracking store's record (exit 2 if any fail)")
    parser.add_argument("--model-uri", default=NOT_GIVEN,
                        help="one model: models:/name@alias, models:/name/version, models:/<model_id> or "
                             f"runs:/<id>/<path> (default: {NOT_GIVEN})")
    parser.add_argument("--model-name", default=NOT_GIVEN,
                        help=f"a registered model: every one of its versions is checked (default: {NOT_GIVEN})")
    return parser


def _given(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", NOT_GIVEN) else value


def version_uris(name: str) -> list[str]:
    """``models:/<name>/<version>`` for every version of registered model ``name``, oldest first.

    Raises:
        ModelError: no such registered model, or it has no version.
    """
    from toolkit.errors import ModelError
    from toolkit.registry.integrity import registered_versions

    versions = registered_versions(name)
    if not versions:
        raise ModelError(f"registered model {name!r} has no versions", "register one with a search")
    return [f"models:/{name}/{v.version}" for v in versions]


def check(uri: str) -> str | None:
    """None when the model at ``uri`` passes, else the one-line reason it does not."""
    from toolkit.errors import ToolkitError, first_line
    from toolkit.registry.integrity import fetch_verified

    try:
        verified = fetch_verified(uri)
        try:
            if not verified.signed:
                # A gate fails closed: KMEANS_LIFECYCLE_ALLOW_UNSIGNED lets a load through on the
                # store's checksums, which anyone who can write the store can rewrite.
                return (f"{verified.label} is not signed (only the tracking store's checksums vouch for it) -- fix: "
                        f"migrate it to a new signed version (mlflow run . -e migrate -P model_name=NAME "
                        "-P trust=unsigned)")
        finally:
            verified.cleanup()
    except ToolkitError as exc:
        return str(exc)
    except Exception as exc:  # a gate fails closed: an error checking is a failure too
        return f"{type(exc).__name__}: {first_line(exc, 300)}"
    return None


def main() -> int:
    from toolkit.errors import ConfigError, ModelError, option_hint

    args = build_parser().parse_args()
    uri, name = _given(args.model_uri), _given(args.model_name)
    if (uri is None) == (name is None):
        raise ConfigError("give one model URI or one registered model name, not " + ("both" if uri else "neither"),
                          f"pass {option_hint('model_uri', 'models:/blobs-kmeans@champion')} or "
                          f"{option_hint('model_name', 'blobs-kmeans')}")

    from toolkit.console import say
    from toolkit.redact import redact

    uris = [uri] if uri else version_uris(name)
    failed = 0
    for each in uris:
        reason = check(each)
        if reason is not None:
            failed += 1
            # On stderr, beside the closing error line: what a CI log shows as the failure.
            print(redact(f"FAILED {each}: {reason}"), file=sys.stderr, flush=True)
    what = f"{len(uris)} version(s) of registered model {name!r}" if name else uri
    if failed:
        raise ModelError(f"{failed} of {len(uris)} model(s) failed verification ({what}); see the FAILED lines",
                         "do not deploy them: restore their files from a trusted copy, or re-register the model "
                         "and promote the new version")
    say(f"verified {what}: {len(uris)} passed, 0 failed; each is signed by a trusted key and its files are "
        "exactly the signed ones")
    return 0


if __name__ == "__main__":
    run_main(main)
