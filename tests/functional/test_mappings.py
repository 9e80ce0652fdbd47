"""Every registered mapping: float64 oracle agreement, gradcheck, the properties of
DESIGN.md §4, the numerical contract of §2, each bad argument, low precision against the
naive formula, the published test vector, hypothesis properties and the registry itself.

Nothing here names a mapping except where a test is about that mapping (the published
vector, alpha of entmax): the case lists come from the registry (see _helpers.py).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import softmaxlab as sl
from softmaxlab import functional as slf

from .._helpers import (
    ACCURACY_PARAMS,
    BAD_PARAMS,
    CASES,
    DEFAULT_CASES,
    DENSE_AT,
    FUNCTIONS,
    LOG_PAIRS,
    MAPPINGS,
    NEG_INF,
    NONNEGATIVE_DOMAIN,
    NORMALIZED_CASES,
    SCALE_CASES,
    SHIFT_CASES,
    SIZE_BOUND_PARAMS,
    SPARSE_CASES,
    TENSOR_PARAM_CASES,
    Case,
    assert_close,
    assert_normalized,
    distinct_logits,
    expect_raises,
    expected_error,
    finite_part,
    functions,
    gen,
    ids,
    random_mask,
    signature_params,
    smooth_point,
)
from ..oracle.references import PUBLISHED, REFERENCES, TEST_VECTOR
from ..tolerances import LOW_PRECISION, SUM_ATOL, Tol

F64 = torch.float64

ENTMAX = sl.get_mapping("entmax")
SIZE_BOUND_CASES = [c for c in DEFAULT_CASES if c.size_bound]


def has_mass(case: Case, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows along ``dim`` that must sum to one: some entry kept (not -inf) — and, on the
    non-negative domain, some kept entry > 0 (a row summing to zero gives zeros)."""
    kept = x != NEG_INF
    if case.nonnegative:
        kept &= x > 0
    return kept.any(dim, keepdim=True)


# ============================================================ 1. agreement with the oracle
SHAPE_DIMS = [
    ((7,), -1), ((7,), 0), ((4, 7), -1), ((4, 7), 0),
    ((3, 4, 5), 0), ((3, 4, 5), 1), ((3, 4, 5), -1), ((3, 4, 5), -2),
]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=ids)
@pytest.mark.parametrize("shape, dim", SHAPE_DIMS, ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_matches_oracle(case, shape, dim, dtype):
    x = case.logits(shape, gen("oracle", str(case), shape, dim), dtype)
    out = case(x, dim)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, case.reference(x.double(), dim), case.tol(dtype),
                 f"{case} shape={shape} dim={dim} {dtype}")


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_tensor_param_per_row(case, param, dim):
    """A tensor parameter (one value per row) gives, row by row, the float result."""
    values = [param.default, *param.valid]
    g = gen("tensor-param", str(case), param.name, dim)
    x = case.logits((len(values), 6), g)
    t = torch.tensor(values, dtype=F64).unsqueeze(-1)
    batch = 0 if dim == -1 else 1  # the dim that indexes the rows
    if dim == 0:
        x, t = x.T, t.T
    out = case(x, dim, **{param.name: t})
    for i, v in enumerate(values):
        c = case.with_params(**{param.name: v})
        row_in, row_out = x.select(batch, i), out.select(batch, i)
        what = f"{c} as a tensor, row {i}, dim={dim}"
        assert_close(row_out, c.reference(row_in), c.tol(F64), what)
        assert_close(row_out, c(row_in), c.tol(F64), what + " vs float parameter")
        assert_close(c(x, dim, **{param.name: torch.tensor(v, dtype=F64)}), c(x, dim),
                     c.tol(F64), f"{c} with a 0-dim tensor")


