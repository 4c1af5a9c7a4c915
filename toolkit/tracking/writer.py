"""A background MLflow writer: one thread or one separate process that writes runs one at a time.

A search writes one child run per trial, and writing one is tens of milliseconds of CPU, almost
all of it SQLAlchemy in Python.  Written on a thread of the driver, the runs overlap the trials
and cost no start-up; but the thread holds the GIL that the search loop and the Dask client
need, so when trials take less than a write (a few milliseconds each), results wait to be
picked up and trials to be handed out.  A spawned process, reused by every search of this
driver process, keeps the driver's thread free then, for ~2.6 s of CPU and ~200 MiB to start.
``KMEANS_LIFECYCLE_WRITER`` chooses: ``auto`` (default; :func:`writer_for` takes a process
only for many trials on small data), ``process`` or ``thread`` (figures: benchmarks/RESULTS.md).

Still one writer: jobs run strictly one after another, in submission order.  Each job carries
the tracking and registry URIs of the moment it was submitted (pinned for the job with
:func:`toolkit.tracking.runs.using_store`), so a driver that switches stores (tests do) writes
each run where it belongs.  If no process can be started, writes fall back to one thread of
this process, as they do where the driver's main module cannot be imported again by the writer
process (``python -`` reading a script from its standard input).  A writer process that dies at
start-up, before its first job (its imports failed: a broken ``PYTHONPATH``, a package removed
under a running driver), fails every job waiting for it with a one-line :class:`WriterError`:
the search stops there, in bounded time, instead of waiting for writes that will never come.

The writer is not a single point of failure.  If its process dies (killed, out of memory), a
new one is started and every job it had not finished is sent again, in order, flagged as a
replay (:func:`replaying`) so that a job which had half-written, or wholly written, its run
before the death does not write it twice (:func:`toolkit.search.record.log_trial_run` looks its
run up first).  A job that was running at each of :data:`MAX_DEATHS_PER_JOB` deaths fails with
a :class:`WriterError`; after :data:`MAX_RESTARTS` deaths the writes go to a thread instead.

Nor does it outlive its driver: the process asks Linux for a parent-death signal (SIGKILL) and
a thread of it watches its parent's pid (elsewhere, the only guard), so a driver killed with
``kill -9`` leaves no writer holding the tracking store's files open.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from toolkit._compat import executor_is_broken
from toolkit.errors import ToolkitError

__all__ = ["AUTO_MAX_VALUES", "AUTO_MIN_TRIALS", "MAX_DEATHS_PER_JOB", "MAX_RESTARTS", "MODE_ENV", "ChildWriter",
           "WriterError", "replaying", "shared_writer", "writer_for", "writer_mode"]

#: Where child runs are written: ``auto`` (default), ``process`` or ``thread``.
MODE_ENV = "KMEANS_LIFECYCLE_WRITER"
_MODES = ("auto", "process", "thread")
#: ``auto`` writes from a process only for searches of at least this many trials ...
AUTO_MIN_TRIALS = 32
#: ... on data of at most this many values (rows x features): trials of a few milliseconds,
#: which come faster than a thread holding the driver's GIL can write their runs.
AUTO_MAX_VALUES = 50_000

#: A job running when the writer process died this many times fails (it may be what kills it).
MAX_DEATHS_PER_JOB = 2
#: After this many deaths of writer processes, writes go to a thread of the driver.
MAX_RESTARTS = 4


class WriterError(ToolkitError):
    """The child-run writer could not run a job (its process died under it, or none can start)."""


_REPLAY: contextvars.ContextVar[bool] = contextvars.ContextVar("writer_replay", default=False)


def replaying() -> bool:
    """In a writer job: whether this job is sent again after a writer process died under it or
    before it (its work may be done in part or in whole: look before writing again)."""
    return _REPLAY.get()


def writer_mode() -> str:
    """``KMEANS_LIFECYCLE_WRITER``, checked: ``auto`` (unset), ``process`` or ``thread``.

    Raises:
        ConfigError: any other value.
    """
    from toolkit.errors import ConfigError

    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ConfigError(f"{MODE_ENV}={os.environ[MODE_ENV]!r} is not a writer kind",
                          f"set it to one of {', '.join(_MODES)}, or unset it (auto)")
    return mode


def writer_for(n_trials: int, n_values: int, writer: ChildWriter | None = None) -> ChildWriter:
    """``writer`` (default: this process's shared one), set to write a search's child runs from
    a process or a thread.

    ``n_trials``: the trials the search will run; ``n_values``: its data's rows x features.
    Under ``auto`` a process is taken up only for many trials on small data (at least
    :data:`AUTO_MIN_TRIALS` on at most :data:`AUTO_MAX_VALUES`), and one already running is
    kept (its start is paid).  A writer process costs ~2.6 s of CPU, ~1 s of wall and ~200 MiB
    to start (MLflow imported again); it earns that back only when trials take less than a
    write, where a writer thread would hold the GIL the driver needs to hand out the next
    trials (benchmarks/RESULTS.md, 2026-12-07).  ``process`` and ``thread`` are obeyed.

    Raises:
        ConfigError: ``KMEANS_LIFECYCLE_WRITER`` names no writer kind.
    """
    mode = writer_mode()
    writer = writer if writer is not None else shared_writer()
    if mode == "thread":
        writer.prefer(False)
    elif mode == "process" or (n_trials >= AUTO_MIN_TRIALS and n_values <= AUTO_MAX_VALUES):
        writer.prefer(True)
    return writer


def _absolute(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute: the writer process may sit in another folder."""
    from toolkit.tracking._sqlite import PREFIX, file_part

    part = file_part(uri)
    return PREFIX + os.path.abspath(part[0]) + part[1] if part else uri


def _run_job(stores: tuple[str, str | None], fn: Callable[..., Any], args: tuple,
             kwargs: dict, replay: bool = False) -> tuple[Any, float, float]:
    """In the writer: run ``fn`` against the submitter's stores; (result, wall s, CPU s)."""
    from toolkit.tracking.runs import using_store

    wall, cpu = time.perf_counter(), time.thread_time()
    token = _REPLAY.set(replay)
    try:
        with using_store(*stores):
            out = fn(*args, **kwargs)
    finally:
        _REPLAY.reset(token)
    return out, time.perf_counter() - wall, time.thread_time() - cpu


#: How often the writer checks that its driver is alive where no parent-death signal exists.
_PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """In a new writer process: end it when ``parent`` (the driver) dies, however it dies.

    Linux sends the parent-death signal when the thread that started this process ends, so
    the driver starts writers only from one thread that lives as long as it does
    (:class:`_Keeper`).  The watching thread covers other systems (and a parent that died
    before the signal was asked for): an orphan is re-parented, so its parent's pid changes.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc prctl here: the watcher will do
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def _leave() -> None:
    # The writer's jobs are all done (the pool hands its process the stop signal only then):
    # skip the teardown of an interpreter full of MLflow, SQLAlchemy and matplotlib, which
    # the driver would otherwise wait for at its own exit.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _warm(figures: bool = True) -> None:
    """In a new writer process: lower its priority, import what writing runs needs before the
    first real job arrives, and arrange a quick exit.  ``figures=False`` (a dead writer's
    successor, whose backlog is waiting) leaves the figures' imports to the jobs that draw."""
    from toolkit import _speedups

    if _speedups.quick_exit_allowed():
        atexit.register(_leave)
    _speedups.lower_priority()  # bookkeeping: the fits come first (nice 10 unless switched off)
    if not _speedups.enabled():
        return  # no head start: the first jobs import what they need
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    if not figures:
        return
    # A search's last jobs draw its figures: matplotlib and Optuna's importance evaluator are
    # imported now, at this process's low priority, not while the driver waits on them.
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot
        import optuna.importance  # noqa: F401


def _main_reimportable() -> bool:
    """Whether a spawned writer process can import the driver's ``__main__`` again, as the
    ``spawn`` start method does: a module run by name (``-m``), a script file that exists, or no
    file at all (``-c``, an interactive session).  ``python -`` names ``<stdin>``, which does not."""
    import multiprocessing.process as mp_process

    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    return os.path.exists(os.path.join(mp_process.ORIGINAL_DIR or os.getcwd(), path))


def _died_starting(warmed: concurrent.futures.Future | None) -> WriterError:
    """The error of the jobs that waited for a writer process which died at start-up."""
    why = ""
    if warmed is not None and warmed.done() and warmed.exception() is not None:
        exc = warmed.exception()
        if not isinstance(exc, BrokenProcessPool):  # its own error, returned before it died
            why = f" ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    return WriterError(
        f"the child-run writer process died at start-up, before its first job{why}; its own error, "
        "if any, is printed above on stderr",
        "check that a new interpreter of this environment imports the toolkit and MLflow "
        "(python -c 'import toolkit.tracking.writer, mlflow': PYTHONPATH, installed packages), or set "
        f"{MODE_ENV}=thread to write from the driver's own thread",
    )


