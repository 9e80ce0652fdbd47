"""Output heads: MoS/MoSS, DS-Softmax, D&D and the cosine classifier (softmaxlab.nn.heads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import softmaxlab as sl
from softmaxlab.nn.heads import (
    CosineClassifier,
    DecoupledOutput,
    DoublySparseSoftmax,
    MixtureOfSoftmaxes,
)

D, V = 6, 9

LOG_PROB_HEADS = {
    "mos": lambda: MixtureOfSoftmaxes(D, V, n_components=3),
    "moss": lambda: MixtureOfSoftmaxes(D, V, n_components=3, mapping="sigsoftmax"),
    "ds": lambda: DoublySparseSoftmax(D, V, n_experts=3),
    "ds_bias": lambda: DoublySparseSoftmax(D, V, n_experts=3, bias=True),
    "dd": lambda: DecoupledOutput(D, V),
    "dd_taylor": lambda: DecoupledOutput(D, V, mapping="taylor_softmax", order=4),
}
ALL_HEADS = {**LOG_PROB_HEADS, "cosine": lambda: CosineClassifier(D, V)}
BATCH_SHAPES = [(5,), (2, 4), (1,)]


def _seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


# --------------------------------------------------------------------------- shapes, sums


@pytest.mark.parametrize("name", ALL_HEADS)
@pytest.mark.parametrize("lead", BATCH_SHAPES, ids=str)
def test_output_shape(name, lead):
    head = _seeded(ALL_HEADS[name]).eval()
    out = head(torch.randn(*lead, D))
    assert out.shape == (*lead, V)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", LOG_PROB_HEADS)
@pytest.mark.parametrize("lead", BATCH_SHAPES, ids=str)
def test_log_probs_exp_sum_to_one(name, lead):
    head = _seeded(LOG_PROB_HEADS[name]).double().eval()
    logp = head(torch.randn(*lead, D, dtype=torch.float64))
    assert (logp <= 1e-12).all()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(lead, dtype=torch.float64))
    torch.testing.assert_close(head.probs(torch.randn(*lead, D, dtype=torch.float64)).sum(-1),
                               torch.ones(lead, dtype=torch.float64))


def test_ds_sums_to_one_over_kept_classes_after_pruning():
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=3)).double()
    with torch.no_grad():
        head.weight[0, :4] *= 1e-3
        head.weight[1, 3:7] *= 1e-3
    assert head.prune(0.03) > 0
    x = torch.randn(50, D, dtype=torch.float64)
    logp = head(x)
    expert, _ = head.route(x)
    kept = head.class_mask[expert]
    assert not torch.isnan(logp).any()
    assert torch.isneginf(logp[~kept]).all() and torch.isfinite(logp[kept]).all()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(50, dtype=torch.float64))


def test_bad_input_shape_names_x():
    for factory in ALL_HEADS.values():
        head = factory()
        with pytest.raises(ValueError, match=r"x must have shape \(\*, in_features=6\)"):
            head(torch.randn(3, D + 1))
        with pytest.raises(TypeError, match="x must be a real floating-point"):
            head(torch.ones(3, D, dtype=torch.long))


# --------------------------------------------------------------------------- MoS


def _mapping_ref64(logits, mapping):
    """Naive float64 probabilities of the mapping (independent of softmaxlab)."""
    if mapping == "softmax":
        e = logits.exp()
    else:  # sigsoftmax: e^z sigmoid(z)
        e = logits.exp() * torch.sigmoid(logits)
    return e / e.sum(-1, keepdim=True)


@pytest.mark.parametrize("mapping", ["softmax", "sigsoftmax"])
def test_mos_equals_direct_float64_mixture(mapping):
    torch.manual_seed(1)
    k = 4
    head = MixtureOfSoftmaxes(D, V, n_components=k, mapping=mapping).double()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    with torch.no_grad():
        pi = (x @ head.prior.weight.T).exp()
        pi = pi / pi.sum(-1, keepdim=True)
        h = torch.tanh(x @ head.latent.weight.T + head.latent.bias)
        p = torch.zeros(3, 5, V, dtype=torch.float64)
        for c in range(k):
            hc = h[..., c * D:(c + 1) * D]
            p += pi[..., c:c + 1] * _mapping_ref64(hc @ head.weight.T + head.bias, mapping)
        out = head(x)
    torch.testing.assert_close(out, p.log(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head.probs(x), p, rtol=1e-12, atol=1e-14)


def test_mos_one_component_is_a_softmax_head_exactly():
    head = _seeded(lambda: MixtureOfSoftmaxes(D, V, n_components=1)).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    logits = F.linear(torch.tanh(head.latent(x)), head.weight, head.bias)
    out = head(x)
    # log pi = log_softmax of one logit = 0 and logsumexp over one term is the identity,
    # so the mixture is the softmax head bit for bit.
    assert torch.equal(out, sl.log_softmax(logits))
    torch.testing.assert_close(out, F.log_softmax(logits, -1), rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [False, True])
def test_mos_breaks_the_softmax_bottleneck(bias):
    """rank(log P) over many contexts. One softmax: log P = H W^T + 1 b^T - lse 1^T has rank
    <= d + 1 without bias (d + 2 with it); the mixture reaches full rank."""
    d, v, n = 4, 24, 200
    bound = d + 1 + bias
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def rank(head):
        with torch.no_grad():
            head.weight.mul_(4.0)  # away from the near-linear regime of small logits
            a = head(x)
        s = torch.linalg.svdvals(a)
        return int((s > 1e-9 * s[0]).sum())

    softmax_rank = rank(_seeded(lambda: MixtureOfSoftmaxes(d, v, n_components=1, bias=bias))
                        .double())
    mos_rank = rank(_seeded(lambda: MixtureOfSoftmaxes(d, v, n_components=5, bias=bias))
                    .double())
    assert softmax_rank <= bound
    assert mos_rank > bound
    assert mos_rank == v  # generically full rank


def test_mos_weight_can_be_tied_to_an_embedding():
    emb = torch.nn.Embedding(V, D)
    head = MixtureOfSoftmaxes(D, V, n_components=2)
    head.weight = emb.weight
    assert head.weight is emb.weight
    head(torch.randn(3, D)).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


def test_mos_mapping_params_pass_through():
    torch.manual_seed(0)
    hot = MixtureOfSoftmaxes(D, V, n_components=2, temperature=3.0)
    cold = MixtureOfSoftmaxes(D, V, n_components=2)
    cold.load_state_dict(hot.state_dict())
    x = torch.randn(4, D)
    log_prior, _ = cold.component_log_probs(x)
    h = torch.tanh(cold.latent(x)).unflatten(-1, (2, D))
    expect = torch.logsumexp(
        log_prior[..., None] + F.log_softmax(F.linear(h, cold.weight, cold.bias) / 3.0, -1), -2)
    torch.testing.assert_close(hot(x), expect)
    assert "temperature=3.0" in repr(hot)


# --------------------------------------------------------------------------- DS-Softmax


def test_ds_group_lasso_against_direct_computation():
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=3)).double()
    w = head.weight.detach()
    direct = sum(math.sqrt(float((w[k, c] ** 2).mean())) for k in range(3) for c in range(V))
    torch.testing.assert_close(head.group_lasso().item(), direct, rtol=1e-12, atol=0)
    # the bias joins the group; pruned (expert, class) pairs leave the sum
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=3, bias=True)).double()
    with torch.no_grad():
        head.class_mask[1, 2] = False
        head.class_mask[0, 5] = False
    w, b = head.weight.detach(), head.bias.detach()
    direct = sum(math.sqrt(float((torch.cat([w[k, c], b[k, c:c + 1]]) ** 2).mean()))
                 for k in range(3) for c in range(V) if (k, c) not in {(1, 2), (0, 5)})
    torch.testing.assert_close(head.group_lasso().item(), direct, rtol=1e-12, atol=0)


def test_ds_group_lasso_gradient_finite_at_zero_rows():
    head = DoublySparseSoftmax(D, V, n_experts=2)
    with torch.no_grad():
        head.weight[0, 3] = 0.0
    head.group_lasso().backward()
    assert torch.isfinite(head.weight.grad).all()
    assert (head.weight.grad[0, 3] == 0).all()


def test_ds_load_balance_and_regularization():
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=3, lasso_coef=0.01,
                                               importance_coef=5.0)).double()
    with pytest.raises(RuntimeError, match="call forward first"):
        head.load_balance()
    x = torch.randn(40, D, dtype=torch.float64)
    head(x)
    gates = torch.softmax(x @ head.gate.weight.T, -1)
    top, idx = gates.max(-1)
    importance = torch.zeros(3, dtype=torch.float64).index_add_(0, idx, top)
    cv2 = importance.var(unbiased=False) / importance.mean() ** 2
    torch.testing.assert_close(head.load_balance(), cv2.detach(), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(head.regularization(),
                               0.01 * head.group_lasso() + 5.0 * head.load_balance())
    head.regularization().backward()
    assert head.gate.weight.grad.abs().sum() > 0  # the balance term trains the gate


def test_ds_prune_drops_small_groups_and_never_orphans_a_class():
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=3)).double()
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :, 0] = 1.0                   # every group norm 1/sqrt(D) ~ 0.41
        head.weight[0, 0:3, 0] = 0.01 * math.sqrt(D)  # norms 0.01: pruned from expert 0
        head.weight[1, 2:5, 0] = 0.02 * math.sqrt(D)  # 0.02: pruned from expert 1
        head.weight[2, 2, 0] = 0.015 * math.sqrt(D)   # class 2 below everywhere ...
        head.weight[1, 6, 0] = 0.05 * math.sqrt(D)    # 0.05: kept
    norms = head.group_norms()
    n = head.prune(threshold=0.03)
    mask = head.class_mask
    assert mask.any(0).all()  # every class keeps an expert
    # ... so class 2 stays in expert 1, where its norm (0.02) is largest
    assert mask[:, 2].tolist() == [False, True, False]
    expect = (norms < 0.03).clone()
    expect[1, 2] = False
    assert torch.equal(~mask, expect)
    assert n == int(expect.sum()) == 3 + 2 + 1
    assert (head.weight[~mask] == 0).all()  # pruned weights zeroed
    assert head.prune(threshold=0.03) == 0  # idempotent
    assert "kept=21/27" in repr(head)


def test_ds_predict_topk_equals_topk_of_forward_float64():
    head = _seeded(lambda: DoublySparseSoftmax(D, 40, n_experts=3, bias=True)).double()
    with torch.no_grad():
        head.class_mask[0, :15] = False
        head.class_mask[1, 10:30] = False
        head.class_mask[2, ::2] = False
    x = torch.randn(4, 25, D, dtype=torch.float64)
    full = head.probs(x)
    for k in (1, 3, 7):
        p, idx = head.predict_topk(x, k)
        ref_p, ref_idx = full.topk(k, -1)
        assert p.shape == idx.shape == (4, 25, k)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(p, ref_p, rtol=1e-12, atol=1e-15)
    # k larger than an expert's kept classes: zero probability, index -1
    with torch.no_grad():
        head.class_mask.fill_(False)
        head.class_mask[:, 1:4] = True
    p, idx = head.predict_topk(x, 5)
    assert (idx[..., 3:] == -1).all() and (p[..., 3:] == 0).all()
    assert ((idx[..., :3] >= 1) & (idx[..., :3] <= 3)).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 25, dtype=torch.float64))
    torch.testing.assert_close(p[..., :3], head.probs(x).topk(3, -1).values)


def test_ds_expert_with_no_class_gives_empty_rows_not_nan():
    head = _seeded(lambda: DoublySparseSoftmax(D, V, n_experts=2))
    x = torch.randn(30, D, requires_grad=True)
    expert, _ = head.route(x)
    assert 0 < int((expert == 0).sum()) < 30
    with torch.no_grad():
        head.class_mask[0] = False
    logp = head(x)
    assert torch.isneginf(logp[expert == 0]).all()
    assert torch.isfinite(logp[expert == 1]).all()
    logp[expert == 1].sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    p, idx = head.predict_topk(x, 2)
    assert (p[expert == 0] == 0).all() and (idx[expert == 0] == -1).all()


def test_ds_predict_topk_scores_only_the_kept_classes():
    """The matmul FLOPs of predict_topk are those of the gate plus, for each row, its
    expert's kept classes: the full (rows x n_classes) product never runs."""
    n, v, k = 64, 50, 4
    head = _seeded(lambda: DoublySparseSoftmax(D, v, n_experts=k))
    with torch.no_grad():
        for e in range(k):
            head.class_mask[e] = torch.arange(v) % k == e
    x = torch.randn(n, D)
    with FlopCounterMode(display=False) as counter:
        head.predict_topk(x, 2)
    expert, _ = head.route(x)
    kept = head.class_mask.sum(-1)
    expected = 2 * n * D * k + sum(2 * D * int((expert == e).sum()) * int(kept[e])
                                   for e in range(k))
    assert counter.get_total_flops() == expected
    assert expected < 2 * n * D * v