# ============================================================ 2. gradients
@pytest.mark.parametrize("variant", ["last", "dim0", "masked"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradcheck(case, variant):
    g = gen("gradcheck", str(case), variant)
    dim, shape = (0, (6, 3)) if variant == "dim0" else (-1, (3, 6))
    mask = random_mask(shape, g, max(2, case.min_size)) if variant == "masked" else None
    x = smooth_point(case, shape, g, dim=dim, mask=mask).requires_grad_()
    # finite_part: a masked log-probability is a constant -inf (its difference is NaN).
    assert torch.autograd.gradcheck(lambda x: finite_part(case(x, dim, mask=mask)), (x,))


def interior_values(param) -> list:
    """Default and valid values that stay valid a finite-difference step below."""
    return [v for v in (param.default, *param.valid) if param.check(v - 1e-3)]


@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_gradcheck_tensor_param(case, param):
    values = interior_values(param)
    t = torch.tensor(values, dtype=F64).unsqueeze(-1).requires_grad_()
    x = smooth_point(case, (len(values), 6), gen("gradcheck-param", str(case), param.name),
                     **{param.name: t.detach()}).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, t: finite_part(case(x, **{param.name: t})), (x, t))


@pytest.mark.parametrize("dim", [-1, 0])
def test_gradcheck_entmax_alpha(dim):
    """Gradient with respect to a learned per-row alpha (away from the exact alpha 1, 2)."""
    case = Case(ENTMAX, ENTMAX.fn)
    alpha = torch.tensor([[1.3], [1.7], [2.5]], dtype=F64)
    alpha, shape = (alpha, (3, 6)) if dim == -1 else (alpha.T, (6, 3))
    alpha.requires_grad_()
    x = smooth_point(case, shape, gen("alpha-grad", dim), dim=dim, alpha=alpha.detach())
    assert torch.autograd.gradcheck(lambda x, a: case(x, dim, alpha=a),
                                    (x.requires_grad_(), alpha))


def test_entmax_alpha_grad_at_one():
    """At alpha = 1 exactly (softmax) the alpha-gradient matches the one-sided difference
    (p(1+h) - p(1)) / h of the forward: alpha < 1 is outside the domain. alpha is a float64
    tensor here, so that this checks the gradient only (float alpha: see
    test_float_param_full_precision)."""
    g = gen("alpha-at-one")
    x = torch.randn(4, 6, generator=g, dtype=F64)
    w = torch.randn(4, 6, generator=g, dtype=F64)
    alpha = torch.ones(4, 1, dtype=F64, requires_grad=True)
    (sl.entmax(x, alpha=alpha) * w).sum().backward()
    h = 1e-5

    def value(a: float) -> torch.Tensor:
        return (sl.entmax(x, alpha=torch.full((4, 1), a, dtype=F64)) * w).sum(-1, keepdim=True)

    fd = (value(1 + h) - value(1.0)) / h
    # |fd - exact| <= h/2 |d2<w,p>/dalpha2| + 2 (forward error) / h. For these randn logits
    # |d2/dalpha2| ~ 1 (Richardson on the oracle: the O(h) term is ~5e-6 at h = 1e-5);
    # the forward at 1 + h is accurate to ~1e-12 (checked against 50-digit mpmath), i.e.
    # ~1e-7 after dividing by h. atol 2e-5 = 4x that O(h) term.
    assert_close(alpha.grad, fd, Tol(0.0, 2e-5), "d<w, entmax>/dalpha at alpha=1")


FLOAT_PARAM_CASES = [(c, p) for c in DEFAULT_CASES for p in c.mapping.params
                     if isinstance(p.default, float)]


@pytest.mark.parametrize("case, param", FLOAT_PARAM_CASES, ids=ids)
def test_float_param_full_precision(case, param):
    """A Python float parameter is used at float64 precision on float64 input: values that
    float32 cannot represent (v (1 + 1e-6): float32 would move them by ~1e-8 relative)
    match the oracle at the float64 tolerance."""
    x = case.logits((4, 7), gen("float-param", str(case), param.name))
    for v in (param.default, *param.valid):
        v = v * (1 + 1e-6)
        if not isinstance(v, float) or not param.check(v):
            continue
        c = case.with_params(**{param.name: v})
        assert_close(c(x), c.reference(x), c.tol(F64), f"{c}")


# ============================================================ 3. properties
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_range(case):
    """Probabilities in [0, 1], log-probabilities <= 0, also for widely spread logits."""
    x = case.logits((5, 9), gen("range", str(case)), scale=10.0)
    out = case(x)
    if case.log:
        assert (out <= 0).all(), f"{case}: max log-probability {out.max().item()}"
    else:
        assert ((out >= 0) & (out <= 1)).all(), (
            f"{case}: min {out.min().item()}, max {out.max().item()}")


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=ids)
@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("case", NORMALIZED_CASES, ids=ids)
def test_sums_to_one(case, dim, dtype):
    x = case.logits((3, 6, 5), gen("sums", str(case), dim), dtype)
    assert_normalized(case(x, dim), case, dim, has_mass(case, x, dim), SUM_ATOL[dtype],
                      f"{case} dim={dim} {dtype}")


