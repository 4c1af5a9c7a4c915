"""Entry point ``keygen``: make a key pair that signs the models the toolkit logs.

    python -m mlproject.keygen --out ~/.config/kmeans-lifecycle/keys
    mlflow run . -e keygen -P out=keys --env-manager local

Writes ``signing-key.pem`` (the private key, mode 0600) and ``signing-key.pub.pem`` (the
public key) into ``--out``, then says what to set: ``KMEANS_LIFECYCLE_SIGNING_KEY`` where models
are logged, ``KMEANS_LIFECYCLE_TRUSTED_KEYS`` where they are loaded.  Nothing is written to the
tracking store, and the private key is never printed.
"""

from __future__ import annotations

import argparse

from mlproject._cli import add_flag, entry_parser, run_main
from toolkit.config import parse_flag

#: ``algorithm``'s default: what model-signing's own key verifier checks.
DEFAULT_ALGORITHM = "ecdsa-p256"


def build_parser() -> argparse.ArgumentParser:
    """The ``keygen`` options (``MLproject``'s ``keygen`` parameters, one for one)."""
    from toolkit.names import SIGNING_ALGORITHMS as ALGORITHMS  # not the registry: --help stays light

    parser = entry_parser("keygen", "mlproject.keygen", "make a key pair that signs logged models")
    parser.add_argument("--out", required=True, help="folder for signing-key.pem and signing-key.pub.pem")
    parser.add_argument("--algorithm", default=DEFAULT_ALGORITHM,
                        help=f"one of {', '.join(ALGORITHMS)} (default: {DEFAULT_ALGORITHM})")
    add_flag(parser, "overwrite", "replace a key pair already in --out")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    overwrite = parse_flag(args.overwrite, "overwrite")

    import os

    from toolkit.console import say
    from toolkit.registry.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, key_hint, write_key_pair

    private, public = write_key_pair(args.out, args.algorithm, overwrite=overwrite)
    from cryptography.hazmat.primitives import serialization

    hint = key_hint(serialization.load_pem_public_key(public.read_bytes()))
    say(f"made an {args.algorithm} key pair (key {hint[:16]}):")
    say(f"  private key {os.path.abspath(private)} (mode 0600: keep it secret, back it up)")
    say(f"  public key  {os.path.abspath(public)}")
    say(f"sign where models are logged:  export {SIGNING_KEY_ENV}={os.path.abspath(private)}")
    say(f"trust where they are loaded:   export {TRUSTED_KEYS_ENV}={os.path.abspath(public)}")
    return 0


if __name__ == "__main__":
    run_main(main, uses_store=False)