class _Keeper:
    """One daemon thread, as long-lived as this process, that starts every writer process and
    sends a dead writer's jobs to its successor.

    Linux's parent-death signal reaches a child when the *thread* that started it ends, not
    only its process: a writer started from a short-lived thread (a pool's callback thread, a
    caller's worker) would be killed with that thread.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="mlflow-writer-keeper", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            fn, done = self._calls.get()
            try:
                out = fn()
            except BaseException as exc:  # handed to the caller, if one waits
                if done is not None:
                    done.set_exception(exc)
            else:
                if done is not None:
                    done.set_result(out)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the keeper's thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, done))
        return done.result()

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the keeper's thread later."""
        self._calls.put((fn, None))


_KEEPER: _Keeper | None = None
_KEEPER_LOCK = threading.Lock()


def _keeper() -> _Keeper:
    global _KEEPER
    with _KEEPER_LOCK:
        if _KEEPER is None:
            _KEEPER = _Keeper()
        return _KEEPER


class _Job:
    """One submitted job: what to run, where it was last sent, and its caller's future."""

    __slots__ = ("args", "deaths", "fn", "future", "kwargs", "pool", "replay", "stores")

    def __init__(self, stores: tuple[str, str], fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.stores, self.fn, self.args, self.kwargs = stores, fn, args, kwargs
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.pool: concurrent.futures.Executor | None = None
        self.replay = False
        self.deaths = 0

    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class ChildWriter:
    """Run MLflow writes one at a time off the driver's thread.

    **Call order.**  :meth:`start` (optional: the first :meth:`submit` starts it too), then any
    number of :meth:`submit`, then :meth:`shutdown` (the shared writer's runs at exit).  A job
    may be submitted after a shutdown: a new writer process is started for it.

    **Ownership.**  The writer owns its process (or thread) and the jobs it has not finished;
    the caller owns each job's future.  A job's function and arguments are pickled copies:
    the job cannot change the caller's objects, and returns its result through the future.

    **Thread-safety.**  :meth:`submit`, :meth:`start` and :meth:`shutdown` may be called from
    any thread; jobs run strictly one at a time, in submission order, whichever thread
    submitted them.  Writer processes are started from one long-lived thread (:class:`_Keeper`).

    **What is persisted, when.**  Nothing by the writer itself: a job writes to the tracking
    store of the moment it was *submitted*, when it runs; its future resolves once it has.
    A process that dies mid-job is replaced and its unfinished jobs sent again (flagged
    :func:`replaying`), so a job must be idempotent given that flag.  :meth:`shutdown` returns
    once every job has ended.

    **Raises.**  The future raises what the job raised (the job's own errors, e.g. an MLflow
    exception), or :class:`WriterError` when the job was running at :data:`MAX_DEATHS_PER_JOB`
    process deaths, or the writer process died at start-up before its first job (every job
    waiting for it fails at once; the next :meth:`submit` tries a new process), or no writer
    could be started, or the interpreter is shutting down.
    :meth:`submit` itself does not raise for a failed job; a job's function must pickle.

    Args:
        process: write in a spawned process (default); ``False`` writes on one thread.
    """

    def __init__(self, process: bool = True) -> None:
        # Reentrant: a job that is done already runs its callback (_landed) inside add_done_callback.
        self._lock = threading.RLock()
        self._process = process
        self._pool: concurrent.futures.Executor | None = None
        self._jobs: list[_Job] = []  # not finished yet, in submission order
        self._deaths = 0
        self._warmed: concurrent.futures.Future | None = None  # the writer process's first job

    @property
    def kind(self) -> str:
        return "process" if isinstance(self._pool, concurrent.futures.ProcessPoolExecutor) else "thread"

    @property
    def deaths(self) -> int:
        """Writer processes that died under this writer (each was replaced)."""
        return self._deaths

    def prefer(self, process: bool) -> None:
        """Write the jobs submitted from now on from a process (or a thread), where that is a change.

        The switch happens only while the writer is idle (no job unfinished), so jobs still run
        one at a time in submission order; otherwise the current writer goes on.  A process is
        not taken up again once :data:`MAX_RESTARTS` of them died.
        """
        with self._lock:
            if process and self._deaths >= MAX_RESTARTS:
                return
            self._process = process
            if self._pool is None or self._jobs or self.kind == ("process" if self._wants_process() else "thread"):
                return  # nothing running, jobs unfinished, or already what a new start would give
            old, self._pool = self._pool, None
        old.shutdown(wait=False)  # no job left on it: it ends by itself

    def _wants_process(self) -> bool:
        """Whether a start now would try a process: asked for, and the driver's main module can
        be imported again by one (else a thread, whatever was asked)."""
        return self._process and _main_reimportable()

    def _start(self) -> concurrent.futures.Executor:
        # Only on the keeper's thread: see _Keeper.
        if self._wants_process():
            try:
                pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_die_with, initargs=(os.getpid(),),
                )
                # Starts the process now; imports overlap the caller's work.
                self._warmed = pool.submit(_warm, self._deaths == 0)
                return pool
            except (OSError, RuntimeError, ValueError):  # no processes here: one thread will do
                pass
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")

    def _repair(self) -> None:
        """On the keeper's thread: a live pool, and a dead one's unfinished jobs sent to it again."""
        with self._lock:
            if self._pool is not None and not executor_is_broken(self._pool):
                return
            dead, self._pool = self._pool, None
            oldest = None
            if dead is not None:
                self._deaths += 1
                warmed = self._warmed
                if warmed is None or not warmed.done() or warmed.exception() is not None:
                    # It died before its first job: its imports fail in a new interpreter, and so
                    # would its successor's.  Every waiting job fails now (the next submit tries a
                    # new process): waiting for writes that never come would hang the search.
                    dead.shutdown(wait=False)
                    self._fail_all_locked(_died_starting(warmed))
                    return
                if self._deaths >= MAX_RESTARTS:
                    # Processes keep dying: one thread writes from now on.
                    self._process = False
                else:
                    # One process runs one job at a time, in order: the oldest job sent to the
                    # dead one was running when it died (or none was).
                    oldest = next((j for j in self._jobs if j.pool is dead and not j.future.done()), None)
                dead.shutdown(wait=False)
            self._pool = self._start()
            # Every unfinished job not on the new writer, in submission order: the dead one's,
            # and any whose submission met a dead writer.
            orphans = [j for j in self._jobs if not j.future.done() and j.pool is not self._pool]
            for job in orphans:
                job.deaths += job is oldest
                job.replay = job.replay or job.pool is not None
                if job.deaths >= MAX_DEATHS_PER_JOB:
                    self._fail(job, WriterError(
                        f"the child-run writer process died {job.deaths} times while running {job.name()}",
                        "see the system log for what killed it (out of memory?); a resume writes the runs "
                        "of the trials already computed",
                    ))
                elif not self._send_locked(job):
                    _keeper().post(self._repair)  # the new writer died already: the next one takes the rest
                    return

    def _send_locked(self, job: _Job) -> bool:
        pool = self._pool
        if pool is None or executor_is_broken(pool):
            return False
        try:
            inner = pool.submit(_run_job, job.stores, job.fn, job.args, job.kwargs, job.replay)
        except BrokenProcessPool:  # it died just now
            return False
        except RuntimeError as exc:  # the interpreter is shutting down: nothing takes new jobs
            self._fail(job, WriterError(f"the child-run writer cannot take {job.name()}: {exc}",
                                        "a resume writes the runs of the trials already computed"))
            return True
        job.pool = pool
        inner.add_done_callback(functools.partial(self._landed, job, pool))
        return True

    def _landed(self, job: _Job, pool: concurrent.futures.Executor, inner: concurrent.futures.Future) -> None:
        exc = None if inner.cancelled() else inner.exception()
        if isinstance(exc, BrokenProcessPool) or inner.cancelled():
            # Not this job's fault: the keeper starts another writer and sends it again.
            _keeper().post(self._repair)
            return
        with self._lock:
            if job.pool is not pool or job.future.done():
                return  # already sent to the next writer (which answers for it)
            self._jobs.remove(job)
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(inner.result())

    def _fail_all_locked(self, exc: WriterError) -> None:
        """Fail every unfinished job with ``exc`` (under ``self._lock``)."""
        for job in list(self._jobs):
            if not job.future.done():
                self._fail(job, exc)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        # Under self._lock.
        if job in self._jobs:
            self._jobs.remove(job)
        if not job.future.done():
            job.future.set_exception(exc)

    def start(self) -> None:
        """Start the writer now (its imports take ~2 s), so the first write does not wait."""
        _keeper().call(self._repair)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Queue ``fn(*args, **kwargs)``; the future's result is ``(fn's result, wall seconds,
        CPU seconds)`` of the job in the writer.

        ``fn`` and its arguments must pickle (a module-level function, plain data).  Should the
        writer process die before it answers, ``fn`` runs again in the next one with
        :func:`replaying` true: a job must then tell whether its work was done already.
        """
        from toolkit.tracking.runs import registry_uri, tracking_uri

        job = _Job((_absolute(tracking_uri()), _absolute(registry_uri())), fn, args, kwargs)
        with self._lock:
            self._jobs.append(job)
        for _ in range(MAX_RESTARTS + 2):
            with self._lock:
                if job.future.done() or job.pool is not None or self._send_locked(job):
                    return job.future
            _keeper().call(self._repair)  # no writer yet, or a dead one: start one
        with self._lock:
            self._fail(job, WriterError(f"no child-run writer could be started for {job.name()}",
                                        f"set {MODE_ENV}=thread"))
        return job.future

    def shutdown(self) -> None:
        """Wait for every job (replays included), then stop the writer."""
        with self._lock:
            pending = [j.future for j in self._jobs]
        concurrent.futures.wait(pending)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=False)


_SHARED: ChildWriter | None = None


def shared_writer() -> ChildWriter:
    """This process's writer, started on first use and closed at exit."""
    global _SHARED
    if _SHARED is None:
        # auto: a thread until a search asks for a process (:meth:`ChildWriter.prefer`).
        _SHARED = ChildWriter(process=writer_mode() == "process")
        atexit.register(_SHARED.shutdown)
    return _SHARED
