"""The vocabulary-parallel losses without a process group: each is the single-process
function (the same numbers, bit for bit), and its arguments are checked."""

from __future__ import annotations

import pytest
import torch

import softmaxlab as sl
import softmaxlab.distributed as D
from softmaxlab import losses as L

from .._helpers import gen
from ..tolerances import F64


def _batch(key):
    g = gen("local", key)
    z = torch.randn(2, 3, 7, generator=g, dtype=F64)
    t = torch.randint(0, 7, (2, 3), generator=g)
    t[0, 1] = -100
    return z, t, torch.rand(7, generator=g, dtype=F64) + 0.5


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_not_distributed_is_the_single_process_loss(reduction):
    z, t, w = _batch(reduction)
    kw = {"weight": w, "reduction": reduction, "label_smoothing": 0.1}
    rows, flat = z.reshape(-1, 7), t.reshape(-1)
    shape = t.shape if reduction == "none" else ()
    for mapping in ("softmax", "taylor_softmax"):
        got = D.cross_entropy(z, t, mapping=mapping, **kw)
        assert torch.equal(got, L.cross_entropy(rows, flat, mapping=mapping, **kw).reshape(shape))
    got = D.fenchel_young_loss(z, t, mapping="entmax15", **kw)
    want = L.fenchel_young_loss(rows, flat, mapping="entmax15", **kw).reshape(shape)
    assert torch.equal(got, want)
    h = torch.randn(2, 3, 4, dtype=F64, generator=gen("h"))
    proj = torch.randn(7, 4, dtype=F64, generator=gen("w"))
    kw = {"class_weight": w, "reduction": reduction, "label_smoothing": 0.1, "chunk_size": 2}
    assert torch.equal(D.linear_cross_entropy(h, proj, t, **kw),
                       L.linear_cross_entropy(h, proj, t, **kw))
    p, i = D.softmax_topk(z, 3)
    q, j = sl.softmax_topk(z, 3)
    assert torch.equal(p, q) and torch.equal(i, j)


def test_not_distributed_issues_no_collective():
    z, t, _ = _batch("traffic")
    with D.count_traffic() as traffic:
        D.cross_entropy(z, t)
    assert traffic.collectives == 0 and traffic.bytes == 0


def test_mask_excludes_entries_as_minus_inf():
    z, t, _ = _batch("mask")
    mask = torch.ones(7, dtype=torch.bool)
    mask[[1, 4]] = False
    t = t.masked_fill((t == 1) | (t == 4), 0)
    got = D.cross_entropy(z, t, mask=mask)
    assert torch.equal(got, D.cross_entropy(z.masked_fill(~mask, float("-inf")), t))


def test_bad_arguments_raise():
    z, t, _ = _batch("bad")
    with pytest.raises(TypeError, match=r"group must be a torch\.distributed\.ProcessGroup"):
        D.cross_entropy(z, t, group="world")
    with pytest.raises(ValueError, match="normalized mapping with a log form"):
        D.cross_entropy(z, t, mapping="sparsemax")
    with pytest.raises(ValueError, match="mapping must be one of"):
        D.fenchel_young_loss(z, t, mapping="softmax")
    with pytest.raises(TypeError, match="alpha must be a float"):
        D.fenchel_young_loss(z, t, mapping="entmax", alpha=torch.tensor(1.5))
    with pytest.raises(TypeError, match="has no parameter 'order'"):
        D.fenchel_young_loss(z, t, mapping="entmax", order=2)
    with pytest.raises(ValueError, match="reduction must be one of"):
        D.cross_entropy(z, t, reduction="avg")
    with pytest.raises(ValueError, match="vocabulary dimension"):
        D.cross_entropy(torch.tensor(1.0), t)
    with pytest.raises(TypeError, match="logits must be a real floating-point tensor"):
        D.cross_entropy(t, t)
    h, proj = torch.randn(3, 4), torch.randn(7, 5)
    with pytest.raises(ValueError, match="must agree in d"):
        D.linear_cross_entropy(h, proj, t[0])
    with pytest.raises(TypeError, match="reduce_hidden_grad must be a bool"):
        D.linear_cross_entropy(h, torch.randn(7, 4), t[0], reduce_hidden_grad=1)
    with pytest.raises(TypeError, match="takes no mask"):
        D.linear_cross_entropy(h, torch.randn(7, 4), t[0], mask=torch.ones(7, dtype=bool))
