"""Where runs execute: one interface, in this process, in local worker processes or as Ray
tasks, so the experiments never depend on where they run.

An executor takes ``fn(shared, task)``, the ``shared`` argument (sent once per worker: the
dataset) and the tasks, and yields ``(task, result)`` pairs as the runs finish. While a task
runs, it can report progress with :func:`emit`; the executor hands each event to
``on_event`` in the calling process (from worker processes through a queue, read while it
waits for results).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue as _queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

__all__ = ["EXECUTORS", "Executor", "InProcess", "LocalProcesses", "RayTasks", "check_address",
           "emit", "executor", "import_ray", "ray_session"]

#: ``--executor``: local processes (or this process for one job), or Ray tasks.
EXECUTORS = ("local", "ray")
#: Seconds to wait for a TCP answer at a Ray ``host:port`` before ``ray.init`` (which
#: retries for minutes).
CONNECT_S = 5.0
#: What to install when Ray is missing.
RAY_INSTALL = 'pip install "softmaxlab[ray]"'

#: Where :func:`emit` sends events: a callable (in process), a queue (in a worker) or None.
_EVENTS: Any = None
#: How often (seconds) the parent reads the workers' events while it waits.
POLL_S = 0.2


def emit(event: Any) -> None:
    """Report progress from inside a task (a picklable value); a no-op when nobody
    listens."""
    if _EVENTS is None:
        return
    if callable(_EVENTS):
        _EVENTS(event)
    else:
        _EVENTS.put(event)


class Executor(Protocol):
    def map(self, fn: Callable[[Any, Any], Any], shared: Any, tasks: Sequence[Any],
            on_event: Callable[[Any], None] | None = None) -> Iterator[tuple[Any, Any]]:
        """Run ``fn(shared, task)`` for every task; yield ``(task, result)`` as each ends;
        pass what the tasks :func:`emit` to ``on_event``."""


class InProcess:
    """Runs the tasks one after the other in this process."""

    def map(self, fn, shared, tasks, on_event=None):
        global _EVENTS
        before, _EVENTS = _EVENTS, on_event
        try:
            for task in tasks:
                yield task, fn(shared, task)
        finally:
            _EVENTS = before


_SHARED: Any = None


#: How often a worker checks that its parent is alive (the fallback of PR_SET_PDEATHSIG).
WATCHDOG_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` does, also after ``kill -9`` of the parent
    (which runs no clean-up): on Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``);
    everywhere a daemon thread checks ``os.getppid()`` every :data:`WATCHDOG_S` seconds and
    exits when the process was re-parented."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os._exit(1)

    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(shared: Any, parent: int, events: Any = None) -> None:
    global _SHARED, _EVENTS
    die_with_parent(parent)
    _SHARED, _EVENTS = shared, events
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _call(fn: Callable, task: Any) -> Any:
    return fn(_SHARED, task)


class LocalProcesses:
    """``jobs`` spawned worker processes (``concurrent.futures.ProcessPoolExecutor``); each
    ends with this process, however this process ends (:func:`die_with_parent`)."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def map(self, fn, shared, tasks, on_event=None):
        context = multiprocessing.get_context("spawn")
        events = context.Queue() if on_event is not None else None
        pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker,
                                   initargs=(shared, os.getpid(), events))

        def drain() -> None:
            while events is not None:
                try:
                    event = events.get_nowait()
                except _queue.Empty:
                    return
                on_event(event)

        try:
            pending = {pool.submit(_call, fn, t): t for t in tasks}
            while pending:
                done, _ = wait(pending, timeout=POLL_S if events is not None else None,
                               return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    yield pending.pop(future), future.result()
            pool.shutdown(wait=True)  # the workers have exited: their events are all sent
            drain()
        except BaseException:  # Ctrl-C, or the caller stopped early: stop the runs now
            for process in list(pool._processes.values()):  # no public API before 3.14
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def import_ray():
    """The ``ray`` module; an ``ImportError`` naming the install command when it is missing."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"Ray is not installed ({e}); install it with {RAY_INSTALL}"
                          ) from None
    return ray


def check_address(address: str) -> None:
    """A ``ValueError`` naming ``--address`` when nothing answers at its ``host:port``
    (``auto`` is left to Ray, which fails fast when no cluster runs here)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        if address != "auto":
            raise ValueError(f"--address must be auto, host:port or ray://host:port, "
                             f"got {address!r}")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as e:
        raise ValueError(f"--address {address}: nothing answers there "
                         f"({e.strerror or e}); start Ray with `ray start --head` or give "
                         "another address") from None


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int) -> Iterator[Any]:
    """The ``ray`` module, connected: to the Ray this process already has open, else to
    ``address`` (``"auto"``, ``"host:port"``, ``"ray://host:port"``), else to a new local Ray
    of ``cpus`` CPUs; a connection opened here is shut down on exit. An address that cannot
    be reached is a ``ValueError`` naming ``--address``."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        check_address(address)
    where = {"num_cpus": cpus} if address is None else {"address": address}
    try:
        ray.init(**where, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        if address is None:
            raise
        raise ValueError(f"--address {address}: cannot connect to Ray "
                         f"({str(e).strip().splitlines()[0]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _ray_call(fn: Callable, shared: Any, task: Any, events: Any) -> Any:
    global _EVENTS
    before, _EVENTS = _EVENTS, events
    try:
        return fn(shared, task)
    finally:
        _EVENTS = before


class RayTasks:
    """Each task a Ray task of one CPU, at most ``jobs`` at a time: on the Ray cluster at
    ``address``, or on a local Ray of ``jobs`` CPUs started for the call (:func:`ray_session`).
    ``shared`` goes to the object store once; the tasks' events come back through a Ray
    queue, read while waiting for results. Ctrl-C (or the caller stopping early) cancels the
    tasks still running."""

    def __init__(self, jobs: int, address: str | None = None):
        self.jobs, self.address = jobs, address

    def map(self, fn, shared, tasks, on_event=None):
        if not tasks:
            return
        with ray_session(self.address, self.jobs) as ray:
            from ray.util.queue import Empty, Queue

            events = Queue() if on_event is not None else None
            remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
            shared_ref = ray.put(shared)
            todo, pending = list(tasks), {}

            def drain() -> None:
                while events is not None:
                    try:
                        event = events.get_nowait()
                    except Empty:
                        return
                    on_event(event)

            try:
                while todo or pending:
                    while todo and len(pending) < self.jobs:
                        task = todo.pop(0)
                        pending[remote.remote(fn, shared_ref, task, events)] = task
                    ready, _ = ray.wait(list(pending), num_returns=1,
                                        timeout=POLL_S if events is not None else None)
                    drain()  # a task's events are queued before its result is ready
                    for ref in ready:
                        yield pending.pop(ref), ray.get(ref)
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
                if events is not None:
                    events.shutdown()


def executor(jobs: int, kind: str = "local", address: str | None = None) -> Executor:
    """``kind="ray"``: :class:`RayTasks` (at ``address``, else on a local Ray); ``"local"``:
    in-process for one job, else ``jobs`` local worker processes."""
    if kind == "ray":
        return RayTasks(jobs, address)
    if kind != "local":
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if address is not None:
        raise ValueError(f"--address {address} needs --executor ray")
    return InProcess() if jobs == 1 else LocalProcesses(jobs)
