"""A fork server for memory measurements: fresh processes at the cost of a fork.

``python -m softmaxlab.bench._server`` imports torch and the benchmark suites once, runs
nothing, then reads one JSON request per line on stdin and answers one JSON line on stdout:
each request is handled in a child forked from this clean process (no garbage of other
cases, no thread pools started), so one measurement can never pollute another. With
``--no-fork`` (platforms without ``fork``) requests are handled in this process; the client
then starts one server per request.

Request: ``{"target": [module, function, kwargs], "threads": int, "env": {...},
"preload": [module, ...]}`` (library modules the client has imported: imported here,
before forking, so that children pay for no imports); the
function returns a :class:`~softmaxlab.bench.timing.Step` or a dict of them. Answer:
``{"bytes": {key: int}, "method": str}`` or ``{"error": str}``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback

import torch
import torch.fx.experimental.symbolic_shapes  # noqa: F401  (imported by the first autograd.grad)

from softmaxlab.bench import suites  # noqa: F401  (preload: children only fork)
from softmaxlab.bench.memory import measure_request


def _preload(names: list[str]) -> None:
    """Import (in the server, before forking) the library modules the client has loaded;
    one that fails to import is left to the child, which reports the error."""
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001
                pass


def _handle(request: dict) -> dict:
    try:
        return measure_request(request)
    except BaseException as e:  # noqa: BLE001  (answered, never raised)
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}


def _forked(request: dict) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: stray prints go to stderr, the answer to the pipe
        os.close(r)
        os.dup2(2, 1)
        try:
            data = json.dumps(_handle(request)).encode()
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return json.loads(data)
    return {"error": f"measurement process died (wait status {status}; out of memory?)"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Ctrl-C reaches the whole process group: the client handles it and closes stdin, which
    # ends this loop (children inherit the setting and finish their one measurement)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fork = hasattr(os, "fork") and "--no-fork" not in argv
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers on the protocol stream
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        _preload(request.get("preload") or [])
        answer = _forked(request) if fork else _handle(request)
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
