"""softmaxlab.losses.graph: graph_tv_penalty against a float64 reference, its forms and bad
arguments."""

from __future__ import annotations

import pytest
import torch

from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS
from ._common import REDUCTIONS, grad_of

F64 = torch.float64


# ================================================================== graph_tv_penalty
EDGES = [(0, 1, 2.0), (1, 2, 0.5), (3, 0, 1.0), (4, 4, 3.0), (2, 4, 0.25), (1, 0, 0.7)]
V_G = 5


def graph_forms():
    idx = torch.tensor([[i for i, _, _ in EDGES], [j for _, j, _ in EDGES]])
    val = torch.tensor([wt for _, _, wt in EDGES], dtype=F64)
    dense = torch.zeros(V_G, V_G, dtype=F64)
    dense[idx[0], idx[1]] = val
    sparse = torch.sparse_coo_tensor(idx, val, (V_G, V_G), check_invariants=True)
    return {"edges": (idx, val), "dense": dense, "sparse": sparse}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["edges", "dense", "sparse"])
def test_graph_tv_vs_reference(form, reduction):
    g = gen("gtv")
    p = torch.softmax(torch.randn(3, 4, V_G, generator=g, dtype=F64), -1)
    graph = graph_forms()[form]
    for lam in (1.0, 0.3, 0.0):
        out, (gp,) = grad_of(lambda q, *, lam=lam: L.graph_tv_penalty(q, graph, weight=lam,
                                                          reduction=reduction), p)
        ref, (gr,) = grad_of(
            lambda q, *, lam=lam: R.graph_tv(q, EDGES, weight=lam, reduction=reduction), p)
        assert_close(out, ref, LOSS[F64], f"lambda={lam}")
        assert_close(gp, gr, LOSS[F64], f"grad lambda={lam}")


def test_graph_tv_forms_agree_and_constant_rows():
    p = torch.softmax(torch.randn(6, V_G, generator=gen("gtv2"), dtype=F64), -1)
    vals = [L.graph_tv_penalty(p, gr, reduction="none") for gr in graph_forms().values()]
    assert_close(vals[0], vals[1], LOSS[F64])
    assert_close(vals[0], vals[2], LOSS[F64])
    const = torch.full((4, V_G), 1.0 / V_G, dtype=F64)
    for gr in graph_forms().values():
        assert torch.equal(L.graph_tv_penalty(const, gr, reduction="none"),
                           torch.zeros(4, dtype=F64))
    p1 = torch.tensor([[0.7, 0.2, 0.1]])
    assert abs(L.graph_tv_penalty(p1, (torch.tensor([[0], [1]]), torch.tensor([2.0]))).item()
               - 1.0) < 1e-6


def test_graph_tv_bad_args():
    p = torch.softmax(torch.randn(2, V_G, dtype=F64), -1)
    forms = graph_forms()
    idx, val = forms["edges"]
    neg = val.clone()
    neg[1] = -0.5
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, (idx, neg))
    dense = forms["dense"].clone()
    dense[2, 3] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, dense)
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, dense.to_sparse())
    for shape in ((V_G, V_G + 1), (V_G + 1, V_G + 1), (V_G,)):
        with pytest.raises(ValueError, match="adjacency"):
            L.graph_tv_penalty(p, torch.ones(shape, dtype=F64))
    with pytest.raises(ValueError):
        L.graph_tv_penalty(p, (torch.tensor([[0], [V_G]]), torch.tensor([1.0])))
    with pytest.raises(ValueError):
        L.graph_tv_penalty(p, (idx, val[:-1]))
    with pytest.raises(ValueError, match="weight"):
        L.graph_tv_penalty(p, forms["dense"], weight=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        L.graph_tv_penalty(p, forms["dense"], reduction="avg")
    with pytest.raises(TypeError):
        L.graph_tv_penalty(p, [[0, 1]])
