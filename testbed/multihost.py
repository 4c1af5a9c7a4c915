"""A multi-host deployment on one machine: one network namespace per host, joined by a bridge.

Hosts and their addresses (``10.213.0.0/24``; the range exists only inside the bed's
namespaces, and no namespace has a default route, so nothing is routed anywhere else)::

    db         10.213.0.2   PostgreSQL (roles/databases ``mlflow`` and ``optuna``, owner ``kmeans``)
    s3         10.213.0.3   S3-compatible object store (moto's server mode: see docs/testbed.md)
    tracking   10.213.0.4   mlflow server: runs in PostgreSQL, artifacts proxied to s3://mlflow/
    scheduler  10.213.0.5   dask scheduler
    worker1    10.213.0.11  dask worker (1 thread)
    worker2    10.213.0.12  dask worker (1 thread)
    driver     10.213.0.20  where the project's entry points run

The bridge lives in a namespace of its own (the "switch"); each host has one veth pair, ``eth0``
inside the host and ``v-<host>`` on the switch, so cutting a host's link is
``ip -n <switch> link set v-<host> down`` (:meth:`Bed.cut`).  Every host also has a private
``/tmp`` (a bind mount of ``<base>/hosts/<host>/tmp`` in a mount namespace of its own): a path
that only one host can read stays on that host, as on real machines.

Every process is started in a session of its own and stopped by its own handle (its process
group), then whatever is left in a namespace is killed and the namespace deleted: on leaving the
``with`` block, on an exception, at interpreter exit (``atexit``) and, from the command line, on
SIGTERM/SIGHUP/SIGINT.  Where namespaces cannot be made (not root, no CAP_NET_ADMIN) the bed
says so in one line (:func:`unavailable`) and a test skips.

Command line::

    python -m testbed.multihost check            # can a bed be made here? (one line)
    python -m testbed.multihost up               # start, print the hosts, wait for Ctrl-C
    python -m testbed.multihost run -- CMD ...   # start, run CMD on the driver host, tear down
    python -m testbed.multihost clean            # delete namespaces left by a killed bed
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import ctypes
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from testbed._procs import kill_process_group, pg_bindir, stop_process_group, wait_until_ready

__all__ = ["HOSTS", "PORTS", "SUBNET", "Bed", "BedError", "address", "unavailable"]

REPO = Path(__file__).resolve().parents[1]
#: The bed's private range (a /24): it exists only inside the bed's namespaces.
SUBNET = "10.213.0"
#: Host name -> last octet of its address.
HOSTS: dict[str, int] = {"db": 2, "s3": 3, "tracking": 4, "scheduler": 5, "worker1": 11, "worker2": 12, "driver": 20}
#: The service ports (fixed: every host has its own address, so nothing else can hold them).
PORTS: dict[str, int] = {"db": 5432, "s3": 9000, "tracking": 5000, "scheduler": 8786}
WORKERS = ("worker1", "worker2")
#: PostgreSQL role owning the databases (README's recipe).
ROLE = "kmeans"
#: Buckets made on the object store: the tracking server's artifacts, and data.
BUCKETS = ("mlflow", "data")
_PREFIX = "kb"  # namespace names: kb<pid>-<host>, so `clean` can tell a dead bed's from a live one's
_CLONE_NEWNET = 0x40000000
#: The tracking server waits for this file (in the tracking host's /tmp) before it connects.
_TRACKING_GATE = "/tmp/db-ready"
#: ``python -c`` program: import MLflow's CLI and SQL store (the slow part of a server start),
#: wait (bounded) for the gate, then run ``mlflow <argv[2:]>`` as the ``mlflow`` command does.
_GATED_MLFLOW = """
import os, sys, time
import mlflow.cli, mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store
deadline = time.monotonic() + 300
while not os.path.exists(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit("testbed: the database was not ready within 300 s")
    time.sleep(0.05)
sys.argv = ["mlflow", *sys.argv[2:]]
mlflow.cli.cli.main(prog_name="mlflow")
"""
T = TypeVar("T")


class BedError(RuntimeError):
    """A service of the bed did not start (the message carries the tail of its log)."""


def address(host: str) -> str:
    """The IPv4 address of ``host`` on the bed's bridge."""
    return f"{SUBNET}.{HOSTS[host]}"


def _sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)


