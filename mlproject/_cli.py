"""Shared command-line plumbing: parsers, config options, the error guard and the closing summary.

Every entry point builds its parser here (:func:`entry_parser`; each module's
``build_parser()`` is what ``tests/test_entrypoint_cli.py`` compares with ``MLproject``), loads
the experiment config, calls the library, says what it made (:func:`say_made`) and exits
through :func:`run_main`: a user error prints one line, marks the MLflow run FAILED with the
reason and exits 2; anything else prints its traceback and exits 1.

An option is named the way the user gave it (:func:`toolkit.errors.option_hint`): ``-P name=value``
when ``mlflow run`` started the process (the ``MLproject`` command sets
``KMEANS_LIFECYCLE_ENTRY_POINT``), ``--name value`` when it was run directly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from toolkit.config import ExperimentConfig, load_experiment, parse_overrides
from toolkit.errors import ConfigError, ToolkitError, disk_full, first_line, launched_entry_point, option_hint
from toolkit.redact import redact

#: The default of every option backed by a config key, in ``MLproject`` as on the command line:
#: "not given, the config decides".  Not "": ``mlflow run`` logs every parameter's value (its
#: default too) as a param of the run, and a param reading ``''`` says nothing (see MLproject).
FROM_CONFIG = "from-config"
#: The default of ``overrides`` (``--set``): no override.
NO_OVERRIDES = "none"

#: Options that set one config key, by option name.
FIELD_KEYS: dict[str, str] = {
    "backend": "backend",
    "n_clusters": "model.n_clusters",
    "n_workers": "cluster.n_workers",
    "scheduler_address": "cluster.scheduler_address",
}


def is_unset(value: object) -> bool:
    """Whether an option's value means "not given" (empty, or :data:`FROM_CONFIG`)."""
    return value is None or str(value).strip() in ("", FROM_CONFIG)


class EntryParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, naming options as the user gave them.

    argparse would print its usage and ``prog: error: ...`` with ``--flag`` names; under
    ``mlflow run`` the user typed ``-P flag=...``, and a bad ``-P`` name reaches us as the
    ``--name value`` that ``mlflow run`` appends for a parameter the entry point does not declare.
    """

    def error(self, message: str) -> typing.NoReturn:
        from toolkit._compat import argparse_actions

        known = ", ".join(option_hint(a.dest) for a in argparse_actions(self) if a.option_strings and a.dest != "help")
        raise ConfigError(_as_given(message), f"the options of {self.prog} are {known}")


def _as_given(message: str) -> str:
    """argparse's message with every ``--flag-name`` written as the user writes it."""
    unknown = "unrecognized arguments: "
    if message.startswith(unknown):  # "--n_trial 5": what `mlflow run` made of -P n_trial=5
        words, shown = message[len(unknown):].split(), []
        for i, word in enumerate(words):
            if word.startswith("--"):
                value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
                name = word[2:]
                shown.append(option_hint("overrides" if name == "set" else name.replace("-", "_"), value))
            elif not shown:
                shown.append(word)
        return f"unknown option(s): {', '.join(shown)}"

    def named(match: re.Match[str]) -> str:
        flag = match.group(1)
        return option_hint("overrides" if flag == "set" else flag.replace("-", "_"))

    return re.sub(r"(?<![\w-])--([A-Za-z][\w-]*)", named, message)


def entry_parser(entry: str, module: str, description: str) -> EntryParser:
    """The parser of entry point ``entry`` (``MLproject`` name) run by ``python -m <module>``.

    ``prog`` is the command the user typed, so ``--help`` and every error name it.
    """
    launched = launched_entry_point()
    prog = f"mlflow run . -e {launched}" if launched else f"python -m {module}"
    epilog = (f"As an MLflow project: mlflow run . -e {entry} -P name=value ... --env-manager local, where "
              "each --some-option here is -P some_option and --set is -P overrides. "
              f"'{FROM_CONFIG}' (or an empty value) keeps the config's setting.")
    # allow_abbrev=False: -P obj=x reaches us as --obj x, which must not quietly mean --objective.
    return EntryParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False)


def allowed_values(key: str) -> tuple[str, ...]:
    """The values config key ``key`` (dotted) accepts when it is a closed vocabulary, else ().

    Read from the config's own types (``Literal[...]``, ``bool``), so that ``--help`` lists
    exactly what the config will accept: backends from :mod:`toolkit.names`, strategies, ...
    """
    model: Any = ExperimentConfig
    *sections, leaf = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    annotation = model.model_fields[leaf].annotation
    if annotation is bool:
        return ("true", "false")
    literals: list[str] = []
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            literals += [str(v) for v in typing.get_args(arg)]
        elif arg is bool and annotation is not bool:  # bool | Literal["auto"]: search.resume
            literals += ["true", "false"]
    return tuple(literals)