@pytest.mark.parametrize("case, log_case", LOG_PAIRS, ids=ids)
def test_log_form_is_log_of_prob_form(case, log_case):
    x = case.logits((4, 7), gen("log-pair", str(case)))
    x[1, 2] = NEG_INF
    assert_close(log_case(x).exp(), case(x), case.tol(F64), f"exp({log_case}) vs {case}")


@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_permutation_equivariant(case, dim):
    g = gen("perm", str(case), dim)
    x = case.logits((3, 5, 4), g)
    perm = torch.randperm(x.shape[dim], generator=g)
    assert_close(case(x.index_select(dim, perm), dim), case(x, dim).index_select(dim, perm),
                 case.tol(F64), f"{case} dim={dim} perm={perm.tolist()}")


@pytest.mark.parametrize("case", SHIFT_CASES, ids=ids)
def test_shift_invariant(case):
    g = gen("shift", str(case))
    x = case.logits((4, 7), g)
    c = (torch.rand(4, 1, generator=g, dtype=F64) - 0.5) * 10
    assert_close(case(x + c), case(x), case.tol(F64), f"{case}: f(x + c) vs f(x)")


@pytest.mark.parametrize("case", SCALE_CASES, ids=ids)
def test_scale_invariant(case):
    g = gen("scale", str(case))
    x = case.logits((4, 7), g)
    s = torch.rand(4, 1, generator=g, dtype=F64) * 10 + 0.1
    assert_close(case(x * s), case(x), case.tol(F64), f"{case}: f(s x) vs f(x)")


#: Three logits close together, three 20 and more below: any sparse map zeroes the low
#: group (sparsemax: z_max - z > 1; alpha-entmax: (alpha-1)(z_max - z) > 1, so any
#: alpha >= 1.05; top-k: k <= 3 of the high group).
GAP_ROW = [0.3, 0.0, -0.2, -20.0, -21.0, -22.0]


@pytest.mark.parametrize("case", SPARSE_CASES, ids=ids)
def test_sparse_exact_zeros(case):
    x = torch.tensor([GAP_ROW, GAP_ROW[::-1]], dtype=F64)
    out = case(x)
    low = x < -10
    if case.dense_override:  # declared dense at this parameter (_helpers.DENSE_AT): check it
        assert (out != case.excluded).all(), f"{case} is declared dense here: {out}"
        return
    assert (out[low] == case.excluded).all(), f"{case}: not exactly zero on the gap: {out}"
    top = x.argmax(-1, keepdim=True)
    assert (out.gather(-1, top) != case.excluded).all(), f"{case}: the max got nothing: {out}"


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_neg_inf_padding_equals_slicing(case, dim):
    g = gen("pad", str(case), dim)
    x = case.logits((3, 5), g)
    pos = torch.randperm(8, generator=g)
    keep, pad = pos[:5].sort().values, pos[5:].sort().values
    xp = torch.full((3, 8), NEG_INF, dtype=F64)
    xp[:, keep] = x
    if dim == 0:
        x, xp = x.T, xp.T
    out = case(xp, dim)
    assert_close(out.index_select(dim, keep), case(x, dim), case.tol(F64), f"{case} kept")
    assert (out.index_select(dim, pad) == case.excluded).all(), f"{case} padded: {out}"


