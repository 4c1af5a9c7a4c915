"""Entry point ``migrate``: rewrite the versions of a registered model that an earlier release
wrote (pickled run artifacts, unsigned models) into the current signed format, as NEW versions.

    mlflow run . -e migrate -P model_name=blobs-kmeans -P trust=pickle --env-manager local
    python -m mlproject.migrate --model-name blobs-kmeans --trust unsigned --version 3

The command is the trust decision, and says which: ``trust=unsigned`` accepts models nobody
signed (read without running code: skops twins, kmeans-npy files, checked against the store's
checksums where it has them); ``trust=pickle`` also unpickles old pickled models, which runs
their code -- only for a store whose writers you trust.  A version that needs more trust than
given stops the command before anything is written.

Each old version is loaded once, rebuilt, signed, checked to predict exactly its labels and
registered as a new version with its tags, its aliases (moved to it) and ``migrated_from``,
``migration.trust``, ``migration.toolkit_version``; a native model and its twin are migrated
together and linked again.  The old files are never changed; the old version gets
``migration.migrated_to``, so running the command again skips it, saying so.  Recorded in a run
``migrate <model>`` in the model's experiment (see :func:`mlproject._cli.record_run`).
"""

from __future__ import annotations

import argparse

from mlproject._cli import entry_parser, run_main

#: ``version``'s default: every version of the model.
ALL_VERSIONS = "all"


def build_parser() -> argparse.ArgumentParser:
    """The ``migrate`` options (``MLproject``'s ``migrate`` parameters, one for one)."""
    from toolkit.names import MIGRATE_TRUST_LEVELS as TRUST_LEVELS  # not the registry: --help stays light

    parser = entry_parser("migrate", "mlproject.migrate",
                          "rewrite a registered model's old versions as new signed versions")
    parser.add_argument("--model-name", dest="model_name", required=True,
                        help="registered model name (native or twin: the pair is migrated together)")
    parser.add_argument("--trust", required=True,
                        help=f"what you accept to read the old versions: {' or '.join(TRUST_LEVELS)} "
                             "(unsigned: unsigned files, read without running code; pickle: also unpickle "
                             "old pickled models, which runs their code)")
    parser.add_argument("--version", default=ALL_VERSIONS,
                        help=f"one version only (default: {ALL_VERSIONS})")
    return parser


def main() -> int:
    args = build_parser().parse_args()

    from toolkit.registry.migrate import parse_trust

    trust = parse_trust(args.trust)  # refused in one line before anything is looked up
    version = None if args.version.strip().lower() in ("", ALL_VERSIONS) else args.version.strip()

    from mlproject._cli import describe_record, record_run, say_made
    from toolkit import __version__
    from toolkit.console import say
    from toolkit.registry import model_experiment
    from toolkit.registry.migrate import migrate
    from toolkit.tracking import log_metrics, log_params, log_tags
    from toolkit.tracking.runs import client

    try:
        client().get_registered_model(args.model_name)
    except Exception:
        from toolkit.errors import ModelError

        raise ModelError(f"registered model {args.model_name!r} does not exist",
                         "check the name (mlflow ui, Models tab)") from None
    home = model_experiment(args.model_name, version or "1")
    with record_run(home, f"migrate {args.model_name}", {"entry_point": "migrate"}) as run_id:
        log_params(run_id, {"migrate.model_name": args.model_name, "migrate.trust": trust,
                            "migrate.version": version or ALL_VERSIONS})
        log_tags(run_id, {"migration.trust": trust, "migration.toolkit_version": __version__})
        results = migrate(args.model_name, trust, version=version, run_id=run_id, say=say)
        migrated = [r for r in results if r.new_version]
        log_metrics(run_id, {"versions_migrated": len(migrated), "versions_skipped": len(results) - len(migrated)})
        log_tags(run_id, {"migration.versions": ", ".join(f"{r.name} v{r.version} -> v{r.new_version}"
                                                          for r in migrated)[:4_500] or "none"})
    made = describe_record(run_id)
    for r in migrated:
        moved = f" (aliases {', '.join(r.aliases)} moved to it)" if r.aliases else ""
        made.append(f"{r.name} v{r.new_version}: migrated from v{r.version}, {r.source_format}{moved}")
    if not migrated:
        made.append(f"no new version: every version of {args.model_name!r} loads as it is or was migrated before")
    say_made(made, run_id)
    return 0


if __name__ == "__main__":
    run_main(main)