def test_ds_speedup_formula():
    head = _seeded(lambda: DoublySparseSoftmax(D, 10, n_experts=2))
    with pytest.raises(RuntimeError, match="pass x or call predict_topk"):
        head.speedup()
    with torch.no_grad():
        head.class_mask[0, 5:] = False  # expert 0 keeps half, expert 1 keeps all
    x = torch.randn(100, D)
    head.predict_topk(x)
    r0 = float((head.route(x)[0] == 0).float().mean())
    expected = 1.0 / (r0 * 0.5 + (1 - r0) * 1.0)
    assert head.speedup() == pytest.approx(expected)
    assert head.speedup(x) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one row"):
        head.speedup(torch.randn(0, D))


def test_ds_empty_batch():
    head = DoublySparseSoftmax(D, V)
    assert head(torch.randn(0, D)).shape == (0, V)
    p, i = head.predict_topk(torch.randn(0, 3, D), 2)
    assert p.shape == i.shape == (0, 3, 2)


def _hierarchical(n_super=10, n_sub=10, n_items=10, d=32, seed=0):
    """papers.md item 8: superclass centres N(0, 100 I), subclasses N(super, 10 I), items
    N(sub, I); train and test items drawn from the same centres."""
    g = torch.Generator().manual_seed(seed)
    sup = torch.randn(n_super, d, generator=g) * 10.0
    sub = sup.repeat_interleave(n_sub, 0) + torch.randn(n_super * n_sub, d, generator=g) * 10**0.5
    y = torch.arange(n_super * n_sub).repeat_interleave(n_items)
    x_train = sub[y] + torch.randn(len(y), d, generator=g)
    x_test = sub[y] + torch.randn(len(y), d, generator=g)
    scale = x_train.std()
    return x_train / scale, x_test / scale, y


