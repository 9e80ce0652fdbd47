"""Where runs execute: one interface, so a distributed executor can be added without
touching the experiments.

An executor takes ``fn(shared, task)``, the ``shared`` argument (sent once per worker: the
dataset) and the tasks, and yields ``(task, result)`` pairs as the runs finish. While a task
runs, it can report progress with :func:`emit`; the executor hands each event to
``on_event`` in the calling process (from worker processes through a queue, read while it
waits for results).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue as _queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

__all__ = ["Executor", "InProcess", "LocalProcesses", "emit", "executor"]

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


def executor(jobs: int) -> Executor:
    """In-process for one job, else ``jobs`` local worker processes."""
    return InProcess() if jobs == 1 else LocalProcesses(jobs)
