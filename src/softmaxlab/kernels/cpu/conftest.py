"""Doctest collection: the numba kernel modules import numba; skip them where it is missing."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("numba") else [
    "_jit.py", "scores.py", "sparse.py", "topk.py"]