MASK_LAYOUTS = [  # (x shape, dim, mask shape)
    ((2, 4, 5), -1, (2, 4, 5)),
    ((2, 4, 5), -1, (4, 5)),
    ((2, 4, 5), -1, (2, 1, 5)),
    ((2, 4, 5), 1, (2, 4, 1)),
]


@pytest.mark.parametrize("layout", MASK_LAYOUTS, ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_mask_equals_neg_inf(case, layout):
    shape, dim, mask_shape = layout
    g = gen("mask", str(case), layout)
    x = case.logits(shape, g)
    mask = random_mask(mask_shape, g, max(1, case.min_size), dim)
    if case.nonnegative:  # masked entries are outside the domain check
        x = torch.where(mask, x, -1.0)
    out = case(x, dim, mask=mask)
    expected = case(torch.where(mask, x, NEG_INF), dim)
    assert_close(out, expected, case.tol(F64), f"{case} mask {tuple(mask_shape)} dim={dim}")
    assert (out[~mask.broadcast_to(shape)] == case.excluded).all()


def _empty_row_batch(case: Case, g: torch.Generator):
    """Rows: 0 normal, 1 fully masked, 2 all -inf, 3 normal with two -inf entries."""
    x = case.logits((4, 6), g)
    x[2] = NEG_INF
    x[3, [1, 4]] = NEG_INF
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1] = False
    return x, mask


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_empty_rows(case):
    """Rows with nothing kept give 0 (log: -inf), never NaN, pass zero gradient, and leave
    the other rows as they are alone."""
    g = gen("empty", str(case))
    x, mask = _empty_row_batch(case, g)
    x.requires_grad_()
    out = case(x, mask=mask)
    assert not out.isnan().any(), f"{case}: NaN in {out}"
    assert (out[1:3] == case.excluded).all(), f"{case}: empty rows gave {out[1:3]}"
    assert (out[3, [1, 4]] == case.excluded).all()
    alone = case(x.detach()[[0, 3]])
    assert_close(out[[0, 3]], alone, case.tol(F64), f"{case}: other rows")
    w = torch.randn(4, 6, generator=g, dtype=F64)
    (finite_part(out) * w).sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all(), f"{case}: gradient {grad}"
    assert (grad[1:3] == 0).all(), f"{case}: gradient of empty rows {grad[1:3]}"
    assert (grad[3, [1, 4]] == 0).all(), f"{case}: gradient of -inf entries {grad[3]}"


@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_excluded_entries_tensor_param_grad(case, param):
    """A learned per-row tensor parameter gets a finite gradient through -inf and masked
    entries: 0 from the rows with nothing kept, and from a row with -inf entries the same
    as from that row with them sliced off."""
    g = gen("empty-param", str(case), param.name)
    x, mask = _empty_row_batch(case, g)
    w = torch.randn(4, 6, generator=g, dtype=F64)

    def param_grad(x, mask, w):
        t = torch.full((x.shape[0], 1), float(param.default), dtype=F64, requires_grad=True)
        (finite_part(case(x, mask=mask, **{param.name: t})) * w).sum().backward()
        return t.grad

    grad = param_grad(x, mask, w)
    assert torch.isfinite(grad).all(), f"{case}: d/d{param.name} = {grad.flatten().tolist()}"
    assert (grad[1:3] == 0).all(), f"{case}: d/d{param.name} of empty rows {grad[1:3]}"
    keep = torch.isfinite(x[3])
    sliced = param_grad(x[3:4, keep], None, w[3:4, keep])
    assert_close(grad[3], sliced[0], case.tol(F64), f"{case}: d/d{param.name}, -inf vs sliced")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_nan_propagates_to_its_row(case):
    g = gen("nan", str(case))
    x = case.logits((4, 6), g)
    x[1, 2] = float("nan")
    out = case(x)
    expected_nan = case.reference(x).isnan()  # the oracle: whole row, or element-wise
    assert torch.equal(out.isnan(), expected_nan), f"{case}: NaN pattern {out.isnan()}"
    if case.normalized:
        assert out[1].isnan().all(), f"{case}: row with a NaN gave {out[1]}"
    others = [0, 2, 3]
    assert torch.isfinite(out[others]).all(), f"{case}: {out[others]}"
    assert_close(out[others], case(x[others]), case.tol(F64), f"{case}: other rows")