def test_ds_hierarchical_task_prunes_with_speedup():
    x, x_test, y = _hierarchical()
    torch.manual_seed(0)
    head = DoublySparseSoftmax(x.shape[1], 100, n_experts=4)  # lasso 0.003, importance 30
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(200):  # the lasso needs ~150 steps to push unused groups under 0.03
        loss = F.nll_loss(head(x), y) + head.regularization()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_before = float((head(x_test).argmax(-1) == y).float().mean())
        n_pruned = head.prune(0.03)
        acc_after = float((head(x_test).argmax(-1) == y).float().mean())
        _, top1 = head.predict_topk(x_test, 1)
        acc_fast = float((top1[:, 0] == y).float().mean())
    speedup = head.speedup()
    report = (f"DS-Softmax 10x10 synthetic: pruned {n_pruned}/400 (expert, class) pairs, "
              f"kept per expert {head.class_mask.sum(-1).tolist()}, speedup {speedup:.2f}x, "
              f"test accuracy {acc_before:.3f} -> {acc_after:.3f} (fast path {acc_fast:.3f})")
    print(report)  # shown with -s
    assert head.class_mask.any(0).all()
    assert speedup > 2.0, report
    assert acc_before > 0.95, report
    assert acc_after >= acc_before - 0.01, report
    assert acc_fast == acc_after, report


