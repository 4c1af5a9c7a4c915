"""Entry point ``serve``: verify a model, then serve that verified copy over REST.

    mlflow run . -e serve -P model_uri=models:/blobs-kmeans-sklearn@champion --env-manager local
    python -m mlproject.serve --model-uri models:/blobs-kmeans-sklearn@champion --port 5000

``mlflow models serve -m models:/...`` reads whatever the artifact store holds, through the
loader its MLmodel file names: whoever can write the store chooses the code it runs.  This entry
point resolves the URI through :func:`toolkit.registry.integrity.fetch_verified` (every file
checked against the record before any is read), refuses a model the project's loader would not
serve, copies the verified files into a private folder it owns for the server's life, and runs
``mlflow models serve -m <that copy> --env-manager local`` on loopback by default, with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.  A tampered model is refused in one line and no
server starts.  SIGINT/SIGTERM are forwarded to the server; its exit status is returned; the
copy is removed at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from mlproject._cli import entry_parser, run_main

#: The loader every model the toolkit logs names in its ``python_function`` flavor.
PROJECT_LOADER = "toolkit.registry.flavor"
#: What the server's environment sets, whatever the caller's says.
NO_PICKLE = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
#: Seconds the server gets to stop after a forwarded signal before it is killed.
STOP_GRACE_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` options (``MLproject``'s ``serve`` parameters, one for one)."""
    parser = entry_parser("serve", "mlproject.serve",
                          "verify a registered k-means model, then serve the verified copy with mlflow models serve")
    parser.add_argument("--model-uri", required=True,
                        help="models:/name@alias, models:/name/version, models:/<model_id> or runs:/<id>/<path>")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens the "
                             "unauthenticated scoring server to every machine that can reach this one)")
    parser.add_argument("--port", default="5000", help="port to listen on (default: 5000)")
    parser.add_argument("--workers", default="1", help="server worker processes (default: 1)")
    parser.add_argument("--timeout", default="60", help="seconds allowed per request (default: 60)")
    return parser


def _whole(value: str, name: str, low: int, high: int, example: int) -> int:
    from toolkit.errors import ConfigError, option_hint

    try:
        n = int(str(value).strip())
    except ValueError:
        n = low - 1
    if not low <= n <= high:
        raise ConfigError(f"{name}={value!r} is not a whole number from {low} to {high}",
                          f"pass e.g. {option_hint(name, example)}")
    return n


def _host(value: str) -> str:
    from toolkit.errors import ConfigError, option_hint

    host = value.strip()
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"host={value!r} is not an interface name or address",
                          f"pass e.g. {option_hint('host', '127.0.0.1')} (this machine only)")
    return host


def _check_port(host: str, port: int) -> None:
    """Refuse, before anything starts, a port that is taken or a host that is not this machine's
    (the server would otherwise fail with a traceback after loading the model)."""
    import errno
    import socket

    from toolkit.errors import ConfigError, option_hint

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"host={host!r} cannot be resolved ({exc.strerror})",
                          f"pass an address of this machine, e.g. {option_hint('host', '127.0.0.1')}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use",
                                  f"pass another, e.g. {option_hint('port', port + 1)}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"host={host!r} is not an address of this machine",
                                  f"pass one that is, e.g. {option_hint('host', '127.0.0.1')}") from None
            # Anything else (e.g. a privileged port) is the server's to report.


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def _check_servable(local_path: str, label: str) -> None:
    """Refuse a (verified) model whose pyfunc face is not the project's loader.

    Every model the toolkit logs names :data:`PROJECT_LOADER`; one that names another loader
    (a twin logged by an older release, through ``mlflow.sklearn``) or code shipped in its
    folder would run that code in the server, or be refused by it once pickle is off.
    """
    from mlflow.models import Model

    from toolkit.errors import ModelError

    pyfunc = Model.load(os.path.join(local_path, "MLmodel")).flavors.get("python_function") or {}
    loader = pyfunc.get("loader_module")
    if loader != PROJECT_LOADER or pyfunc.get("code") or pyfunc.get("model_code_path"):
        raise ModelError(f"{label} names the pyfunc loader {loader!r}, not the project's {PROJECT_LOADER}, "
                         "so this entry point does not serve it",
                         "re-register the model with this kmeans-lifecycle (rerun the search, or "
                         "`mlflow run . -e train -P register=true`)")


def _private_copy(source: Any) -> tuple[str, str]:
    """(folder owned by this process, the model's copy in it): the verified files, byte for byte."""
    from toolkit.errors import ModelError
    from toolkit.registry.integrity import manifest_of

    home = tempfile.mkdtemp(prefix="kmeans-serve-")  # mode 0700: no other user can change it
    copy = os.path.join(home, "model")
    try:
        shutil.copytree(source.local_path, copy, symlinks=False)
        if manifest_of(copy) != manifest_of(source.local_path):
            raise ModelError(f"the copy of {source.uri} to serve differs from its verified files",
                             f"check the space and permissions of {tempfile.gettempdir()}")
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return home, copy


def server_env() -> dict[str, str]:
    """The server's environment: this one, pickle off, this interpreter's tools and toolkit first,
    and the tracking store this process uses (the project's loader checks the copy against it)."""
    from toolkit.tracking.runs import registry_uri, tracking_uri

    env = dict(os.environ)
    env.update(NO_PICKLE)
    # `mlflow models serve --env-manager local` runs `bash -c "exec uvicorn ..."`: uvicorn must be
    # found on PATH (a venv's bin is not on it under `mlflow run`): exit 127 otherwise.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]) if env.get("PATH") else bin_dir
    # The loader the server imports is the code that verified the model, not another install.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("toolkit").__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    env["MLFLOW_REGISTRY_URI"] = registry_uri()
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


