"""The machine, the package versions and the git commit a result was measured with; also
the report of ``softmaxlab env``. :data:`BACKEND_ENV` selects the library's fast path."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

from .. import __version__

#: Values of ``--backend``; the run sets :data:`BACKEND_ENV` to it.
BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "auto")
#: The environment variable through which the library picks its fast path.
BACKEND_ENV = "SOFTMAXLAB_BACKEND"
#: Fields of :func:`machine_info`.
MACHINE_FIELDS: tuple[str, ...] = (
    "host", "platform", "cpu", "cores", "cores_usable", "torch_threads", "memory_bytes",
    "allocator", "gpu", "cuda",
)
#: Packages whose versions are recorded (distribution name -> key in ``versions``).
VERSION_PACKAGES: dict[str, str] = {
    "torch": "torch", "triton": "triton", "entmax": "entmax", "liger-kernel": "liger",
    "cut-cross-entropy": "cce", "numpy": "numpy", "rich": "rich", "matplotlib": "matplotlib",
    "scikit-learn": "sklearn",
}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: glibc allocator settings that change the timings of large outputs (recorded with them;
#: see :mod:`softmaxlab.kernels.cpu.softmax` on fresh pages).
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                    "MALLOC_CONF")


def machine_info() -> dict:
    """Host, CPU model, cores, torch threads, memory, allocator, GPU."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    preload = os.environ.get("LD_PRELOAD", "")
    allocator = next((a for a in ("jemalloc", "tcmalloc", "mimalloc") if a in preload), "system")
    tuned = [f"{k}={os.environ[k]}" for k in MALLOC_VARIABLES if os.environ.get(k)]
    allocator += f" ({', '.join(tuned)})" if tuned else ""
    cuda = torch.cuda.is_available()
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": mem,
        "allocator": allocator,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }


def versions() -> dict:
    """Python, softmaxlab and the packages in :data:`VERSION_PACKAGES` ("not installed"
    when absent); read from package metadata, nothing is imported."""
    out = {"python": platform.python_version(), "softmaxlab": __version__}
    for dist, key in VERSION_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    out["torch"] = torch.__version__
    return out


def git_info() -> dict:
    """The commit of the library's source tree and whether it has uncommitted changes
    (``None`` outside a git checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def rows() -> list[list[object]]:
    """``[name, value]`` rows of the versions, the machine and the commit (``softmaxlab env``)."""
    m, g = machine_info(), git_info()
    commit = g["commit"] and g["commit"][:12] + (" (dirty)" if g["dirty"] else "")
    return ([[k, v] for k, v in versions().items()]
            + [[k.replace("_", " "), m[k]] for k in MACHINE_FIELDS]
            + [["git", commit or "-"]])


@contextlib.contextmanager
def backend_env(backend: str | None):
    """Set :data:`BACKEND_ENV` to ``backend`` for the duration (unchanged when ``None``)."""
    if backend is None:
        yield
        return
    old = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = old