EXTREME_ROWS = [[1e30, 0.0, -1e30], [1e30, 1e30, -5.0], [-1e30, -1e30, 3.0]]


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_extreme_logits(case):
    """float32 logits of +-1e30 give the float64 oracle's (mathematically right) answer,
    and a finite gradient."""
    x = case.domain(torch.tensor(EXTREME_ROWS, dtype=torch.float32)).requires_grad_()
    out = case(x)
    (grad,) = torch.autograd.grad(finite_part(out).sum(), x)
    assert torch.isfinite(grad).all(), f"{case}: gradient {grad}"
    assert out.dtype == torch.float32
    expected = case.reference(x.double())
    if case.log:
        # Where the oracle's float64 formula underflows to -inf on a kept (finite) entry
        # (log softplus(-1e30): softplus underflows), the true log-probability is only known
        # to be below log(smallest float64) ~ -744.4: ours must be too (finite or -inf).
        under = expected.isneginf() & torch.isfinite(x.detach())
        assert (out[under] < -744.4).all(), f"{case}: {out[under]} where p < 2^-1074"
        expected = torch.where(under, out.double(), expected)
    assert_close(out, expected, case.tol(torch.float32), f"{case} on {x.detach()}")


@pytest.mark.parametrize("shape, dim", [((4, 1), -1), ((1, 4), 0)], ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_size_one_rows(case, shape, dim):
    x = case.logits(shape, gen("size1", str(case), dim))
    if case.nonnegative:
        x = x + 1  # a positive entry (a zero row would give zeros)
    if case.min_size > 1:
        expect_raises(ValueError, case.size_bound, case, x, dim)
        return
    out = case(x, dim)
    assert_close(out, case.reference(x, dim), case.tol(F64), str(case))
    if case.normalized:
        assert torch.equal(out, torch.full_like(x, 0.0 if case.log else 1.0)), f"{case}: {out}"


@pytest.mark.parametrize("shape", [(3, 0), (0, 4)], ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_size_zero(case, shape):
    x = torch.zeros(shape, dtype=F64)
    if shape[-1] < case.min_size:
        expect_raises(ValueError, case.size_bound, case, x)
        return
    out = case(x)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_dim_input(case):
    x = case.domain(torch.tensor(0.7, dtype=F64))
    if case.min_size > 1:
        expect_raises(ValueError, case.size_bound, case, x)
        return
    for dim in (0, -1):
        out = case(x, dim)
        assert out.shape == () and out.dtype == F64
        assert_close(out, case.reference(x.reshape(1)).reshape(()), case.tol(F64), str(case))
        if case.normalized:
            assert out.item() == (0.0 if case.log else 1.0)
        assert torch.equal(case(x, dim, mask=torch.tensor(True)), out)
        assert case(x, dim, mask=torch.tensor(False)).item() == case.excluded
    expect_raises(IndexError, ["dim"], case, x, 1)


ALL_FLOATS = [torch.float16, torch.bfloat16, torch.float32, F64]


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_dtype_and_shape_preserved(case, dtype):
    """Output and gradient have the input's dtype and shape (with and without a mask)."""
    g = gen("dtype", str(case))
    x = case.logits((2, 3, 5), g, dtype).requires_grad_()
    for dim in (-1, 1):
        for mask in (None, random_mask(x.shape, g, max(1, case.min_size), dim)):
            out = case(x, dim, mask=mask)
            assert out.dtype == dtype and out.shape == x.shape, f"{case} {dtype} dim={dim}"
            kept = out if mask is None else out[mask]
            assert torch.isfinite(kept).all(), f"{case} {dtype}: {out}"
            (grad,) = torch.autograd.grad(finite_part(out).sum(), x)
            assert grad.dtype == dtype and torch.isfinite(grad).all(), f"{case}: {grad}"


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=ids)
@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_tensor_param_keeps_input_dtype(case, param, dtype):
    """A float64 tensor parameter does not promote the output: it has x's dtype."""
    x = case.logits((3, 5), gen("param-dtype", str(case)), dtype)
    t = torch.full((3, 1), float(param.default), dtype=F64)
    out = case(x, **{param.name: t})
    assert out.dtype == dtype and out.shape == x.shape
    eps = torch.finfo(dtype).eps  # low precision: the float32 result rounded (< 1 ulp)
    tol = Tol(eps, eps) if dtype in LOW_PRECISION else case.tol(dtype)
    assert_close(out, case(x.double(), **{param.name: t}), tol, f"{case} {dtype}")


# ============================================================ 4. bad arguments
@pytest.mark.parametrize("case, param, value", BAD_PARAMS, ids=ids)
def test_bad_param(case, param, value):
    """Each Param.bad value raises, naming the parameter and the value."""
    x = case.logits((2, 5), gen("bad"))
    expect_raises(expected_error(param, value), [param.name, repr(value)],
                  case, x, **{param.name: value})


BAD_TENSOR_PARAMS = [
    (c, p, v) for c, p in TENSOR_PARAM_CASES for v in p.bad
    if isinstance(v, float) and expected_error(p, v) is ValueError
]


@pytest.mark.parametrize("case, param, value", BAD_TENSOR_PARAMS, ids=ids)
def test_bad_tensor_param(case, param, value):
    """A bad value in a tensor parameter (e.g. temperature <= 0, alpha < 1) raises
    ValueError, also when only one row of a per-row tensor is bad."""
    x = case.logits((2, 5), gen("bad-tensor"))
    for t in (torch.tensor(value, dtype=F64), torch.tensor([[param.default], [value]], dtype=F64)):
        expect_raises(ValueError, [param.name], case, x, **{param.name: t})


SCALAR_PARAMS = [(c, p) for c in DEFAULT_CASES for p in c.mapping.params
                 if torch.Tensor not in p.types]


@pytest.mark.parametrize("case, param", SCALAR_PARAMS, ids=ids)
def test_tensor_for_scalar_param_raises(case, param):
    x = case.logits((2, 5), gen("scalar-param"))
    expect_raises(TypeError, [param.name], case, x, **{param.name: torch.tensor(2.0)})


@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_bad_tensor_param_type_and_shape(case, param):
    x = case.logits((2, 5), gen("bad-tensor-shape"))
    expect_raises(TypeError, [param.name], case, x, **{param.name: torch.tensor(2)})
    expect_raises(ValueError, [param.name], case, x,
                  **{param.name: torch.full((3,), float(param.default), dtype=F64)})


NOT_FLOAT = [
    torch.arange(6).reshape(2, 3),
    torch.ones(2, 3, dtype=torch.bool),
    torch.ones(2, 3, dtype=torch.complex64),
]


@pytest.mark.parametrize("x", NOT_FLOAT, ids=lambda x: str(x.dtype))
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_non_float_x_raises(case, x):
    expect_raises(TypeError, [str(x.dtype)], case, x)


@pytest.mark.parametrize("x", [[1.0, 2.0], 3.0, np.ones(3)], ids=lambda x: type(x).__name__)
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_non_tensor_x_raises(case, x):
    expect_raises(TypeError, [type(x).__name__], case, x)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_bad_dim(case):
    x = case.logits((2, 5), gen("bad-dim"))
    for dim in (2, -3, 7):
        expect_raises((IndexError, ValueError), [str(dim)], case, x, dim)
    for dim in (1.0, "0", None, True):
        expect_raises(TypeError, ["dim"], case, x, dim)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_bad_mask(case):
    x = case.logits((2, 5), gen("bad-mask"))
    for mask in (torch.ones(2, 5), torch.ones(2, 5, dtype=torch.int64), [[True] * 5] * 2):
        expect_raises(TypeError, ["mask"], case, x, mask=mask)
    for shape in ((2,), (5, 2), (3, 2, 5)):  # not broadcastable, or growing x
        expect_raises(ValueError, ["mask"], case, x, mask=torch.ones(shape, dtype=torch.bool))


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_domain(case):
    """Exactly the mappings of NONNEGATIVE_DOMAIN reject a negative kept entry."""
    x = torch.tensor([[1.0, -0.5, 2.0]], dtype=F64)
    if case.nonnegative:
        expect_raises(ValueError, ["-0.5"], case, x)
        case(x, mask=torch.tensor([True, False, True]))  # masked: fine
        case(torch.tensor([[1.0, NEG_INF, 2.0]], dtype=F64))  # -inf: excluded, fine
    else:
        assert torch.isfinite(case(x)).all()


@pytest.mark.parametrize("case", SIZE_BOUND_CASES, ids=ids)
def test_size_bound_param_too_large(case):
    x = case.logits((2, 3), gen("too-large"))
    for name in case.size_bound:
        expect_raises(ValueError, [name, "4"], case, x, **{name: 4})
        expect_raises(ValueError, [name, "3"], case, x, 0, **{name: 3})  # dim 0 has size 2


# ============================================================ 5. low precision
def max_error(a: torch.Tensor, exact: torch.Tensor) -> float:
    """max |a - exact| in float64; equal infinities count 0, a NaN or unmatched inf counts
    inf."""
    a = a.double()
    d = torch.where(a == exact, 0.0, (a - exact).abs())
    return torch.nan_to_num(d, nan=math.inf).max().item()


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=ids)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_low_precision_vs_naive(case, dtype):
    """Half/bfloat16: error against float64 <= factor x the naive formula's error + atol.
    Inputs: distinct values in [-2.9, 2.9] (no top-k ties after rounding; |z| < 3 keeps the
    naive order-10 Taylor polynomial z^10 below the float16 maximum, so err_naive is
    finite)."""
    factor, atol = LOW_PRECISION[dtype]
    x = distinct_logits(case, 16, 37, gen("lowp", str(case), dtype)).to(dtype)
    exact = case.reference(x.double())
    ours = case(x)
    assert ours.dtype == dtype and ours.shape == x.shape
    err_ours, err_naive = max_error(ours, exact), max_error(case.reference(x), exact)
    assert math.isfinite(err_naive), f"{case}: the naive baseline is not finite in {dtype}"
    assert err_ours <= factor * err_naive + atol, (
        f"{case} {dtype}: error {err_ours:.3e} > {factor} x naive {err_naive:.3e} + {atol}")


