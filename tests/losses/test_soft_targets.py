"""Class-probability (soft) targets of softmaxlab.losses.cross_entropy and
fenchel_young_loss: torch's F.cross_entropy for softmax (value and gradient, for the logits
and for the target), an independent float64 formula ``-sum_c w_c q_c log p_c`` with ``p``
from tests/oracle/references.py for every other mapping with a log form, mixup targets,
gradcheck, 0 log 0 = 0, low precision and bad arguments.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import softmaxlab as sl
from softmaxlab import losses as L
from softmaxlab.nn import losses as NL

from ..oracle.references import REFERENCES

F64 = torch.float64
REDUCTIONS = ("none", "mean", "sum")
#: the library and the reference evaluate the same formula in a different order
TIGHT = dict(rtol=1e-10, atol=1e-12)
#: alpha-entmax by bisection (n_iter=50), as in tests/test_losses.py
BISECT = dict(rtol=1e-10, atol=1e-10)
LOW_FACTOR = 2.0  # the one low-precision factor of tests/test_losses.py
LAYOUTS = {"C": (5,), "NC": (7, 5), "NCdd": (3, 5, 2, 3)}


def gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def close(actual, expected, what="", **tol):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(actual.detach().to(F64), expected.detach().to(F64),
                               msg=lambda m: f"{what}: {m}", **(tol or TIGHT))


def grads(fn, *inputs, up):
    """fn(*inputs) and the gradients of sum(up * fn) w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    (out * up).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def upstream(shape, *key):
    """A random upstream gradient (per row for reduction='none', a scalar otherwise)."""
    if not shape:
        return torch.tensor(0.7, dtype=F64)
    return torch.randn(shape, generator=gen("up", *key), dtype=F64)


def class_dim(x):
    return 0 if x.dim() == 1 else 1


def soft_batch(layout, *key, zeros=False):
    """Float64 logits and probability targets of the same shape (some zero entries when
    ``zeros``), and the number of classes."""
    g = gen("soft", layout, *key)
    shape = LAYOUTS[layout]
    x = torch.randn(shape, generator=g, dtype=F64) * 2
    y = torch.rand(shape, generator=g, dtype=F64)
    if zeros:
        y = y * (torch.rand(shape, generator=g, dtype=F64) > 0.4)
        y.select(class_dim(y), 0).add_(0.1)  # no all-zero row
    y = y / y.sum(class_dim(y), keepdim=True)
    return x, y, shape[class_dim(x)]


def class_weight(c, *key):
    return torch.rand(c, generator=gen("w", c, *key), dtype=F64) + 0.5


def away_from_zero(x):
    """|x| >= 0.2: no relu kink, no spherical minimum nearby."""
    return torch.where(x >= 0, x + 0.2, x - 0.2)


# ------------------------------------------------------------------ independent reference
def log_mapping_names():
    """Every normalized mapping with a log form, from the one registry."""
    return [m.name for m in sl.mappings() if m.log_fn is not None and m.normalized]


def ref_soft_ce(x, y, *, mapping="softmax", weight=None, reduction="mean",
                label_smoothing=0.0, ignore_index=-100, **params):
    """-sum_c w_c q_c log p_c(z) per row, q = (1-e) y + e/C, 0 log 0 = 0; mean over rows."""
    del ignore_index  # not applicable to probability targets (torch's rule)
    d = class_dim(x)
    z, q = x.movedim(d, -1), y.movedim(d, -1)
    logp = REFERENCES["log_" + mapping](z, **params)
    c = z.shape[-1]
    q = (1 - label_smoothing) * q + label_smoothing / c
    w = torch.ones(c, dtype=x.dtype) if weight is None else weight
    terms = w * q * logp  # 0 log 0 = 0 where a class is excluded (log p = -inf)
    per = -torch.where((q == 0) & (logp == float("-inf")), 0.0, terms).sum(-1)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / per.numel()


