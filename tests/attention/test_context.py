"""``softmaxlab.attention.use_mapping``: nesting (innermost wins), restoration on exit and on
error, and checked arguments."""

from __future__ import annotations

import pytest

import softmaxlab.attention as sa

from .._helpers import expect_raises


def test_blocks_nest_and_restore():
    assert sa.current_mapping() is None
    with sa.use_mapping("entmax", alpha=1.25):
        assert sa.current_mapping() == ("entmax", {"alpha": 1.25})
        with sa.use_mapping("sparsemax"):
            assert sa.current_mapping() == ("sparsemax", {})
        assert sa.current_mapping() == ("entmax", {"alpha": 1.25})
    assert sa.current_mapping() is None


def test_restored_after_an_error():
    with pytest.raises(KeyError), sa.use_mapping("entmax15"):
        raise KeyError("inside")
    assert sa.current_mapping() is None


@pytest.mark.parametrize("args, kwargs, exc, words", [
    (("softmaxx",), {}, ValueError, ["mapping", "'softmaxx'"]),
    (("entmax",), {"alpha": 0.5}, ValueError, ["alpha", "0.5"]),
    (("sparsemax",), {"alpha": 1.5}, TypeError, ["'alpha'"]),
])
def test_bad_arguments_raise_naming_them(args, kwargs, exc, words):
    def enter():
        with sa.use_mapping(*args, **kwargs):
            pass

    expect_raises(exc, words, enter)
    assert sa.current_mapping() is None