# ============================================================ 6. published test vector
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_vector(name):
    out = sl.get_mapping(name).fn(torch.tensor(TEST_VECTOR, dtype=F64))
    assert_close(out, torch.tensor(PUBLISHED[name], dtype=F64), Tol(0.0, 5e-5), name)
    assert (out[torch.tensor(PUBLISHED[name]) == 0] == 0).all(), f"{name}: zeros {out}"


@pytest.mark.parametrize("as_tensor", [False, True])
def test_entmax_special_alphas(as_tensor):
    x = torch.tensor([TEST_VECTOR, [0.1, -0.7, 3.0]], dtype=F64)

    def alpha(a: float):
        return torch.full((2, 1), a, dtype=F64) if as_tensor else a

    assert torch.equal(sl.entmax(x, alpha=alpha(1.0)), sl.softmax(x))
    assert torch.equal(sl.entmax(x, alpha=alpha(2.0)), sl.sparsemax(x))
    case = Case(ENTMAX, ENTMAX.fn)
    assert_close(sl.entmax(x, alpha=alpha(1.5)), sl.entmax15(x), case.tol(F64), "alpha=1.5")


# ============================================================ 7. hypothesis
@st.composite
def logit_arrays(draw):
    """(float64 logits in [-50, 50] of 1-3 dims of size 1-8, some entries excluded, a dim)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    vals = draw(hnp.arrays(np.float64, shape, elements=st.floats(-50, 50, allow_nan=False)))
    excl = draw(hnp.arrays(np.bool_, shape, elements=st.integers(0, 4).map(lambda i: i == 0)))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    return torch.from_numpy(vals), torch.from_numpy(excl), dim


@pytest.mark.parametrize("case", CASES, ids=ids)
@hsettings(max_examples=30, deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(data=logit_arrays())
def test_hypothesis_properties(case, data):
    x, excl, dim = data
    x = case.domain(x).masked_fill(excl, NEG_INF)
    if x.shape[dim] < case.min_size:
        expect_raises(ValueError, case.size_bound, case, x, dim)
        return
    out = case(x, dim)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_close(out, case.reference(x, dim), case.tol(F64), f"{case} dim={dim}")
    if case.normalized:
        assert_normalized(out, case, dim, has_mass(case, x, dim), SUM_ATOL[F64], str(case))
    else:
        assert ((out >= 0) & (out <= 1)).all()


# ============================================================ 9. the registry
def test_names_unique_and_exported():
    names = [m.name for m in MAPPINGS]
    assert len(names) == len(set(names)) and names
    for m in MAPPINGS:
        for f in functions(m):
            assert getattr(sl, f.__name__) is f and getattr(slf, f.__name__) is f
            assert f.__name__ in sl.__all__ and f.__name__ in slf.__all__
            assert sl.get_mapping(m.name) is m


@pytest.mark.parametrize("name", ["nope", "", "Softmax", None, 3])
def test_get_mapping_unknown(name):
    expect_raises(ValueError, [repr(name), *(m.name for m in MAPPINGS)], sl.get_mapping, name)


@pytest.mark.parametrize("mapping, fn", FUNCTIONS, ids=ids)
def test_every_function_has_a_reference(mapping, fn):
    assert fn.__name__ in REFERENCES, (
        f"{fn.__name__} has no reference in tests/oracle/references.py")
    ref_params = inspect.signature(REFERENCES[fn.__name__]).parameters
    for p in mapping.params:
        assert p.name in ref_params or p.name in ACCURACY_PARAMS, (
            f"reference of {fn.__name__} does not take {p.name!r}")


@pytest.mark.parametrize("mapping", MAPPINGS, ids=ids)
def test_params_validate_their_own_values(mapping):
    for p in mapping.params:
        assert p.validate(p.default) is p.default
        for v in p.valid:
            assert p.validate(v) is v
        for v in p.bad:
            with pytest.raises((TypeError, ValueError)):
                p.validate(v)


@pytest.mark.parametrize("mapping, fn", FUNCTIONS, ids=ids)
def test_signature(mapping, fn):
    """(x, dim=-1, *, <params with the registry's defaults>, mask=None, dtype=None)."""
    P = inspect.Parameter
    got = [(p.name, p.kind, p.default) for p in signature_params(fn)]
    want = ([("x", P.POSITIONAL_OR_KEYWORD, P.empty), ("dim", P.POSITIONAL_OR_KEYWORD, -1)]
            + [(p.name, P.KEYWORD_ONLY, p.default) for p in mapping.params]
            + [("mask", P.KEYWORD_ONLY, None), ("dtype", P.KEYWORD_ONLY, None)])
    assert got == want


def test_facts_outside_the_registry_name_registered_things():
    """The lists in _helpers.py that the registry does not record must not rot."""
    names = {m.name for m in MAPPINGS}
    params = {p.name for m in MAPPINGS for p in m.params}
    assert NONNEGATIVE_DOMAIN <= names
    assert SIZE_BOUND_PARAMS <= params and ACCURACY_PARAMS <= params
    for name, param, value in DENSE_AT:
        assert value in sl.get_mapping(name).param(param).valid
