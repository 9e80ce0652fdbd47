"""The online normalizer and softmax_topk against plain torch on float64."""

from __future__ import annotations

import functools
import itertools
import random

import pytest
import torch

from softmaxlab.online import OnlineState, online_logsumexp, softmax_topk

NEG_INF = float("-inf")


def _chunks(x: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    edges = [0, *sorted(cuts), x.shape[-1]]
    return [x[..., a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("seed", range(5))
def test_merge_order_does_not_matter(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 101, dtype=torch.float64, generator=g) * 10
    rnd = random.Random(seed)
    cuts = rnd.sample(range(1, 101), 7)
    states = [OnlineState.from_chunk(c) for c in _chunks(x, cuts)]
    expected = x.logsumexp(-1)
    left = functools.reduce(OnlineState.merge, states)
    right = functools.reduce(lambda a, b: b.merge(a), reversed(states))
    shuffled = states[:]
    rnd.shuffle(shuffled)
    # a balanced tree, as a multi-device reduction would do it
    tree = shuffled
    while len(tree) > 1:
        tree = [tree[i].merge(tree[i + 1]) if i + 1 < len(tree) else tree[i]
                for i in range(0, len(tree), 2)]
    for s in (left, right, tree[0]):
        torch.testing.assert_close(s.logsumexp(), expected, rtol=1e-14, atol=1e-14)


def test_empty_state_is_the_identity():
    x = torch.randn(3, 7, dtype=torch.float64)
    s = OnlineState.from_chunk(x)
    e = OnlineState.empty((3,), dtype=torch.float64)
    for m in (s.merge(e), e.merge(s)):
        torch.testing.assert_close(m.logsumexp(), x.logsumexp(-1), rtol=0, atol=0)
    assert torch.equal(e.logsumexp(), torch.full((3,), NEG_INF, dtype=torch.float64))
    assert torch.equal(OnlineState.from_chunk(x[:, :0]).sum, torch.zeros(3, dtype=torch.float64))


def test_extreme_and_excluded_values():
    x = torch.tensor([[1e30, 0.0, -1e30, 5.0], [NEG_INF, NEG_INF, 3.0, NEG_INF],
                      [NEG_INF] * 4, [-1e30, -1e30, -1e30, -1e30]])
    for cuts in ([1], [2], [1, 3], [3]):
        states = [OnlineState.from_chunk(c) for c in _chunks(x, cuts)]
        s = functools.reduce(OnlineState.merge, states)
        lse = s.logsumexp()
        assert lse[0].item() == pytest.approx(1e30)
        assert lse[1].item() == pytest.approx(3.0)
        assert lse[2].item() == NEG_INF
        assert lse[3].item() == pytest.approx(-1e30 + 1.3862943611198906, rel=1e-6)
        p = s.probabilities(x)
        assert not p.isnan().any()
        torch.testing.assert_close(p[:2].double(), torch.softmax(x[:2].double(), -1))
        assert torch.equal(p[2], torch.zeros(4))
        torch.testing.assert_close(p[3], torch.full((4,), 0.25))


def test_nan_stays_in_its_row():
    x = torch.randn(3, 8, dtype=torch.float64)
    x[1, 5] = float("nan")
    s = functools.reduce(OnlineState.merge, [OnlineState.from_chunk(c) for c in _chunks(x, [3])])
    lse = s.logsumexp()
    assert lse[1].isnan() and not lse[[0, 2]].isnan().any()


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_online_logsumexp(dim, chunk):
    x = torch.randn(5, 17, 3, dtype=torch.float64) * 5
    torch.testing.assert_close(online_logsumexp(x, dim, chunk_size=chunk), x.logsumexp(dim),
                               rtol=1e-13, atol=1e-13)


def test_online_logsumexp_half_precision_and_bad_args():
    x = torch.randn(4, 300).half()
    out = online_logsumexp(x, chunk_size=64)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x.float().logsumexp(-1), rtol=1e-3, atol=1e-3)
    for bad, err in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="chunk_size"):
            online_logsumexp(x, chunk_size=bad)
    with pytest.raises(TypeError, match="x"):
        online_logsumexp(torch.ones(3, dtype=torch.long))


def _check_topk(x, k, dim=-1):
    p, idx = softmax_topk(x, k, dim=dim)
    ref_p, ref_idx = torch.softmax(x.double(), dim).topk(k, dim)
    torch.testing.assert_close(p.double(), ref_p, rtol=1e-12, atol=1e-15)
    # every returned index carries the returned probability (ties may pick other indices)
    torch.testing.assert_close(torch.softmax(x.double(), dim).gather(dim, idx), ref_p,
                               rtol=1e-12, atol=1e-15)
    return p, idx, ref_idx


@pytest.mark.parametrize("shape,k,dim", [((7, 50), 10, -1), ((3, 11, 5), 11, 1), ((9,), 1, 0),
                                         ((4, 6), 6, -1), ((6, 4), 3, 0)])
def test_softmax_topk_matches_softmax_then_topk(shape, k, dim):
    x = torch.randn(*shape, dtype=torch.float64) * 3
    _, idx, ref_idx = _check_topk(x, k, dim)
    assert torch.equal(idx, ref_idx)  # no ties in continuous random data


def test_softmax_topk_ties_and_excluded_entries():
    x = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 2.0], [NEG_INF, 1.0, NEG_INF, 1.0, 1.0, 1.0],
                      [NEG_INF] * 6], dtype=torch.float64)
    p, idx, _ = _check_topk(x[:2], 4)
    assert set(idx[0, :3].tolist()) == {1, 2, 3} and idx[0, 3].item() == 5
    assert set(idx[1].tolist()) == {1, 3, 4, 5}
    p, idx = softmax_topk(x, 6)
    assert torch.equal(p[2], torch.zeros(6, dtype=torch.float64))
    assert not p.isnan().any()
    big = torch.tensor([[-1e30, -1e30, -1e30, -1e30], [1e30, -1e30, 0.0, 1e30]])
    p, idx = softmax_topk(big, 2)
    torch.testing.assert_close(p, torch.tensor([[0.25, 0.25], [0.5, 0.5]]), rtol=0, atol=1e-7)


def test_softmax_topk_gradient_and_low_precision():
    x = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softmax_topk(t, 5)[0], (x,))
    xh = x.detach().to(torch.bfloat16)
    p, _ = softmax_topk(xh, 5)
    assert p.dtype == torch.bfloat16
    ref = torch.softmax(xh.double(), -1).topk(5).values
    naive = torch.softmax(xh, -1).topk(5).values.double()
    assert (p.double() - ref).abs().max() <= 2 * (naive - ref).abs().max() + 4e-3


@pytest.mark.parametrize("k,err", [(0, ValueError), (31, ValueError), (-1, ValueError),
                                   (2.0, TypeError), (True, TypeError)])
def test_softmax_topk_bad_k(k, err):
    with pytest.raises(err, match="k"):
        softmax_topk(torch.randn(2, 30), k)


def test_softmax_topk_bad_input():
    with pytest.raises(TypeError, match="x"):
        softmax_topk(torch.ones(3, dtype=torch.int32), 1)
    with pytest.raises(IndexError, match="dim"):
        softmax_topk(torch.ones(3), 1, dim=2)
