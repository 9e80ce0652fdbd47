"""The files a compare run directory holds, and the rule that protects everything else.

``compare`` and ``report`` write ``summary.csv``, ``report.md``, ``report.html`` and
``plots/*.png`` next to ``results.jsonl``. They never overwrite a file they did not write:
each file written is recorded with its SHA-256 in :data:`MANIFEST`, and a file that is about
to be replaced must be listed there with its current content (a file edited since, or one
that was there before, is refused with a message that names it). Run directories written
before the manifest existed are recognised by their contents (a softmaxlab report's first
line, the summary's header) next to a ``results.jsonl``.

:func:`prepare` checks up front that ``--out`` can be a run directory (not a file, creatable
and writable), so that a bad ``--out`` fails before any training, in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import results

__all__ = ["MANIFEST", "check_overwrite", "prepare", "remove_outputs", "write_outputs"]

MANIFEST = ".softmaxlab-files.json"
#: The start of each file a softmaxlab report writes (recognises older run directories).
_SIGNATURES = {"report.md": b"# softmaxlab compare:", "summary.csv": b"mapping,status,",
               "report.html": b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
                              b"softmaxlab compare"}
_PNG = b"\x89PNG"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ours(directory: Path, name: str, manifest: dict[str, str]) -> bool:
    """Whether ``directory/name`` (which exists) holds what softmaxlab wrote there."""
    path = directory / name
    if not path.is_file():
        return False
    data = path.read_bytes()
    if name in manifest:
        return manifest[name] == _sha(data)
    if manifest or not (directory / results.RESULTS).is_file():
        return False
    # a run directory from before the manifest: recognise the files by their contents
    if name.startswith("plots/") and name.endswith(".png"):
        return data.startswith(_PNG)
    signature = _SIGNATURES.get(name)
    return signature is not None and data.startswith(signature)


def check_overwrite(directory: str | Path, names) -> None:
    """``ValueError`` naming the files among ``names`` (relative paths) that exist in
    ``directory`` and were not written there by softmaxlab (or were changed since)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    manifest = _manifest(directory)
    foreign = [n for n in names if (directory / n).exists() and not _ours(directory, n, manifest)]
    if foreign:
        raise ValueError(
            f"--out {directory} holds {', '.join(foreign)}, which softmaxlab did not write (or "
            "which changed since): it never overwrites those; move them away or choose "
            "another --out")


def write_outputs(directory: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> content) into ``directory``, each atomically, after
    :func:`check_overwrite`; record them in the manifest."""
    directory = Path(directory)
    check_overwrite(directory, files)
    manifest = _manifest(directory)
    for name, data in files.items():
        _write_atomic(directory / name, data)
        manifest[name] = _sha(data)
    _write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True)
                                         + "\n").encode())


def remove_outputs(directory: str | Path) -> list[str]:
    """Delete what compare wrote in ``directory`` (``results.jsonl`` and the unchanged files
    of the manifest; anything else stays); returns the names removed."""
    directory = Path(directory)
    manifest = _manifest(directory)
    removed = []
    names = [n for n in manifest if _ours(directory, n, manifest)]
    if not manifest:
        names = [n for n in (*_SIGNATURES, *(f"plots/{p.name}" for p in
                                             (directory / "plots").glob("*.png")))
                 if (directory / n).exists() and _ours(directory, n, manifest)]
    for name in [*names, results.RESULTS, MANIFEST]:
        path = directory / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    with contextlib.suppress(OSError):
        (directory / "plots").rmdir()  # only when empty
    return removed


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def prepare(out: str | Path, flag: str = "--out") -> Path:
    """Check that ``out`` is, or can become, a writable directory; ``ValueError`` (one line,
    naming ``flag``) otherwise. Creates nothing."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder; give a folder for the run")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag} {out}: {probe} is a file, so no folder can be made there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: {probe} is not writable")
    return out


def make(out: Path, flag: str = "--out") -> Path:
    """Create ``out`` (after :func:`prepare`) and prove it writable with a probe file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {out}: cannot write there ({e.strerror or e})") from None
    return out