def server_command(copy: str, host: str, port: int, workers: int, timeout: int) -> list[str]:
    """``mlflow models serve`` on the local copy, in this interpreter, with no environment built
    from the model's own requirements (``--env-manager local``)."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", copy, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers), "-t", str(timeout)]


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking Linux to SIGTERM the server when this process dies (even by
    SIGKILL); ``mlflow models serve`` passes the same on to its uvicorn.  None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only makes one call
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return arm


@contextlib.contextmanager
def _forwarding(proc: subprocess.Popen) -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM/SIGHUP to this process are passed on to the server while it runs; a second
    one kills it.  Yields the state: ``signal`` (the first received) and ``deadline``."""
    state: dict[str, Any] = {"signal": None, "deadline": None}

    def forward(signum: int, _frame: Any) -> None:
        if state["signal"] is not None:
            _kill_group(proc, signal.SIGKILL)
            return
        state["signal"] = signum
        state["deadline"] = time.monotonic() + STOP_GRACE_S
        _signal_server(proc)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, forward) for s in handled}
    try:
        yield state
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _signal_server(proc: subprocess.Popen) -> None:
    """Stop uvicorn (the child of ``mlflow models serve``) gracefully, so that the command returns
    its status; before uvicorn exists, stop the command itself (SIGTERM).

    uvicorn is sent SIGINT whatever this process received: after its graceful shutdown it raises
    the signal it caught again (uvicorn >= 0.29), and a SIGTERM then kills it (status -15, which
    ``mlflow models serve`` reports with a traceback), while SIGINT ends it with status 0.
    """
    import psutil

    try:
        children = psutil.Process(proc.pid).children()
    except psutil.Error:
        children = []
    if not children:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGINT)


def _kill_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Nothing the server started outlives it: wait for its session, then kill what is left."""
    deadline = time.monotonic() + grace_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_group(proc, signal.SIGKILL)


def run_server(cmd: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Run the server until it exits: (its exit status, the signal that stopped it, if any)."""
    # A session of its own: a terminal's Ctrl-C reaches the server once, through _forwarding.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent())
    try:
        with _forwarding(proc) as state:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if state["deadline"] is not None and time.monotonic() > state["deadline"]:
                        _kill_group(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
        _reap_group(proc)
    return (rc if rc >= 0 else 128 - rc), state["signal"]


def main() -> int:
    args = build_parser().parse_args()
    host = _host(args.host)
    port = _whole(args.port, "port", 1, 65535, 5000)
    workers = _whole(args.workers, "workers", 1, 64, 1)
    timeout = _whole(args.timeout, "timeout", 1, 86400, 60)
    _check_port(host, port)

    from mlproject._cli import say_made
    from toolkit.console import say
    from toolkit.serving import resolve
    from toolkit.serving.loader import require_device
    from toolkit.tracking import log_params

    # Everything is checked before a server starts: a bad URI, a tampered or unsigned file, a
    # model not served by the project's loader, a GPU model on a machine without a GPU.
    source = resolve(args.model_uri)
    verified = source.verified
    label = verified.label if verified is not None else args.model_uri
    try:
        _check_servable(source.local_path, label)
        require_device(source)
        home, copy = _private_copy(source)
    finally:
        if verified is not None:
            verified.cleanup()
    try:
        launcher = os.environ.get("MLFLOW_RUN_ID")
        if launcher:  # under `mlflow run`: its run says what it served
            log_params(launcher, {"serve.model_id": source.model_id or "", "serve.model_name": source.name or "",
                                  "serve.model_version": source.version or ""})
        say(f"verified {label} (logged model {source.model_id}): its files match the tracking store's record")
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        if not _is_loopback(host):
            say(f"warning: listening on {host}: every machine that can reach this one can query the model "
                "(the scoring server has no authentication)")
        say(f"serving it at {url}/invocations from a private verified copy ({copy}), pickle loading off; "
            "Ctrl-C stops it")
        code, stopped_by = run_server(server_command(copy, host, port, workers, timeout), server_env())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    how = f"stopped by {signal.Signals(stopped_by).name}" if stopped_by else "exited"
    say(f"server {how} with status {code}; the verified copy is removed")
    if code != 0 and not stopped_by:
        _server_failed(code, port)
    say_made([f"served {label} at {url}/invocations ({how}, status {code})"], _source_run(source))
    return code


def _server_failed(code: int, port: int) -> None:
    """One line for a server that ended on its own with an error; ``mlflow run``'s run FAILED with it."""
    from toolkit.errors import ModelError, option_hint
    from toolkit.redact import redact

    error = ModelError(f"mlflow models serve exited with status {code} (its log is above)",
                       f"read its last lines; if port {port} is in use, pass another, e.g. "
                       f"{option_hint('port', port + 1)}")
    print(redact(f"error: {error}"), file=sys.stderr)
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        with contextlib.suppress(Exception):
            from toolkit.tracking.runs import mark_failed

            mark_failed(launcher, error)


def _source_run(source: Any) -> str | None:
    """The run that trained the served model (for ``look:``), if the store still has it."""
    try:
        from toolkit.tracking.runs import client

        return client().get_logged_model(source.model_id).source_run_id or None
    except Exception:
        return None


if __name__ == "__main__":
    run_main(main)