#: (mapping, params) beyond each mapping's defaults
EXTRA_PARAMS = [
    ("softmax", {"temperature": 2.0}),
    ("taylor_softmax", {"order": 4}),
    ("spherical_softmax", {"eps": 0.5}),
    ("activation_normalize", {"activation": "arctan"}),
    ("activation_normalize", {"activation": "gaussian"}),
    ("activation_normalize", {"activation": "relu"}),
]
MAPPING_CASES = [(name, {}) for name in log_mapping_names()] + EXTRA_PARAMS


def _case_id(case):
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


def test_every_log_mapping_has_a_reference():
    missing = [n for n in log_mapping_names() if "log_" + n not in REFERENCES]
    assert not missing, f"no oracle log form for {missing}"
    assert {"softmax", "taylor_softmax", "spherical_softmax", "sigsoftmax",
            "activation_normalize"} <= set(log_mapping_names())


# ================================================================== softmax vs torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, -1])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_soft_cross_entropy_equals_torch(layout, weighted, ignore_index, smoothing, reduction):
    x, y, c = soft_batch(layout, weighted)
    w = class_weight(c, layout) if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=smoothing)
    shape = L.cross_entropy(x, y, **kw).shape
    up = upstream(shape, layout, reduction)
    ours, (gz, gy) = grads(lambda z, t: L.cross_entropy(z, t, **kw), x, y, up=up)
    theirs, (tz, ty) = grads(lambda z, t: F.cross_entropy(z, t, **kw), x, y, up=up)
    assert ours.dtype == F64
    close(ours, theirs, "value vs torch", rtol=1e-12, atol=1e-13)
    close(gz, tz, "logits gradient vs torch", rtol=1e-12, atol=1e-13)
    close(gy, ty, "target gradient vs torch", rtol=1e-12, atol=1e-13)
    close(ours, ref_soft_ce(x, y, **kw), "value vs float64 reference")


def test_soft_mean_divides_by_rows_not_weights():
    x, y, c = soft_batch("NCdd", "mean")
    w = class_weight(c) * 3
    per = L.cross_entropy(x, y, weight=w, reduction="none")
    mean = L.cross_entropy(x, y, weight=w)
    assert per.shape == (3, 2, 3)
    close(mean, per.sum() / per.numel(), "mean = sum / rows")
    close(mean, F.cross_entropy(x, y, weight=w), "torch")


def test_ignore_index_does_not_apply_to_probability_targets():
    """A negative ignore_index is ignored; a class id raises (torch raises RuntimeError)."""
    x, y, c = soft_batch("NC", "ii")
    base = L.cross_entropy(x, y, reduction="none")
    for ii in (-100, -1, -7):
        assert torch.equal(L.cross_entropy(x, y, ignore_index=ii, reduction="none"), base)
    for ii in (0, 2, c):
        with pytest.raises(RuntimeError, match="ignore_index"):
            F.cross_entropy(x, y, ignore_index=ii)
        with pytest.raises(ValueError, match=f"ignore_index={ii}"):
            L.cross_entropy(x, y, ignore_index=ii)
        with pytest.raises(ValueError, match=f"ignore_index={ii}"):
            L.fenchel_young_loss(x, y, ignore_index=ii)


# ================================================================== every log mapping
SOFT_CONFIGS = [  # (weighted, label_smoothing, reduction)
    (False, 0.0, "mean"),
    (True, 0.1, "mean"),
    (True, 0.3, "sum"),
    (False, 1.0, "none"),
    (True, 0.0, "none"),
]


