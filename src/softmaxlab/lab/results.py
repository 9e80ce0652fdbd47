"""``results.jsonl``: the lab's crash-safe record of finished runs.

One JSON object per line, written by one process only (the one that runs ``compare`` or
``sweep``): each record is appended as one complete line, then flushed and fsync'ed. A line
torn by a crash (``kill -9``, power loss) is the last one and has no final newline:
:func:`read` ignores it and :func:`repair` cuts it off before anything new is appended, so
it is never counted.

Records have ``kind``: ``"run"`` (one finished ``(mapping, seed)``, ``status`` ``ok`` or
``failed``; a sweep's also name their Tune ``trial``), ``"skipped"`` (a mapping that cannot
be trained, with the reason), ``"stopped"`` (a sweep's trial that ASHA stopped early: its
epochs and last validation value) or ``"session"`` (one ``compare`` or ``sweep`` invocation:
wall time, jobs, executor, runs done).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["RESULTS", "read", "repair", "append"]

RESULTS = "results.jsonl"


def _complete_lines(path: Path) -> tuple[list[bytes], int]:
    """The complete lines of ``path`` and the byte length they span."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def read(directory: str | Path) -> list[dict]:
    """Every complete record in ``directory/results.jsonl`` (empty when there is none)."""
    path = Path(directory) / RESULTS
    lines, _ = _complete_lines(path)
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not a JSON record ({e})") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise ValueError(f"{path}: line {i} is not a results record (no 'kind')")
        records.append(record)
    return records


def repair(directory: str | Path) -> None:
    """Cut a torn (unterminated) last line off ``directory/results.jsonl``."""
    path = Path(directory) / RESULTS
    if path.exists():
        _, end = _complete_lines(path)
        if end != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())


def append(directory: str | Path, record: dict) -> None:
    """Append ``record`` as one line, flushed and fsync'ed before returning."""
    line = json.dumps(record) + "\n"
    with open(Path(directory) / RESULTS, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