# --------------------------------------------------------------------------- training


def _task(d=D, v=V, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(v, d, generator=g) * 3
    y = (x @ teacher.T + 0.5 * torch.randn(n, v, generator=g)).argmax(-1)
    return x, y


def _train(head, loss_fn, steps=80, lr=0.02):
    x, y = _task()
    opt = torch.optim.Adam(head.parameters(), lr=lr)

    def evaluate():
        head.eval()
        with torch.no_grad():
            value = float(loss_fn(head, x, y, train=False))
        head.train()
        return value

    first = evaluate()
    for _ in range(steps):
        loss = loss_fn(head, x, y, train=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, evaluate()


def _nll(head, x, y, train):
    return F.nll_loss(head(x), y)


def _ds_loss(head, x, y, train):
    out = F.nll_loss(head(x), y)
    return out + head.regularization() if train else out


def _cosine_loss(head, x, y, train):
    return F.cross_entropy(10.0 * head(x), y)  # a scaled-cosine softmax (NormFace)


@pytest.mark.parametrize("name, loss_fn", [
    ("mos", _nll), ("moss", _nll), ("ds", _ds_loss), ("dd", _nll), ("dd_taylor", _nll),
    ("cosine", _cosine_loss),
])
def test_heads_train(name, loss_fn):
    head = _seeded(ALL_HEADS[name])
    first, last = _train(head, loss_fn)
    assert last < 0.7 * first, (first, last)


# --------------------------------------------------------------------------- D&D


def test_dd_dropout_only_in_train_mode():
    torch.manual_seed(0)
    head = DecoupledOutput(D, V, dropout=0.5)
    x = torch.randn(64, D)
    head.train()
    a, b = head(x), head(x)
    assert not torch.allclose(a, b)
    # the dropout acts on the input: equals the head applied to a dropped-out input
    torch.manual_seed(3)
    c = head(x)
    torch.manual_seed(3)
    xd = F.dropout(x, 0.5, True)
    torch.testing.assert_close(c, F.log_softmax(F.linear(xd, head.weight, head.bias), -1))
    head.eval()
    e1, e2 = head(x), head(x)
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, F.log_softmax(F.linear(x, head.weight, head.bias), -1))
    # dropout=0: train and eval agree
    head0 = DecoupledOutput(D, V, dropout=0.0)
    torch.testing.assert_close(head0.train()(x), head0.eval()(x))


def test_dd_owns_its_output_weights():
    emb = torch.nn.Embedding(V, D)
    head = DecoupledOutput.untied_from(emb.weight, dropout=0.1)
    assert head.weight is not emb.weight
    assert head.weight.data_ptr() != emb.weight.data_ptr()
    torch.testing.assert_close(head.weight, emb.weight)
    assert (head.in_features, head.n_classes, head.dropout) == (D, V, 0.1)
    head(torch.randn(3, D)).sum().backward()
    assert emb.weight.grad is None
    bias = torch.randn(V)
    head = DecoupledOutput.untied_from(emb.weight, bias=bias)
    torch.testing.assert_close(head.bias, bias)
    assert head.bias is not bias
    assert DecoupledOutput.untied_from(emb.weight, bias=False).bias is None
    assert DecoupledOutput.untied_from(emb.weight).bias.shape == (V,)  # a fresh bias
    with pytest.raises(ValueError, match="bias must have shape"):
        DecoupledOutput.untied_from(emb.weight, bias=torch.randn(V + 1))
    with pytest.raises(ValueError, match="weight must be a 2-d tensor"):
        DecoupledOutput.untied_from(torch.randn(V))


def test_dd_mapping():
    torch.manual_seed(0)
    head = DecoupledOutput(D, V, mapping="sigsoftmax").eval()
    x = torch.randn(5, D)
    torch.testing.assert_close(head(x), sl.log_sigsoftmax(F.linear(x, head.weight, head.bias)))


# --------------------------------------------------------------------------- cosine


def test_cosine_range_and_scale_invariance():
    torch.manual_seed(0)
    head = CosineClassifier(D, V)
    x = torch.randn(2, 30, D)
    cos = head(x)
    assert (cos >= -1).all() and (cos <= 1).all()
    torch.testing.assert_close(head(7.5 * x), cos)
    torch.testing.assert_close(head(1e-3 * x), cos)
    # the cosine of a class direction with itself is 1 (clamped, not above)
    ones = head(head.weight.detach()[:3] * 4.0).diagonal()
    torch.testing.assert_close(ones, torch.ones(3))
    direct = F.normalize(x, dim=-1) @ F.normalize(head.weight, dim=-1).T
    torch.testing.assert_close(cos, direct)


def test_cosine_zero_feature_vector_has_finite_gradients():
    head = CosineClassifier(D, V)
    x = torch.zeros(3, D, requires_grad=True)
    out = head(x)
    assert (out == 0).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    with torch.no_grad():
        head.weight[0] = 0.0  # a zero class direction too
    x = torch.randn(3, D, requires_grad=True)
    head(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("name", ["mos", "moss", "dd", "dd_taylor", "ds_bias", "cosine"])
def test_gradcheck_float64_eval(name):
    head = _seeded(ALL_HEADS[name]).double().eval()
    x = torch.randn(2, 3, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(head, (x,), eps=1e-6, atol=1e-6)
    params = [p for p in head.parameters()]

    def of_params(*ps):
        return torch.func.functional_call(
            head, {n: p for (n, _), p in zip(head.named_parameters(), ps, strict=True)},
            (x.detach(),))

    ps = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(of_params, ps, eps=1e-6, atol=1e-6, fast_mode=True)


# --------------------------------------------------------------------------- arguments


BAD_ARGS = [
    (MixtureOfSoftmaxes, (0, V), {}, ValueError, "in_features"),
    (MixtureOfSoftmaxes, (D, 2.5), {}, TypeError, "n_classes"),
    (MixtureOfSoftmaxes, (D, V), {"n_components": 0}, ValueError, "n_components"),
    (MixtureOfSoftmaxes, (D, V), {"n_components": True}, TypeError, "n_components"),
    (MixtureOfSoftmaxes, (D, V), {"mapping": "sparsemax"}, ValueError, "'softmax', "),
    (MixtureOfSoftmaxes, (D, V), {"mapping": "nope"}, ValueError, "mapping must be"),
    (MixtureOfSoftmaxes, (D, V), {"temperature": -1.0}, ValueError, "temperature"),
    (MixtureOfSoftmaxes, (D, V), {"order": 2}, TypeError, "no parameter 'order'"),
    (MixtureOfSoftmaxes, (D, V), {"bias": 1}, TypeError, "bias"),
    (DoublySparseSoftmax, (D, V), {"n_experts": 0}, ValueError, "n_experts"),
    (DoublySparseSoftmax, (D, -1), {}, ValueError, "n_classes"),
    (DoublySparseSoftmax, (D, V), {"lasso_coef": -0.1}, ValueError, "lasso_coef"),
    (DoublySparseSoftmax, (D, V), {"importance_coef": float("nan")}, ValueError,
     "importance_coef"),
    (DoublySparseSoftmax, (D, V), {"importance_coef": "30"}, TypeError, "importance_coef"),
    (DecoupledOutput, (D, V), {"dropout": 1.0}, ValueError, "dropout"),
    (DecoupledOutput, (D, V), {"dropout": -0.1}, ValueError, "dropout"),
    (DecoupledOutput, (D, V), {"mapping": "entmax15"}, ValueError, "mapping must be"),
    (DecoupledOutput, (D, V), {"mapping": "taylor_softmax", "order": 3}, ValueError, "order"),
    (DecoupledOutput, (None, V), {}, TypeError, "in_features"),
    (CosineClassifier, (D, V), {"eps": 0.0}, ValueError, "eps"),
    (CosineClassifier, (D, 0), {}, ValueError, "n_classes"),
]


@pytest.mark.parametrize("cls, args, kwargs, exc, match", BAD_ARGS,
                         ids=[f"{c.__name__}-{m}" for c, _, _, _, m in BAD_ARGS])
def test_bad_constructor_arguments(cls, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(*args, **kwargs)


def test_bad_method_arguments():
    head = DoublySparseSoftmax(D, V)
    with pytest.raises(ValueError, match="threshold"):
        head.prune(-1.0)
    with pytest.raises(ValueError, match="k must be <= n_classes"):
        head.predict_topk(torch.randn(2, D), V + 1)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        head.predict_topk(torch.randn(2, D), 0)


def test_extra_repr_shows_the_arguments():
    assert ("in_features=6, n_classes=9, n_components=2, mapping='sigsoftmax', bias=True\n"
            in repr(MixtureOfSoftmaxes(D, V, n_components=2, mapping="sigsoftmax")))
    assert "n_experts=2, lasso_coef=0.003, importance_coef=30.0, bias=False, kept=18/18" in repr(
        DoublySparseSoftmax(D, V))
    assert "dropout=0.5, bias=True, mapping='softmax'" in repr(DecoupledOutput(D, V))
    assert "in_features=6, n_classes=9, eps=1e-08" in repr(CosineClassifier(D, V))


def test_exported_from_nn():
    import softmaxlab.nn as snn

    for cls in (MixtureOfSoftmaxes, DoublySparseSoftmax, DecoupledOutput, CosineClassifier):
        assert getattr(snn, cls.__name__) is cls
        assert cls.__name__ in snn.__all__


@pytest.mark.parametrize("loss_name", ["am_softmax_loss", "arcface_loss"])
def test_cosine_classifier_trains_with_the_margin_losses(loss_name):
    from softmaxlab import losses

    loss = getattr(losses, loss_name)
    head = _seeded(lambda: CosineClassifier(D, V))
    first, last = _train(head, lambda h, x, y, train: loss(h(x), y))
    assert last < 0.7 * first, (first, last)