@pytest.mark.parametrize("config", SOFT_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", ["C", "NC", "NCdd"])
@pytest.mark.parametrize("case", MAPPING_CASES, ids=_case_id)
def test_soft_cross_entropy_vs_reference(case, layout, config):
    name, params = case
    weighted, smoothing, reduction = config
    x, y, c = soft_batch(layout, name, zeros=True)
    x = away_from_zero(x)
    w = class_weight(c, name) if weighted else None
    kw = dict(mapping=name, weight=w, reduction=reduction, label_smoothing=smoothing, **params)
    shape = L.cross_entropy(x, y, **kw).shape
    up = upstream(shape, name, layout)
    out, (gz, gy) = grads(lambda z, t: L.cross_entropy(z, t, **kw), x, y, up=up)
    ref, (rz, ry) = grads(lambda z, t: ref_soft_ce(z, t, **kw), x, y, up=up)
    assert torch.isfinite(out).all()
    close(out, ref, "value")
    close(gz, rz, "logits gradient")
    close(gy, ry, "target gradient")


@pytest.mark.parametrize("case", MAPPING_CASES, ids=_case_id)
def test_onehot_probabilities_equal_class_indices(case):
    name, params = case
    g = gen("onehot", name)
    x = away_from_zero(torch.randn(3, 6, 2, generator=g, dtype=F64))
    t = torch.randint(0, 6, (3, 2), generator=g)
    y = F.one_hot(t, 6).movedim(-1, 1).to(F64)
    w = class_weight(6, name)
    for kw in (dict(reduction="none", weight=w), dict(reduction="sum", label_smoothing=0.2),
               dict(reduction="mean", label_smoothing=0.1)):
        close(L.cross_entropy(x, y, mapping=name, **kw, **params),
              L.cross_entropy(x, t, mapping=name, **kw, **params), f"{kw}")


@pytest.mark.parametrize("case", MAPPING_CASES, ids=_case_id)
def test_mixup_targets(case):
    """lam * onehot(a) + (1 - lam) * onehot(b): the loss is lam CE(a) + (1 - lam) CE(b)."""
    name, params = case
    g = gen("mixup", name)
    x = away_from_zero(torch.randn(8, 5, generator=g, dtype=F64))
    a, b = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (8,), generator=g)
    lam = torch.rand(8, 1, generator=g, dtype=F64)
    y = lam * F.one_hot(a, 5) + (1 - lam) * F.one_hot(b, 5)
    for reduction in REDUCTIONS:
        kw = dict(mapping=name, reduction="none", **params)
        la = lam[:, 0]
        mixed = la * L.cross_entropy(x, a, **kw) + (1 - la) * L.cross_entropy(x, b, **kw)
        expected = {"none": mixed, "sum": mixed.sum(), "mean": mixed.mean()}[reduction]
        close(L.cross_entropy(x, y, mapping=name, reduction=reduction, **params), expected,
              reduction)


@pytest.mark.parametrize("case", MAPPING_CASES, ids=_case_id)
def test_soft_cross_entropy_gradcheck(case):
    name, params = case
    x, y, c = soft_batch("NCdd", "gc", name)
    x = away_from_zero(x).requires_grad_()
    y = y.requires_grad_()
    w = class_weight(c)
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda z, t, *, reduction=reduction: L.cross_entropy(
                z, t, mapping=name, weight=w, reduction=reduction, label_smoothing=0.2, **params),
            (x, y))


# ================================================================== 0 log 0, NaN
@pytest.mark.parametrize("how", ["neg_inf", "mask"])
@pytest.mark.parametrize("name", ["softmax", "sigsoftmax", "taylor_softmax"])
def test_zero_probability_at_excluded_class_is_zero_not_nan(name, how):
    g = gen("excl", name)
    x = torch.randn(4, 5, generator=g, dtype=F64)
    y = torch.rand(4, 5, generator=g, dtype=F64)
    y[:, 2] = 0
    y = y / y.sum(-1, keepdim=True)
    params = {}
    if how == "neg_inf":
        x[:, 2] = float("-inf")
    else:
        params["mask"] = torch.arange(5) != 2
    up = upstream((4,), "excl")
    out, (gz, gy) = grads(lambda z, t: L.cross_entropy(z, t, mapping=name, reduction="none",
                                                       **params), x, y, up=up)
    keep = [0, 1, 3, 4]
    sub, (sz, sy) = grads(lambda z, t: L.cross_entropy(z, t, mapping=name, reduction="none"),
                          x[:, keep], y[:, keep], up=up)
    assert torch.isfinite(out).all() and torch.isfinite(gz).all()
    close(out, sub, "excluded class = sliced off")
    close(gz[:, keep], sz, "kept logits' gradient")
    assert torch.equal(gz[:, 2], torch.zeros(4, dtype=F64))
    close(gy[:, keep], sy, "kept targets' gradient")
    # probability on an excluded class is an infinite loss (torch's too), never NaN
    y2 = y.clone()
    y2[0] = 0.2
    inf = L.cross_entropy(x, y2, mapping=name, reduction="none", **params)
    assert inf[0] == float("inf") and torch.isfinite(inf[1:]).all()


