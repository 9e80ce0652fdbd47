"""Doctest collection: the modules here import ``triton``; skip them where it is missing."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("triton") else ["*.py"]
