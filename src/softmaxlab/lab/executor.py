"""Where runs execute: one interface, so a distributed executor can be added without
touching the experiments.

An executor takes ``fn(shared, task)``, the ``shared`` argument (sent once per worker: the
dataset) and the tasks, and yields ``(task, result)`` pairs as the runs finish.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

__all__ = ["Executor", "InProcess", "LocalProcesses", "executor"]


class Executor(Protocol):
    def map(self, fn: Callable[[Any, Any], Any], shared: Any,
            tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        """Run ``fn(shared, task)`` for every task; yield ``(task, result)`` as each ends."""


class InProcess:
    """Runs the tasks one after the other in this process."""

    def map(self, fn, shared, tasks):
        for task in tasks:
            yield task, fn(shared, task)


_SHARED: Any = None


def _init_worker(shared: Any) -> None:
    global _SHARED
    _SHARED = shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _call(fn: Callable, task: Any) -> Any:
    return fn(_SHARED, task)


class LocalProcesses:
    """``jobs`` spawned worker processes (``concurrent.futures.ProcessPoolExecutor``)."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def map(self, fn, shared, tasks):
        pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(shared,))
        try:
            pending = {pool.submit(_call, fn, t): t for t in tasks}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        except BaseException:  # Ctrl-C, or the caller stopped early: stop the runs now
            for process in list(pool._processes.values()):  # no public API before 3.14
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def executor(jobs: int) -> Executor:
    """In-process for one job, else ``jobs`` local worker processes."""
    return InProcess() if jobs == 1 else LocalProcesses(jobs)