def test_nan_logit_gives_nan_row():
    x, y, _ = soft_batch("NC", "nan")
    x[2, 1] = float("nan")
    y[2] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)  # q = 0 at the NaN
    out = L.cross_entropy(x, y, reduction="none")
    assert torch.isnan(out[2]) and torch.isfinite(out[[0, 1, 3, 4, 5, 6]]).all()


# ================================================================== low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_soft_cross_entropy_low_precision(dtype):
    g = gen("lowp", str(dtype))
    x = (torch.randn(200, 11, generator=g, dtype=F64) * 4).to(dtype)
    y = torch.rand(200, 11, generator=g, dtype=F64).softmax(-1).to(dtype)
    w = (torch.rand(11, generator=g, dtype=F64) + 0.5).to(dtype)
    u = torch.finfo(dtype).eps / 2
    for kw in (dict(reduction="none"), dict(reduction="mean", label_smoothing=0.1),
               dict(reduction="sum", weight=w)):
        dkw = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
        ref = F.cross_entropy(x.double(), y.double(), **dkw)
        ours = L.cross_entropy(x, y, **kw)
        naive = F.cross_entropy(x, y, **kw)
        assert ours.dtype == dtype, kw
        err = (ours.double() - ref).abs().max().item()
        err_naive = (naive.double() - ref).abs().max().item()
        floor = u * ref.abs().max().item()
        assert err <= LOW_FACTOR * max(err_naive, floor), (kw, err, err_naive, floor)
    xg = x.clone().requires_grad_()
    L.cross_entropy(xg, y).backward()
    assert xg.grad.dtype == dtype and torch.isfinite(xg.grad).all()
    # float32 logits with float16 targets: the targets are upcast like the logits
    close(L.cross_entropy(x.float(), y), F.cross_entropy(x.double(), y.double()),
          "float32 logits, low-precision targets", rtol=1e-5, atol=1e-6)