def unavailable() -> str | None:
    """Why no bed can be made here (one line), or None.

    Root with CAP_NET_ADMIN and iproute2 are needed: a probe namespace is made and deleted.
    """
    if shutil.which("ip") is None:
        return "testbed: no `ip` (iproute2) -- apt-get install iproute2"
    if os.geteuid() != 0:
        return "testbed: network namespaces need root (CAP_NET_ADMIN) -- run as root"
    probe = f"{_PREFIX}probe{os.getpid()}"
    made = _sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"testbed: cannot create a network namespace ({made.stderr.strip() or 'ip netns add failed'})"
    try:
        veth = _sh("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            return f"testbed: cannot create veth pairs ({veth.stderr.strip()})"
        bind = _sh("ip", "netns", "exec", probe, "unshare", "-m", "--propagation", "private", "true", check=False)
        if bind.returncode != 0:
            return f"testbed: cannot make mount namespaces ({bind.stderr.strip()})"
    finally:
        _sh("ip", "netns", "del", probe, check=False)
    return None


def missing_parts() -> str | None:
    """What the bed's services need that is not installed (one line), or None."""
    if pg_bindir() is None:
        return "testbed: PostgreSQL server binaries not found -- apt-get install postgresql"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "testbed: no 'postgres' user to run PostgreSQL as (root cannot) -- apt-get install postgresql"
    for module, fix in (("moto.server", 'pip install "moto[server]"'), ("s3fs", "pip install s3fs"),
                        ("psycopg", 'pip install "psycopg[binary]"'), ("distributed", "pip install distributed")):
        try:
            __import__(module)
        except ImportError:
            return f"testbed: {module} is not installed -- {fix}"
    return None


class _NetnsThread:
    """One thread living in a host's network namespace: sockets it opens are that host's.

    ``setns(CLONE_NEWNET)`` moves only the calling thread, so a single long-lived thread keeps
    pooled connections (an MLflow client's, boto3's) on the host they were opened from.
    """

    def __init__(self, netns: str) -> None:
        self._netns = netns
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"netns-{netns}",
                                                           initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self._netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self._netns}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Proc:
    host: str
    name: str
    popen: subprocess.Popen
    log: Path
    sig: int = signal.SIGTERM