def config_help(key: str, what: str = "") -> str:
    """Help text of an option that sets config key ``key``: its allowed values, if closed."""
    allowed = allowed_values(key)
    if allowed == ("true", "false"):
        values = "true or false; "
    elif allowed:
        values = f"one of {', '.join(allowed)}; "
    else:
        values = ""
    return f"{what + ' ' if what else ''}({key}): {values}default: {FROM_CONFIG}"


def add_config_options(parser: argparse.ArgumentParser, options: Mapping[str, str],
                       config_default: str = "experiments/blobs.yaml") -> None:
    """``--config``, one option per ``options`` entry (option name -> config key), ``--set``."""
    parser.add_argument("--config", default=config_default,
                        help="experiment YAML file (e.g. experiments/blobs.yaml); empty: built-in defaults"
                             + (f" (default: {config_default})" if config_default else ""))
    for name, key in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=FROM_CONFIG, help=config_help(key))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[],
        help=f"dotted config overrides, e.g. {option_hint('overrides', 'model.max_iter=50 data.n_samples=1000')}"
             f" (default: {NO_OVERRIDES})",
    )


def add_flag(parser: argparse.ArgumentParser, name: str, what: str, default: str = "false") -> None:
    """A yes/no option (``--register true``): its value is checked by ``parse_flag``."""
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default,
                        help=f"{what}: true or false (default: {default})")


def load_config(args: argparse.Namespace, options: Mapping[str, str]) -> ExperimentConfig:
    """The experiment config with every given option and ``--set`` override applied."""
    overrides: dict[str, Any] = {}
    for name, key in options.items():
        value = getattr(args, name, "")
        if not is_unset(value):
            overrides.update(parse_overrides([f"{key}={value}"]))
    for chunk in args.overrides:
        if chunk.strip() not in ("", NO_OVERRIDES):
            overrides.update(parse_overrides(chunk))
    return load_experiment(args.config or None, overrides)


# -- the closing summary ------------------------------------------------------------------


def describe_run(run_id: str) -> str:
    """``run <id> (<name>) in experiment '<name>'`` for the summary."""
    from toolkit.tracking.runs import client

    c = client()
    run = c.get_run(run_id)
    experiment = c.get_experiment(run.info.experiment_id).name
    return f"run {run_id} ({run.info.run_name}) in experiment '{experiment}'"


def describe_record(record_run_id: str) -> list[str]:
    """The summary lines of a :func:`record_run`: the record, and ``mlflow run``'s own run
    when that is another one."""
    lines = [describe_run(record_run_id)]
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher and launcher != record_run_id:
        lines.append(f"{describe_run(launcher)}: mlflow run's own, tagged {RECORD_RUN_TAG}={record_run_id}")
    return lines


def _aliases(name: str, version: str) -> list[str]:
    from toolkit.tracking.runs import client

    return sorted(client().get_model_version(name, version).aliases)


def describe_registered(reg: Any) -> str:
    """``registered blobs-kmeans v3 (native) and blobs-kmeans-sklearn v3 (twin); aliases: ...``
    for a :class:`toolkit.registry.Registered` record, aliases as the registry holds them now."""
    made = f"registered {reg.native_name} v{reg.native_version} (native)"
    aliases = {reg.native_name: _aliases(reg.native_name, reg.native_version)}
    if reg.sklearn_version:
        made += f" and {reg.sklearn_name} v{reg.sklearn_version} (twin)"
        aliases[reg.sklearn_name] = _aliases(reg.sklearn_name, reg.sklearn_version)
    else:
        made += " (no twin: it did not predict the same labels)"
    shown = {", ".join(a) or "none" for a in aliases.values()}
    if len(shown) == 1:
        return f"{made}; aliases: {shown.pop()}"
    return made + "; aliases: " + "; ".join(f"{n} {', '.join(a) or 'none'}" for n, a in aliases.items())


def say_made(things: Sequence[str], look_run_id: str | None) -> None:
    """The last lines of every entry point: what it made, then how to look at it.

    ``things`` are lines such as :func:`describe_run` and :func:`describe_registered` give;
    ``look_run_id`` is the run whose page to open (``mlflow ui ...`` or the server URL).
    """
    from toolkit.console import say
    from toolkit.tracking import run_url

    say("made:")
    for line in things:
        say(f"  {line}")
    if look_run_id:
        say(f"look: {run_url(look_run_id)}")


# -- the run of promote and predict -----------------------------------------------------------


#: Tags linking ``mlflow run``'s own run to the run that holds the record, and back.
RECORD_RUN_TAG = "kmeans.record_run_id"
LAUNCHER_RUN_TAG = "kmeans.launcher_run_id"