# ================================================================== bad arguments
def test_bad_probability_targets_raise_naming_target():
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"target.*\(3, 4\).*\(3, 5\)"):
        L.cross_entropy(x, torch.rand(3, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"target.*\(3, 4, 1\).*\(3, 1, 4\)"):
        L.cross_entropy(x[..., None], torch.rand(3, 1, 4, dtype=F64))
    with pytest.raises(TypeError, match=r"target.*integer class indices.*\(3, 4\).*float64"):
        L.cross_entropy(x, torch.tensor([0.0, 1.0, 2.0], dtype=F64))
    with pytest.raises(TypeError, match=r"target.*bool"):
        L.cross_entropy(x, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"target.*complex"):
        L.cross_entropy(x, torch.ones(3, 4, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"target shape \(3, 4\)"):  # ints are class ids
        L.cross_entropy(x, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="ignore_index"):
        L.cross_entropy(x, torch.rand(3, 4, dtype=F64), ignore_index=1.0)
    with pytest.raises(TypeError, match="target"):  # losses without soft targets say so
        L.soft_margin_loss(x, torch.rand(3, 4, dtype=F64), margin=0.1)


def test_module_passes_probability_targets():
    x, y, c = soft_batch("NC", "module")
    w = class_weight(c)
    m = NL.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    close(m(x, y), F.cross_entropy(x, y, weight=w, label_smoothing=0.1), "module", rtol=1e-12,
          atol=1e-13)


# ================================================================== Fenchel-Young
FY_CASES = [  # (mapping, params, alpha, tolerance)
    ("sparsemax", {}, 2.0, TIGHT),
    ("entmax15", {}, 1.5, TIGHT),
    ("entmax", {"alpha": 1.25}, 1.25, BISECT),
    ("entmax", {"alpha": 1.0}, 1.0, TIGHT),
]


def tsallis(p, alpha):
    """Tsallis alpha-entropy of the rows (Shannon at alpha = 1), 0 log 0 = 0."""
    if alpha == 1:
        return -torch.where(p > 0, p * p.clamp(min=1e-300).log(), 0.0).sum(-1)
    return (1 - p.pow(alpha).sum(-1)) / (alpha * (alpha - 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", FY_CASES, ids=lambda c: c[0] + str(c[2]))
def test_fenchel_young_probability_targets(case, reduction):
    mapping, params, alpha, tol = case
    x, y, c = soft_batch("NCdd", "fy", mapping, zeros=True)
    w = class_weight(c, "fy")
    kw = dict(mapping=mapping, weight=w, reduction=reduction, label_smoothing=0.1, **params)
    shape = L.fenchel_young_loss(x, y, **kw).shape
    up = upstream(shape, "fy", reduction)
    out, (gz,) = grads(lambda z: L.fenchel_young_loss(z, y, **kw), x, up=up)
    # independent: <z, p - q> + H(p) - H(q) per row, weighted by <w, y>, mean over rows
    z, yr = x.movedim(1, -1).reshape(-1, c), y.movedim(1, -1).reshape(-1, c)
    ref_map = REFERENCES[mapping]
    p = ref_map(z, **params) if mapping != "entmax" else ref_map(z, alpha=alpha)
    q = 0.9 * yr + 0.1 / c
    per = (z * (p - q)).sum(-1) + tsallis(p, alpha) - tsallis(q, alpha)
    wr = yr @ w
    m = len(per)
    if reduction == "none":
        ref, coef = (per * wr).reshape(shape), up.reshape(-1)
    else:
        ref = (per * wr).sum() if reduction == "sum" else (per * wr).mean()
        coef = up.expand(m) if reduction == "sum" else up.expand(m) / m
    close(out, ref, "value", **tol)
    expected = ((coef * wr)[:, None] * (p - q)).reshape(3, 2, 3, c).movedim(-1, 1)
    close(gz, expected, "gradient (p - q) <w, y>", **tol)


def test_fenchel_young_soft_special_cases():
    x, y, c = soft_batch("NC", "fy-special")
    # alpha = 1 (softmax): FY = cross-entropy minus the Shannon entropy of q
    close(L.fenchel_young_loss(x, y, mapping="entmax", alpha=1.0, reduction="none"),
          F.cross_entropy(x, y, reduction="none") - tsallis(y, 1.0), "alpha=1")
    # q = p gives zero loss; one-hot probabilities give the index-target loss
    p = sl.sparsemax(x, dim=-1)
    close(L.fenchel_young_loss(x, p, reduction="none"), torch.zeros(7, dtype=F64), "q = p",
          atol=1e-12, rtol=0)
    t = torch.randint(0, c, (7,), generator=gen("fy-t"))
    oh = F.one_hot(t, c).to(F64)
    close(L.fenchel_young_loss(x, oh, reduction="sum", label_smoothing=0.2),
          L.fenchel_young_loss(x, t, reduction="sum", label_smoothing=0.2), "one-hot")
    with pytest.raises(ValueError, match=r"target.*\(7, 5\).*\(7, 4\)"):
        L.fenchel_young_loss(x, y[:, :4])