@dataclass
class Bed:
    """The running bed: start it with ``with Bed() as bed:`` (or :meth:`start` / :meth:`close`).

    Attributes (after start): ``tracking_uri``, ``scheduler_address``, ``s3_endpoint``,
    ``optuna_storage`` (password by ``${PGPASSWORD}`` reference), ``env`` (the driver's
    environment: tracking URI, PostgreSQL password, object-store credentials), and ``timings``
    (seconds each service took to come up).
    """

    base: Path | None = None
    worker_memory: str = "1GiB"
    #: The scheduler drops a worker not heard from for this long (checked as often), and its
    #: tasks run elsewhere: a cut link is noticed in ttl..2*ttl.  Workers beat every 0.5 s, but
    #: on a heavily loaded machine a busy worker was seen to miss 5 s of beats (dropped four
    #: times over, a KilledWorker with no link cut): 10 s is the shortest that held there.
    worker_ttl: str = "10s"
    keep: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tag = f"{_PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.password = "pw-" + secrets.token_hex(12)  # unmistakable in any text it might leak into
        self.aws_key = "AKIA" + secrets.token_hex(8).upper()
        self.aws_secret = "s3-" + secrets.token_hex(16)
        self._procs: list[_Proc] = []
        self._namespaces: list[str] = []
        self._threads: dict[str, _NetnsThread] = {}
        self._own_base = self.base is None
        self._closed = False
        self._lock = threading.Lock()
        self.tracking_uri = f"http://{address('tracking')}:{PORTS['tracking']}"
        self.scheduler_address = f"tcp://{address('scheduler')}:{PORTS['scheduler']}"
        self.s3_endpoint = f"http://{address('s3')}:{PORTS['s3']}"
        self.optuna_storage = f"postgresql+psycopg://{ROLE}:${{PGPASSWORD}}@{address('db')}:{PORTS['db']}/optuna"

    # ------------------------------------------------------------------ naming and paths
    def netns(self, host: str) -> str:
        """The network namespace of ``host``."""
        return f"{self.tag}-{host}"

    def tmp(self, host: str) -> Path:
        """Where ``host``'s private ``/tmp`` lives, seen from outside the bed."""
        assert self.base is not None
        return self.base / "hosts" / host / "tmp"

    @property
    def logs(self) -> dict[str, Path]:
        """Each started process's log (stdout and stderr), by name."""
        return {p.name: p.log for p in self._procs}

    # ------------------------------------------------------------------ environments
    def _common_env(self, **extra: str) -> dict[str, str]:
        # Nothing of the outer shell's MLflow, Dask, libpq or AWS settings: each host is told
        # only what a real host of its kind would be.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "PG", "DASK_", "AWS_", "FSSPEC_"))}
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env.update(PYTHONPATH=path, PYTHONUNBUFFERED="1", TMPDIR="/tmp", XDG_DATA_HOME="/tmp/xdg",
                   NO_PROXY="*", no_proxy="*")
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(proxy, None)
        env.update(extra)
        return env

    def _s3_env(self) -> dict[str, str]:
        """Object-store credentials and endpoint, as any AWS SDK reads them from the environment."""
        return {"AWS_ACCESS_KEY_ID": self.aws_key, "AWS_SECRET_ACCESS_KEY": self.aws_secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def env(self) -> dict[str, str]:
        """The driver host's environment: what a user there would export."""
        return self._common_env(MLFLOW_TRACKING_URI=self.tracking_uri, PGPASSWORD=self.password,
                                **self._s3_env())

    def worker_env(self) -> dict[str, str]:
        """A worker host's environment: the object store (it reads data itself), no database."""
        return self._common_env(**self._s3_env())

    # ------------------------------------------------------------------ processes
    def wrap(self, host: str, cmd: Sequence[str], user: str | None = None, cwd: str | Path = "/tmp") -> list[str]:
        """``cmd`` as run on ``host``, from ``cwd``: its network namespace, its private ``/tmp``, as ``user``."""
        drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        # `ip netns exec` gives the command a mount namespace of its own (slave to the root's):
        # the bind mount of the host's /tmp is seen by this command and its children only.
        mount = 'mount --bind "$0" /tmp'
        inside = _repo_under_tmp()
        if inside is not None:
            # A checkout under /tmp would vanish behind the private /tmp: every host sees it at
            # its own path, mounted onto the host's /tmp (recursively bound, so it comes along).
            mount = f'mount --bind {shlex.quote(str(REPO))} "$0"/{shlex.quote(str(inside))} && mount --rbind "$0" /tmp'
        return ["ip", "netns", "exec", self.netns(host), "sh", "-c",
                f'{mount} && cd "$1" && shift && exec "$@"', str(self.tmp(host)), str(cwd),
                *drop, *map(str, cmd)]

    def start_process(self, host: str, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                      user: str | None = None, cwd: str | None = None, sig: int = signal.SIGTERM) -> subprocess.Popen:
        """Start ``cmd`` on ``host`` in a session of its own; stopped by :meth:`close`."""
        assert self.base is not None
        log = self.base / "logs" / f"{name}.log"
        with open(log, "w") as fh:
            popen = subprocess.Popen(self.wrap(host, cmd, user, cwd or "/tmp"), stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(env if env is not None else self._common_env()))
        self._procs.append(_Proc(host, name, popen, log, sig))
        return popen

    def run(self, cmd: Sequence[str], *, host: str = "driver", timeout: float = 300,
            env: Mapping[str, str] | None = None, user: str | None = None,
            cwd: str | Path | None = REPO) -> subprocess.CompletedProcess:
        """Run ``cmd`` on ``host`` (default: the driver, from the repository root, with :attr:`env`)
        and wait for it (bounded: its whole process group is killed after ``timeout``)."""
        popen = subprocess.Popen(self.wrap(host, cmd, user, cwd or "/tmp"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                 env=dict(env if env is not None else self.env))
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(popen)
            out, err = popen.communicate()
            err += f"\n[testbed] killed after {timeout:.0f} s"
            return subprocess.CompletedProcess(popen.args, 124, out, err)
        return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)

    def popen(self, cmd: Sequence[str], *, host: str = "driver", env: Mapping[str, str] | None = None,
              cwd: str | Path | None = REPO) -> subprocess.Popen:
        """Start ``cmd`` on ``host`` without waiting (output piped, text); the caller waits for it,
        and :meth:`close` kills its group if it is still running then."""
        popen = subprocess.Popen(self.wrap(host, cmd, cwd=cwd or "/tmp"), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                 start_new_session=True, env=dict(env if env is not None else self.env))
        self._procs.append(_Proc(host, f"driver-cmd-{popen.pid}", popen, Path(os.devnull)))
        return popen

    def on(self, host: str, fn: Callable[..., T], *args: Any, timeout: float = 60, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` in this process, with its sockets on ``host``'s network
        (one thread per host, kept: a client made there keeps its connections there)."""
        if host not in self._threads:
            self._threads[host] = _NetnsThread(self.netns(host))
        return self._threads[host].call(fn, *args, timeout=timeout, **kwargs)

    # ------------------------------------------------------------------ the network
    def cut(self, host: str) -> None:
        """Take ``host``'s link down (its switch port): packets to and from it are dropped."""
        _sh("ip", "-n", self.switch, "link", "set", f"v-{host}", "down")

    def restore(self, host: str) -> None:
        """Bring ``host``'s link back up."""
        _sh("ip", "-n", self.switch, "link", "set", f"v-{host}", "up")

    def _network(self) -> None:
        self._add_netns(self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for host, _ in HOSTS.items():
            ns = self.netns(host)
            self._add_netns(ns)
            _sh("ip", "-n", self.switch, "link", "add", f"v-{host}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _sh("ip", "-n", self.switch, "link", "set", f"v-{host}", "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            folder = self.tmp(host)
            folder.mkdir(parents=True)
            folder.chmod(0o1777)  # a /tmp: the postgres user writes in the db host's
            inside = _repo_under_tmp()
            if inside is not None:
                (folder / inside).mkdir(parents=True)  # where the checkout is mounted (see wrap)

    def _add_netns(self, name: str) -> None:
        _sh("ip", "netns", "add", name)
        self._namespaces.append(name)

    # ------------------------------------------------------------------ services
    def _wait(self, what: str, proc: subprocess.Popen | None, log: Path | None, check: Callable[[], bool],
              limit_s: float) -> None:
        wait_until_ready(what, check, proc, log, limit_s, poll_s=0.3, error=BedError)

    def _accepts(self, host: str, port: int, src: str = "driver") -> bool:
        def probe() -> bool:
            with socket.create_connection((address(host), port), timeout=1):
                return True
        return self.on(src, probe, timeout=10)

    def _http_ok(self, url: str, src: str = "driver") -> bool:
        def probe() -> bool:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        return self.on(src, probe, timeout=10)

    def _postgres(self) -> None:
        bindir = pg_bindir()
        assert bindir is not None
        env = self._common_env(LC_ALL="C")
        done = subprocess.run(
            self.wrap("db", [bindir / "initdb", "-D", "/tmp/pgdata", "-U", "postgres", "-E", "UTF8", "--locale=C",
                             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"], user="postgres"),
            capture_output=True, text=True, env=env, timeout=180, check=False)
        if done.returncode != 0:
            raise BedError(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        with open(self.tmp("db") / "pgdata" / "pg_hba.conf", "a") as fh:  # the bed's hosts, by password
            fh.write(f"host all all {SUBNET}.0/24 scram-sha-256\n")
        proc = self.start_process(
            "db", "postgres",
            [bindir / "postgres", "-D", "/tmp/pgdata", "-h", address("db"), "-p", str(PORTS["db"]), "-k", "/tmp",
             # A throwaway cluster: no disk syncs.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            env=env, user="postgres", sig=signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown

        def ready() -> bool:
            return subprocess.run(self.wrap("db", [bindir / "pg_isready", "-q", "-h", "/tmp", "-p", str(PORTS["db"])]),
                                  env=env, timeout=20, check=False).returncode == 0

        self._wait("postgres", proc, self.logs["postgres"], ready, 90)
        sql = (f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'; "
               f"CREATE DATABASE mlflow OWNER {ROLE}; CREATE DATABASE optuna OWNER {ROLE};")
        done = subprocess.run(self.wrap("db", [bindir / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "/tmp",
                                               "-p", str(PORTS["db"]), "-U", "postgres"], user="postgres"),
                              input=sql.replace("; ", ";\n"), capture_output=True, text=True, env=env, timeout=60,
                              check=False)
        if done.returncode != 0:
            raise BedError(f"psql failed: {done.stderr.replace(self.password, '***')[-2000:]}")

    def _object_store(self) -> subprocess.Popen:
        # moto's server mode (see docs/testbed.md for why not a real server): objects in memory.
        return self.start_process("s3", "s3", [sys.executable, "-c", "from moto.server import main; main()",
                                               "-H", address("s3"), "-p", str(PORTS["s3"])])

    def _buckets(self) -> None:
        def make() -> None:
            s3 = self.s3_client()
            for bucket in BUCKETS:
                s3.create_bucket(Bucket=bucket)
        self.on("driver", make, timeout=60)

    def s3_client(self) -> Any:
        """A boto3 S3 client on the bed's object store (use it through :meth:`on`)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=self.aws_key, aws_secret_access_key=self.aws_secret)

    def _tracking(self) -> subprocess.Popen:
        """``mlflow server``, started before its database is up: it imports (seconds of CPU) while
        PostgreSQL initialises, and connects once :meth:`start` opens its gate (a file in the
        tracking host's /tmp).  After the gate it is the stock CLI: ``mlflow.cli.cli`` with
        ``server ...``, which creates MLflow's tables on the empty database and starts uvicorn."""
        env = self._common_env(PGPASSWORD=self.password, MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint,
                               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self._s3_env())
        args = ["server", "--host", address("tracking"), "--port", str(PORTS["tracking"]),
                "--backend-store-uri", f"postgresql+psycopg://{ROLE}@{address('db')}:{PORTS['db']}/mlflow",
                "--artifacts-destination", "s3://mlflow/artifacts", "--workers", "1"]
        return self.start_process("tracking", "mlflow-server",
                                  [sys.executable, "-c", _GATED_MLFLOW, _TRACKING_GATE, *args], env=env)

    def _open_gate(self) -> None:
        (self.tmp("tracking") / Path(_TRACKING_GATE).name).touch()

    def _dask(self) -> subprocess.Popen:
        sched = self.start_process("scheduler", "dask-scheduler", [
            sys.executable, "-m", "dask", "scheduler", "--host", address("scheduler"),
            "--port", str(PORTS["scheduler"]), "--no-dashboard"],
            # A worker past its TTL is first restarted through its nanny (behind the same cut link):
            # a 10 s connect timeout, not 30 s, bounds that before the worker is removed.
            env=self._common_env(DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=self.worker_ttl,
                                 DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="10s"))
        for host in WORKERS:
            threading.Thread(target=self._supervise_worker, args=(host,), name=f"testbed-{host}", daemon=True).start()
        return sched

    def _supervise_worker(self, host: str, restarts: int = 5) -> None:
        """Run ``dask worker`` on ``host`` and start it again when it exits, as a real worker host's
        supervisor (systemd ``Restart=``, a Kubernetes pod) does: a worker the scheduler drops
        (its link cut for longer than the TTL) is told to close, and its whole ``dask worker``
        process ends, nanny included.  Bounded: ``restarts`` times, 2 s apart, never once the bed
        is closing."""
        cmd = [sys.executable, "-m", "dask", "worker", self.scheduler_address, "--host", address(host),
               "--name", host, "--nworkers", "1", "--nthreads", "1", "--memory-limit", self.worker_memory,
               "--no-dashboard", "--local-directory", "/tmp/dask"]
        for n in range(restarts + 1):
            with self._lock:  # close() sets _closed under the lock: no process starts after it
                if self._closed:
                    return
                proc = self.start_process(host, f"dask-{host}" + (f"-{n}" if n else ""), cmd, env=self.worker_env())
            proc.wait()
            time.sleep(2)

    def _registered_workers(self) -> int:
        return len({name for _, what, name in self.worker_events() if what == "register"})

    def worker_events(self) -> list[tuple[float, str, str]]:
        """The scheduler's view of its workers, from its log: ``(unix time, "register" | "remove",
        worker name)`` in order (a link cut shows as a ``remove`` once the worker TTL runs out,
        its return as a new ``register``)."""
        text = self.logs["dask-scheduler"].read_text(errors="replace")
        events = []
        for m in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - distributed\.scheduler - INFO - "
                             r"(Register|Remove) worker addr: \S+ name: ([^\s,]+)", text, re.MULTILINE):
            when = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            events.append((when, m[3].lower(), m[4]))
        return events

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Bed:
        """Make the network and start every service; on any failure, tear down and raise."""
        why = unavailable() or missing_parts()
        if why:
            raise BedError(why)
        atexit.register(self.close)
        try:
            t0 = time.monotonic()
            if self.base is None:
                self.base = Path(tempfile.mkdtemp(prefix="kmeans-testbed-"))
            (self.base / "logs").mkdir(parents=True, exist_ok=True)
            self._network()
            self.timings["network"] = time.monotonic() - t0
            # Everything starts at once; each wait below is for one service's own prerequisites.
            # The tracking server imports while PostgreSQL initialises and is let in once the
            # database exists (its table creation needs only the database).
            s3 = self._object_store()
            sched = self._dask()
            tracking = self._tracking()
            self._postgres()
            self._open_gate()
            self.timings["postgres"] = time.monotonic() - t0
            self._wait("object store", s3, self.logs["s3"], lambda: self._accepts("s3", PORTS["s3"]), 90)
            self._buckets()
            self.timings["s3"] = time.monotonic() - t0
            self._wait("dask scheduler", sched, self.logs["dask-scheduler"],
                       lambda: self._accepts("scheduler", PORTS["scheduler"]), 90)
            self._wait("dask workers", sched, self.logs["dask-scheduler"], lambda: self._registered_workers() >= 2, 120)
            self.timings["dask"] = time.monotonic() - t0
            self._wait("mlflow server", tracking, self.logs["mlflow-server"],
                       lambda: self._http_ok(f"{self.tracking_uri}/health"), 180)
            self.timings["tracking"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process by its own handle (reverse order), then kill what is left in the
        bed's namespaces and delete them; the base folder too unless ``keep`` or given."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for thread in self._threads.values():
            thread.close()
        for proc in reversed(self._procs):
            stop_process_group(proc.popen, proc.sig, grace_s=5.0, sweep=True)
        for ns in reversed(self._namespaces):
            _kill_netns(ns)
            _sh("ip", "netns", "del", ns, check=False)
        if self.base is not None and self._own_base and not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Bed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """The hosts, their addresses and services, one per line."""
        what = {"db": f"PostgreSQL :{PORTS['db']} (databases mlflow, optuna; role {ROLE})",
                "s3": f"S3 (moto server mode) {self.s3_endpoint}, buckets {', '.join(BUCKETS)}",
                "tracking": f"mlflow server {self.tracking_uri} (PostgreSQL store, artifacts s3://mlflow/artifacts)",
                "scheduler": f"dask scheduler {self.scheduler_address}",
                "worker1": "dask worker (1 thread)", "worker2": "dask worker (1 thread)",
                "driver": "entry points (python -m mlproject.* / mlflow run)"}
        return "\n".join(f"  {h:<10} {address(h):<12} {self.netns(h):<22} {what[h]}" for h in HOSTS)


def _repo_under_tmp() -> Path | None:
    """The checkout's path relative to ``/tmp`` when it lives there (a clone in a temp dir), else None."""
    try:
        return REPO.resolve().relative_to("/tmp")
    except ValueError:
        return None


def _kill_netns(ns: str) -> None:
    """SIGKILL whatever still runs in the bed's namespace ``ns`` (it can only be the bed's)."""
    done = _sh("ip", "netns", "pids", ns, check=False)
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def clean() -> list[str]:
    """Delete namespaces left by beds whose process is gone (a bed killed with SIGKILL)."""
    done = _sh("ip", "netns", "list", check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{_PREFIX}(\d+)-\w+", name)
        if m and not Path(f"/proc/{m[1]}").exists():
            _kill_netns(name)
            _sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _signals_close(bed: Bed) -> Iterator[None]:
    """SIGTERM/SIGHUP end the command as Ctrl-C does: through ``with``, so the bed is torn down."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``check``, ``up``, ``run -- CMD``, ``clean``."""
    parser = argparse.ArgumentParser(prog="python -m testbed.multihost", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "up", "run", "clean"])
    parser.add_argument("--base", type=Path, help="folder for the hosts' /tmp and logs (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the base folder (logs) after tear-down")
    parser.add_argument("--timeout", type=float, default=600, help="run: seconds before CMD is killed")
    parser.add_argument("--worker-memory", default=Bed.worker_memory,
                        help=f"each worker host's dask worker --memory-limit (default {Bed.worker_memory})")
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []  # the driver's command, verbatim
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action == "clean":
        print("\n".join(clean()) or "nothing to clean")
        return 0
    why = unavailable() or missing_parts()
    if args.action == "check" or why:
        print(why or "testbed: namespaces, veth pairs and mount namespaces can be made here")
        return 1 if why else 0
    bed = Bed(base=args.base, keep=args.keep, worker_memory=args.worker_memory)
    with _signals_close(bed), bed:
        print(f"testbed up in {bed.timings['tracking']:.1f} s:\n{bed.describe()}", flush=True)
        if args.action == "up":
            print(json.dumps({"MLFLOW_TRACKING_URI": bed.tracking_uri, "scheduler": bed.scheduler_address,
                              "optuna_storage": bed.optuna_storage, "s3": bed.s3_endpoint}), flush=True)
            print(f"run on the driver: ip netns exec {bed.netns('driver')} ...; Ctrl-C tears down", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        if not cmd:
            parser.error("run needs a command after --")
        # The command is told the scheduler as a user on the driver host would export it.
        done = bed.run(cmd, timeout=args.timeout, env={**bed.env, "DASK_SCHEDULER_ADDRESS": bed.scheduler_address})
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