@contextlib.contextmanager
def record_run(experiment_id: str | None, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """The run that records a ``promote`` or ``predict``, in the model's experiment.

    A promotion or a scoring job belongs next to the runs that trained the model, whatever
    experiment ``mlflow run`` was pointed at (MLflow's ``Default`` when ``--experiment-name`` is
    left out).  A run cannot be moved between experiments, so:

    * run directly, or under ``mlflow run`` in that same experiment: one run, named
      ``run_name`` (``mlflow run``'s own, resumed);
    * under ``mlflow run`` elsewhere: the record is a new run in the model's experiment, and
      ``mlflow run``'s run gets the same name, a :data:`RECORD_RUN_TAG` tag and a note that
      point at it (the record points back with :data:`LAUNCHER_RUN_TAG`).

    ``experiment_id`` None (the model's run is unknown): ``mlflow run``'s experiment, or
    ``Default`` when run directly.  Ends FINISHED, or FAILED with the reason.
    """
    from toolkit.tracking import tracked_run
    from toolkit.tracking.runs import client, get_or_create_experiment, run_url

    c = client()
    launcher = os.environ.get("MLFLOW_RUN_ID")
    launcher_exp = str(c.get_run(launcher).info.experiment_id) if launcher else None
    experiment_id = experiment_id or launcher_exp or get_or_create_experiment("Default")
    experiment = c.get_experiment(experiment_id).name
    if launcher and launcher_exp == experiment_id:
        target = launcher
    else:
        extra = {LAUNCHER_RUN_TAG: launcher} if launcher else {}
        target = c.create_run(experiment_id, run_name=run_name, tags={**tags, **extra}).info.run_id
        if launcher:
            c.update_run(launcher, name=run_name)
            c.set_tag(launcher, RECORD_RUN_TAG, target)
            c.set_tag(launcher, "mlflow.note.content",
                      f"The record of this {tags.get('entry_point', 'run')} is run {target} in experiment "
                      f"'{experiment}' (the model's experiment): {run_url(target)}")
    # resume_run_id: tracked_run would otherwise resume MLFLOW_RUN_ID, in the launcher's experiment.
    with tracked_run(experiment, run_name, tags, resume_run_id=target) as run_id:
        yield run_id


# -- the error guard --------------------------------------------------------------------------


def _fail_active_run(error: BaseException) -> None:
    """Under ``mlflow run`` the run exists before we parse anything: end it FAILED too."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        from toolkit.tracking import mark_failed, tracking_uri

        if MlflowClient(tracking_uri()).get_run(run_id).info.status == "RUNNING":
            mark_failed(run_id, error)
    except Exception:  # never hide the real error behind a tracking one
        pass


def _scrub_launcher_params() -> None:
    """Under ``mlflow run``, mask credentials that the user put in a ``-P`` value."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from toolkit.console import say
    from toolkit.tracking.runs import scrub_credentials

    left = scrub_credentials(run_id)
    if left:
        say(f"warning: mlflow run recorded a password given in -P {', '.join(left)} as a param of run {run_id}; "
            "pass secrets as ${VAR} references (e.g. -P storage='postgresql://u:${PGPASSWORD}@host/db') "
            "and change that password")


def run_main(main: Callable[[], int | None], *, uses_store: bool = True,
             parser: Callable[[], argparse.ArgumentParser] | None = None) -> None:
    """Call ``main`` and exit with a clear status.

    The command line is parsed first, with ``parser`` (default: the ``build_parser`` of
    ``main``'s module), so that ``--help`` and a bad option answer at once and touch no store:
    the store is checked (and a new sqlite one created) only then.  ``main`` parses it again.
    Run as the program (``python -m mlproject.<entry>``), the process then ends without the
    interpreter's teardown (:mod:`mlproject._exit`), once every exit handler has run.
    ``uses_store=False`` (``keygen``): the tracking store is neither checked nor created.
    """
    as_program = getattr(main, "__module__", None) == "__main__"
    if parser is None:
        parser = getattr(sys.modules.get(getattr(main, "__module__", "")), "build_parser", None)
    try:
        if parser is not None:
            parser().parse_args()  # --help exits here (SystemExit 0), before MLflow is imported
        from toolkit.tracking.runs import check_store

        if uses_store:
            check_store()
        _scrub_launcher_params()
        code = main() or 0
    except ToolkitError as exc:
        _refuse(exc, as_program)
    except KeyboardInterrupt as exc:
        _fail_active_run(exc)
        print("error: interrupted", file=sys.stderr)
        _exit(130, as_program)
    except Exception as exc:
        full = disk_full(exc)  # a full disk is the user's to fix: one line, not a traceback
        if full is not None:
            _refuse(full, as_program)
        _fail_active_run(exc)
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        print(redact(f"error: {type(exc).__name__}: {first_line(exc)}"), file=sys.stderr)
        _exit(1, as_program)
    _exit(int(code), as_program)


def _refuse(error: ToolkitError, as_program: bool) -> typing.NoReturn:
    """A problem the user can fix: the run FAILED with it, its one line on stderr, exit 2."""
    _fail_active_run(error)
    print(redact(f"error: {error}"), file=sys.stderr)
    _exit(2, as_program)


def _exit(code: int, as_program: bool) -> typing.NoReturn:
    if as_program:
        from mlproject._exit import arm

        arm(code)
    sys.exit(code)
