"""The registry's element-wise log-scores (``Mapping.log_score``): every normalized mapping
with a log form has one, and it is that log form before normalization, for every parameter
setting (what :mod:`softmaxlab.distributed` normalizes across the shards of a row)."""

from __future__ import annotations

import pytest
import torch

import softmaxlab as sl

from .._helpers import gen, settings
from ..tolerances import F64, ORACLE

LOG_MAPPINGS = [m for m in sl.mappings() if m.log_fn is not None and m.normalized]


@pytest.mark.parametrize("m", LOG_MAPPINGS, ids=lambda m: m.name)
def test_log_score_is_the_log_form(m):
    """``log_fn(z) = log_score(z) - logsumexp(log_score(z))``."""
    assert m.log_score is not None, f"{m.name} has a log form but no log_score"
    z = torch.randn(4, 9, generator=gen("log_score", m.name), dtype=F64) * 3
    for s in settings(m):
        kw = dict(s)
        l = m.log_score(z, **{**m.defaults, **kw})
        torch.testing.assert_close(l - l.logsumexp(-1, keepdim=True), m.log_fn(z, -1, **kw),
                                   rtol=ORACLE[F64].rtol, atol=ORACLE[F64].atol)


@pytest.mark.parametrize("m", LOG_MAPPINGS, ids=lambda m: m.name)
def test_log_score_is_element_wise(m):
    """A column's log-score does not depend on the rest of its row (no per-row shift; a
    few ulps may differ: vectorized math rounds the tail of a short row its own way)."""
    z = torch.randn(3, 8, generator=gen("log_score_cols", m.name), dtype=F64) * 3
    for s in settings(m):
        kw = {**m.defaults, **dict(s)}
        whole = m.log_score(z, **kw)
        parts = torch.cat([m.log_score(z[:, :3], **kw), m.log_score(z[:, 3:], **kw)], -1)
        torch.testing.assert_close(parts, whole, rtol=ORACLE[F64].rtol, atol=ORACLE[F64].atol)
