"""The result document written by ``--out``: its fields, their definitions, save and load."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: Version of the JSON layout below.
SCHEMA = 1
#: Top-level fields of a result document.
DOC_FIELDS: tuple[str, ...] = (
    "schema", "tool", "argv", "suites", "suites_skipped", "quick", "modes", "repeat",
    "backend", "timestamp", "git", "machine", "versions", "copy_bandwidth", "definitions",
    "cases", "rows",
)

DEFINITIONS = {
    "time": "seconds per call of the timed region; median, p20, p80 over the repetitions "
            "(linear interpolation between order statistics); first_s is the first call of "
            "the implementation in this mode in this process (compilation, lazy init); ops of "
            "microseconds are timed as loops of many calls (time per call reported)",
    "modes": {
        "forward": "the op on inputs that do not require grad, under torch.no_grad()",
        "backward": "torch.autograd.grad alone; the forward runs untimed before each repetition",
        "both": "forward + torch.autograd.grad",
    },
    "peak_mem_bytes": "CUDA: torch.cuda.max_memory_allocated() above the memory allocated "
                      "before the call; CPU: growth of the peak resident set while the op runs "
                      "once in a fresh process (see mem_method)",
    "io_bytes": "bytes the op must read and write in this mode (documented per case in "
                "cases[].io); both = forward + backward",
    "gbps": "io_bytes / median_s / 1e9",
    "copy_frac": "gbps / copy_bandwidth[device].gbps (above 1 when the data fits in cache: "
                 "the copy is measured out of cache)",
    "gflops": "flops / median_s / 1e9 (matrix products: 2*N*d*V per GEMM)",
    "ratios": "median_s(candidate) / median_s(baseline), same case and mode, same run "
              "(< 1: the candidate is faster)",
    "mem_ratios": "peak_mem_bytes(candidate) / peak_mem_bytes(baseline); on CPU only when "
                  "one of the two is >= 4 MiB (resident-set peaks resolve a few hundred KiB)",
    "targets": "goals for the candidate: time/memory ratios (met if <= value) and bandwidth "
               "(copy_frac, met if >= value)",
    "copy_bandwidth": "dst.copy_(src) of a large contiguous float32 tensor: 2 * bytes / "
                      "median time (read + write)",
}


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace`` (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def results_dir() -> Path:
    """Where results go by default: the repository's ``benchmarks/results`` when this
    package runs from a source checkout (``<repo>/src/softmaxlab`` beside
    ``<repo>/benchmarks/results``), else ``benchmarks/results`` in the current folder;
    absolute either way."""
    repo = Path(__file__).resolve().parents[3]
    checkout = repo / "benchmarks" / "results"
    if (repo / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return Path.cwd() / "benchmarks" / "results"


def default_out(suites: Sequence[str] | str) -> Path:
    """``<results_dir()>/bench-<suite>-<host>-<date>.json`` (date: UTC, to the second)."""
    name = suites if isinstance(suites, str) else "+".join(suites)
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", platform.node() or "host")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return results_dir() / f"bench-{name}-{host}-{stamp}.json"


def check_out(path: str | os.PathLike) -> Path:
    """``path`` as an absolute result-file path if one can be written there without
    replacing anything but an earlier bench result; ``ValueError`` (one line) otherwise.
    Creates nothing."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a FILE.json")
    if path.exists():
        try:
            load(path)
        except ValueError:
            raise ValueError(f"--out {path} exists and is not a softmaxlab bench result; it "
                             "is never overwritten (choose another file)") from None
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {path}: {probe} is a file, so no folder can be made there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {probe} is not writable")
    return path


def save(doc: dict, path: str | os.PathLike) -> Path:
    """Write the result document as JSON, atomically."""
    return write_atomic(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load(path: str | os.PathLike) -> dict:
    """Read a result document, checking that it is one (``ValueError`` otherwise)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a softmaxlab bench result (not an object)")
    missing = [k for k in ("rows", "machine", "versions") if k not in doc]
    if missing:
        raise ValueError(f"{path} is not a softmaxlab bench result (missing {', '.join(missing)})")
    return doc
