"""Checks of the lab's options, shared by the command line (argparse ``type=``) and the
Python API: each raises ``ValueError`` naming the flag and the value, before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

__all__ = ["GOALS", "check_device", "check_executor", "check_goal", "check_positive_float",
           "check_positive_int", "arg_type"]

#: ``--goal``: what the recommendation optimises (see ``softmaxlab.lab.evidence``).
GOALS = ("accuracy", "calibration", "sparsity", "speed")


def _shown(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _parsed(value, convert: Callable):
    """``value``, or ``convert(value)`` if it is text (``None`` where that fails)."""
    if not isinstance(value, str):
        return value
    try:
        return convert(value)
    except ValueError:
        return None


def check_positive_int(flag: str, value) -> int:
    """``value`` (an int, or its text) if it is an integer >= 1."""
    number = _parsed(value, int)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {_shown(value)}")
    return number


def check_positive_float(flag: str, value) -> float:
    """``value`` (a number, or its text) as a float if it is finite and > 0."""
    number = _parsed(value, float)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not (
            math.isfinite(number) and number > 0):
        raise ValueError(f"{flag} must be a finite number > 0, got {_shown(value)}")
    return float(number)


def check_goal(value: str) -> str:
    if value not in GOALS:
        raise ValueError(f"--goal must be one of {', '.join(GOALS)}, got {value!r}")
    return value


def check_executor(value: str, address: str | None = None) -> str:
    """``--executor``: ``local``, or ``ray`` with Ray installed; ``--address`` only with
    ``ray``, and answering (:func:`softmaxlab.lab.executor.check_address`)."""
    from .executor import EXECUTORS, check_address, import_ray

    if value not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {value!r}")
    if address is not None and value != "ray":
        raise ValueError(f"--address {address} needs --executor ray")
    if value == "ray":
        try:
            import_ray()
        except ImportError as e:
            raise ValueError(f"--executor ray: {e}") from None
    if address is not None:
        check_address(address)
    return value


def check_device(value: str, flag: str = "--device") -> str:
    """A torch device that exists here: ``cpu``, ``cuda[:N]`` with a GPU, ``mps`` on a Mac
    with Metal, or another type that torch can allocate on."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {value!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)"
                         ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = ("this torch is a CPU-only build" if torch.version.cuda is None
                     else "no GPU is visible")
            raise ValueError(f"{flag} {value!r}: CUDA is not available here ({build}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {value!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {value!r}: Metal (MPS) is not available here; "
                             "use --device cpu")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as e:  # noqa: BLE001 - whatever torch says, the device is unusable
            raise ValueError(f"{flag} {value!r} is not usable here "
                             f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return value


def arg_type(check: Callable, flag: str) -> Callable[[str], object]:
    """An argparse ``type=`` that runs ``check(flag, text)`` (or ``check(text)``) and turns
    its ``ValueError`` into argparse's one-line usage error."""
    def convert(text: str):
        try:
            return check(flag, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{flag} ")) from None

    convert.__name__ = flag.lstrip("-")
    return convert
