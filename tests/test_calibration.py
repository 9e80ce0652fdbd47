"""Tests for softmaxlab.calibration: metrics by hand and against NumPy, binning edges,
calibrated/overconfident data, temperature fitting, argument checks, TemperatureScaler."""

import math

import numpy as np
import pytest
import torch

import softmaxlab as sl
from softmaxlab.calibration import (
    Reliability,
    TemperatureScaler,
    brier,
    ece,
    fit_temperature,
    mce,
    nll,
    reliability,
)

from .tolerances import CALIBRATION

METRICS = [ece, mce, brier, nll, reliability]
BINNED = [ece, mce, reliability]

# ------------------------------------------------------------------ hand-computed example
#
# 7 rows, 3 classes, 3 bins: [0, 1/3], (1/3, 2/3], (2/3, 1].
#  row  probs              target  conf  pred  correct  bin
#  0    [0.2, 0.5, 0.3]    1       0.5   1     yes      1
#  1    [0.1, 0.1, 0.8]    0       0.8   2     no       2
#  2    [0.6, 0.3, 0.1]    0       0.6   0     yes      1
#  3    [0.9, 0.05, 0.05]  0       0.9   0     yes      2
#  4    [1.0, 0.0, 0.0]    0       1.0   0     yes      2   (confidence exactly 1)
#  5    [0.2, 0.1, 0.0]    0       0.2   0     yes      0   (row does not sum to 1)
#  6    [0.0, 0.0, 0.0]    2       0.0   0     no       0   (confidence exactly 0)
# bin 0: n=2, conf (0.2+0)/2 = 0.1,        acc 1/2 = 0.5,   gap 0.4
# bin 1: n=2, conf (0.5+0.6)/2 = 0.55,     acc 2/2 = 1.0,   gap 0.45
# bin 2: n=3, conf (0.8+0.9+1)/3 = 0.9,    acc 2/3,         gap 0.2333...
# ECE = (2*0.4 + 2*0.45 + 3*(0.9 - 2/3)) / 7 = (0.8 + 0.9 + 0.7) / 7 = 2.4 / 7
# MCE = 0.45
# Brier rows: 0.04+0.25+0.09=0.38 | 0.81+0.01+0.64=1.46 | 0.16+0.09+0.01=0.26
#             0.01+0.0025+0.0025=0.015 | 0 | 0.64+0.01+0=0.65 | 0+0+1=1
#   mean = 3.765 / 7
# NLL (rows 0-4 only, all p_target > 0): -(ln .5 + ln .1 + ln .6 + ln .9 + ln 1) / 5
#   = (0.6931472 + 2.3025851 + 0.5108256 + 0.1053605 + 0) / 5 = 3.6119184 / 5 = 0.72238368

HAND_PROBS = [
    [0.2, 0.5, 0.3],
    [0.1, 0.1, 0.8],
    [0.6, 0.3, 0.1],
    [0.9, 0.05, 0.05],
    [1.0, 0.0, 0.0],
    [0.2, 0.1, 0.0],
    [0.0, 0.0, 0.0],
]
HAND_TARGET = [1, 0, 0, 0, 0, 0, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hand_example(dtype):
    p = torch.tensor(HAND_PROBS, dtype=dtype)
    y = torch.tensor(HAND_TARGET)
    tol = CALIBRATION[dtype]
    r = reliability(p, y, n_bins=3)
    assert isinstance(r, Reliability)
    assert r.counts.tolist() == [2, 2, 3]
    assert r.counts.dtype == torch.int64
    assert r.edges.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=tol)
    assert r.confidence.tolist() == pytest.approx([0.1, 0.55, 0.9], abs=tol)
    assert r.accuracy.tolist() == pytest.approx([0.5, 1.0, 2 / 3], abs=tol)
    assert r.empty.tolist() == [False, False, False]
    for value, expected in [
        (ece(p, y, n_bins=3), 2.4 / 7),
        (mce(p, y, n_bins=3), 0.45),
        (brier(p, y), 3.765 / 7),
        (nll(p[:5], y[:5]), 0.72238368),
    ]:
        assert value.dtype == dtype and value.shape == ()
        assert value.item() == pytest.approx(expected, abs=max(tol, 1e-7))


def test_inner_edges_are_right_closed():
    # bins (lo, hi]: 0.25 -> bin 0, 0.26 -> bin 1, 0.5 -> bin 1, 0.75 -> bin 2
    # (0.25, 0.5, 0.75 are exact binary fractions, equal to the edges)
    p = torch.tensor([[0.25, 0.25], [0.5, 0.5], [0.75, 0.25], [0.25, 0.26]])
    r = reliability(p, torch.zeros(4, dtype=torch.long), n_bins=4)
    assert r.counts.tolist() == [1, 2, 1, 0]
    assert r.empty.tolist() == [False, False, False, True]
    # empty bins give 0, never NaN
    assert r.confidence[3].item() == 0.0 and r.accuracy[3].item() == 0.0
    # confidence 0.5 with 2 bins is in the first bin [0, 0.5]
    assert reliability(p[1:2], torch.tensor([0]), n_bins=2).counts.tolist() == [1, 0]


@pytest.mark.parametrize("n_bins", [1, 2, 3, 10, 15, 1000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_confidence_zero_and_one_land_in_real_bins(n_bins, dtype):
    # torchmetrics#3510 (conf 1.0 -> phantom bin) and #1646 (conf 0 -> index error)
    p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.25]], dtype=dtype)
    y = torch.tensor([0, 0, 0, 1, 0])
    r = reliability(p, y, n_bins=n_bins)
    assert r.counts.shape == (n_bins,) and r.edges.shape == (n_bins + 1,)
    assert r.counts.sum().item() == 5
    assert r.edges[0].item() == 0.0 and r.edges[-1].item() == 1.0
    if n_bins > 2:
        assert r.counts[0].item() == 2  # both confidence-0 rows
        assert r.counts[-1].item() == 2  # both confidence-1 rows
    for t in (r.confidence, r.accuracy, ece(p, y, n_bins=n_bins), mce(p, y, n_bins=n_bins)):
        assert torch.isfinite(t).all() and t.dtype == dtype


# -------------------------------------------------------------- NumPy re-implementation


def np_metrics(probs, target, n_bins):
    """Straightforward float64 NumPy version, one bin at a time."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(target)
    n = len(y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, confs, accs = [], [], []
    ece_v, mce_v = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi)
        if b == 0:
            in_bin |= conf == lo
        k = int(in_bin.sum())
        counts.append(k)
        if k == 0:
            confs.append(0.0)
            accs.append(0.0)
            continue
        c, a = conf[in_bin].mean(), correct[in_bin].mean()
        confs.append(c)
        accs.append(a)
        ece_v += k / n * abs(a - c)
        mce_v = max(mce_v, abs(a - c))
    onehot = np.eye(p.shape[1])[y]
    brier_v = ((p - onehot) ** 2).sum(axis=1).mean()
    tiny = np.finfo(np.asarray(probs).dtype).tiny
    nll_v = -np.log(np.maximum(p[np.arange(n), y], tiny)).mean()
    return dict(ece=ece_v, mce=mce_v, brier=brier_v, nll=nll_v, counts=counts, conf=confs,
                acc=accs)


def random_probs(seed, n=600, c=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    z = z * torch.rand(n, 1, generator=g, dtype=torch.float64) * 6  # spread of confidences
    p = torch.softmax(z, dim=-1)
    p[:40] = sl.sparsemax(z[:40])  # exact zeros and some confidence-1 rows
    p[40:80] = torch.sigmoid(z[40:80])  # one-vs-all rows that do not sum to 1
    y = torch.randint(0, c, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.6
    y = torch.where(agree, p.argmax(-1), y)
    return p.to(dtype), y


@pytest.mark.parametrize("n_bins", [1, 2, 7, 15, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_numpy(n_bins, dtype):
    p, y = random_probs(n_bins, dtype=dtype)
    ref = np_metrics(p.numpy(), y.numpy(), n_bins)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    r = reliability(p, y, n_bins=n_bins)
    assert r.counts.tolist() == ref["counts"]
    np.testing.assert_allclose(r.confidence.numpy(), ref["conf"], rtol=0, atol=tol)
    np.testing.assert_allclose(r.accuracy.numpy(), ref["acc"], rtol=0, atol=tol)
    assert ece(p, y, n_bins=n_bins).item() == pytest.approx(ref["ece"], abs=tol)
    assert mce(p, y, n_bins=n_bins).item() == pytest.approx(ref["mce"], abs=tol)
    assert brier(p, y).item() == pytest.approx(ref["brier"], rel=tol)
    assert nll(p, y).item() == pytest.approx(ref["nll"], rel=tol)
    # ECE/MCE are the weighted mean/max of the reliability gaps
    gap = (r.accuracy - r.confidence).abs().double()
    w = r.counts.double() / r.counts.sum()
    assert ece(p, y, n_bins=n_bins).item() == pytest.approx((w * gap).sum().item(), abs=tol)
    assert mce(p, y, n_bins=n_bins).item() == pytest.approx(gap[~r.empty].max().item(), abs=tol)


def test_nll_of_zero_probability_is_finite():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    y = torch.tensor([1, 0])
    expected = (-math.log(torch.finfo(torch.float32).tiny) + math.log(2)) / 2  # (87.34+0.69)/2
    assert nll(p, y).item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(nll(p.double(), y))
    assert torch.isfinite(nll(p.half(), y))


def test_integer_target_dtypes_and_ignored_sum():
    p = torch.tensor(HAND_PROBS)
    expected = ece(p, torch.tensor(HAND_TARGET), n_bins=3)
    for dt in (torch.uint8, torch.int16, torch.int32):
        assert ece(p, torch.tensor(HAND_TARGET, dtype=dt), n_bins=3) == expected


# ------------------------------------------------------- calibrated vs overconfident data


def sampled_labels(z, seed, mapping=torch.softmax):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(mapping(z, -1), 1, generator=g).squeeze(1)


def calibrated_logits(n, c=10, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    return z, sampled_labels(z, seed + 1)


def test_calibrated_data_has_small_ece_and_overconfident_large():
    z, y = calibrated_logits(20000)
    calibrated = ece(torch.softmax(z, -1), y).item()
    overconfident = ece(torch.softmax(3 * z, -1), y).item()
    assert calibrated < 0.02
    assert overconfident > 0.1 and overconfident > 5 * calibrated
    assert mce(torch.softmax(3 * z, -1), y) > mce(torch.softmax(z, -1), y)


# ------------------------------------------------------------------ temperature fitting


def softmax_nll(z, y, t):
    return torch.nn.functional.cross_entropy(z.double() / t, y).item()


def test_fit_recovers_known_temperature():
    z, y = calibrated_logits(5000, seed=3)
    shown = 3 * z
    t = fit_temperature(shown, y)
    assert isinstance(t, float)
    assert abs(t - 3) < 0.3
    before = ece(torch.softmax(shown, -1), y)
    after = ece(torch.softmax(shown / t, -1), y)
    assert after < before
    assert softmax_nll(shown, y, t) < softmax_nll(shown, y, 1.0)
    # under-confident logits: T < 1
    t_small = fit_temperature(z / 2, y)
    assert abs(t_small - 0.5) < 0.05
    # float32 logits give the same answer (the fit runs in float64)
    assert fit_temperature(shown.float(), y) == pytest.approx(t, rel=1e-4)


def test_fit_never_increases_nll_when_t1_is_optimal():
    z, y = calibrated_logits(4000, seed=5)
    t = fit_temperature(z, y)
    assert abs(t - 1) < 0.1
    assert softmax_nll(z, y, t) <= softmax_nll(z, y, 1.0)


def test_fit_returns_one_when_nothing_improves():
    # constant rows: the NLL is log C for every T, so no T is better than T = 1
    assert fit_temperature(torch.zeros(50, 4), torch.randint(0, 4, (50,))) == 1.0


def test_fit_falls_back_to_one_when_optimizer_makes_it_worse(monkeypatch):
    # an optimizer that walks away from the optimum must not leak a worse T
    # (gpleiss/temperature_scaling#29/#20, netcal#61)
    class BadLBFGS:
        def __init__(self, params, **kw):
            self.params = list(params)

        def zero_grad(self):
            pass

        def step(self, closure):
            with torch.no_grad():
                self.params[0].fill_(3.0)  # T = e^3: far too soft

    z, y = calibrated_logits(500, seed=6)
    monkeypatch.setattr(torch.optim, "LBFGS", BadLBFGS)
    assert fit_temperature(z, y) == 1.0


def test_fit_with_few_iterations_still_never_worse():
    z, y = calibrated_logits(2000, seed=7)
    for shown in (3 * z, z, z / 3):
        t = fit_temperature(shown, y, max_iter=1)
        assert softmax_nll(shown, y, t) <= softmax_nll(shown, y, 1.0)


def test_fit_taylor_softmax_recovers_temperature():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(5000, 6, generator=g, dtype=torch.float64) * 3
    y = sampled_labels(z, 12, mapping=sl.taylor_softmax)
    t = fit_temperature(3 * z, y, mapping="taylor_softmax")
    assert abs(t - 3) < 0.3

    def taylor_nll(t_):
        return -sl.log_taylor_softmax(3 * z / t_).gather(1, y[:, None]).mean().item()

    assert taylor_nll(t) < taylor_nll(1.0)
    # mapping parameters are passed through
    t4 = fit_temperature(3 * z, y, mapping="taylor_softmax", order=4)
    assert t4 > 0 and t4 != t


@pytest.mark.parametrize("m", [m for m in sl.mappings() if m.log_fn is not None],
                         ids=lambda m: m.name)
def test_fit_every_mapping_with_log_form(m):
    z, _ = calibrated_logits(400, c=5, seed=13)
    y = sampled_labels(2 * z, 14)
    t = fit_temperature(z, y, mapping=m.name)
    assert t > 0 and math.isfinite(t)

    def mapping_nll(t_):
        if any(p.name == "temperature" for p in m.params):
            lp = m.log_fn(z, temperature=t_)
        else:
            lp = m.log_fn(z / t_)
        return -lp.gather(1, y[:, None]).mean().item()

    assert mapping_nll(t) <= mapping_nll(1.0)


@pytest.mark.parametrize("m", [m for m in sl.mappings() if m.log_fn is None],
                         ids=lambda m: m.name)
def test_fit_raises_without_log_form(m):
    z, y = calibrated_logits(20, seed=1)
    with pytest.raises(ValueError, match=m.name):
        fit_temperature(z, y, mapping=m.name)


def test_fit_bad_arguments():
    z, y = calibrated_logits(20, c=3, seed=2)
    with pytest.raises(ValueError, match="sparsemax"):
        fit_temperature(z, y, mapping="sparsemax")
    with pytest.raises(ValueError, match="no_such_map"):
        fit_temperature(z, y, mapping="no_such_map")
    with pytest.raises(ValueError, match="temperature"):
        fit_temperature(z, y, temperature=2.0)
    with pytest.raises(TypeError, match="bogus"):
        fit_temperature(z, y, bogus=1)
    with pytest.raises(ValueError, match="order"):
        fit_temperature(z, y, mapping="taylor_softmax", order=3)
    with pytest.raises(ValueError, match="max_iter"):
        fit_temperature(z, y, max_iter=0)
    with pytest.raises(TypeError, match="max_iter"):
        fit_temperature(z, y, max_iter=2.5)
    with pytest.raises(TypeError, match="logits"):
        fit_temperature(z.long(), y)
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(z[0], y)
    with pytest.raises(ValueError, match="target"):
        fit_temperature(z, y[:-1])
    with pytest.raises(ValueError, match=r"target.*-1"):
        fit_temperature(z, torch.full_like(y, -1))
    bad = z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"logits.*nan"):
        fit_temperature(bad, y)
    masked = z.clone()
    masked[0, y[0]] = float("-inf")  # the target has probability 0 for every T
    with pytest.raises(ValueError, match="not finite"):
        fit_temperature(masked, y)


def test_fit_warns_on_probabilities():
    z, y = calibrated_logits(200, c=4, seed=8)
    with pytest.warns(UserWarning, match="probabilities"):
        fit_temperature(torch.softmax(z, -1), y)


def test_fit_does_not_touch_the_graph():
    z, y = calibrated_logits(300, seed=9)
    z = (2 * z).requires_grad_()
    fit_temperature(z, y)
    assert z.grad is None


# --------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("fn", METRICS, ids=lambda f: f.__name__)
def test_metric_bad_arguments(fn):
    p = torch.tensor(HAND_PROBS)
    y = torch.tensor(HAND_TARGET)
    with pytest.raises(TypeError, match=r"probs.*int64"):
        fn(p.long(), y)
    with pytest.raises(TypeError, match="probs"):
        fn(HAND_PROBS, y)
    with pytest.raises(ValueError, match=r"probs.*2-D"):
        fn(p[0], y)
    with pytest.raises(ValueError, match=r"probs.*2-D"):
        fn(p[None], y)
    with pytest.raises(TypeError, match=r"target.*float"):
        fn(p, y.float())
    with pytest.raises(TypeError, match=r"target.*bool"):
        fn(p, y.bool())
    with pytest.raises(ValueError, match=r"target.*shape"):
        fn(p, y[:-1])
    with pytest.raises(ValueError, match=r"target.*shape"):
        fn(p, y[:, None])
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got 3"):
        fn(p, torch.tensor([0, 1, 2, 3, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got -100"):
        fn(p, torch.tensor([0, 1, 2, -100, 0, 0, 0]))
    for bad_value in (1.5, -0.1, float("nan")):
        q = p.clone()
        q[2, 1] = bad_value
        with pytest.raises(ValueError, match="probs.*" + str(bad_value).replace(".", r"\.")):
            fn(q, y)
    with pytest.raises(ValueError, match=r"probs.*row"):
        fn(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("fn", BINNED, ids=lambda f: f.__name__)
def test_bad_n_bins(fn):
    p = torch.tensor(HAND_PROBS)
    y = torch.tensor(HAND_TARGET)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"n_bins.*{bad}"):
            fn(p, y, n_bins=bad)
    for bad in (2.0, True, "15"):
        with pytest.raises(TypeError, match="n_bins"):
            fn(p, y, n_bins=bad)


# --------------------------------------------------------------------- TemperatureScaler


def test_temperature_scaler():
    scaler = TemperatureScaler()
    assert repr(scaler) == "TemperatureScaler(temperature=1.0)"
    assert [n for n, _ in scaler.named_parameters()] == ["log_temperature"]
    assert scaler.temperature.item() == 1.0
    z, y = calibrated_logits(3000, seed=4)
    shown = (3 * z).float()
    assert scaler.fit(shown, y) is scaler
    t = fit_temperature(shown, y)
    assert scaler.temperature.item() == pytest.approx(t, rel=1e-6)
    assert repr(scaler) == f"TemperatureScaler(temperature={float(f'{t:.4g}')!r})"
    out = scaler(shown)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, shown / t)
    assert scaler(shown.double()).dtype == torch.float64
    # it is an ordinary learnable module: gradients reach log_temperature
    torch.nn.functional.cross_entropy(scaler(shown), y).backward()
    assert scaler.log_temperature.grad is not None
    # fit keyword arguments are forwarded
    scaler.fit(shown, y, mapping="taylor_softmax")
    assert scaler.temperature.item() == pytest.approx(
        fit_temperature(shown, y, mapping="taylor_softmax"), rel=1e-6
    )
    with pytest.raises(TypeError, match="logits"):
        scaler(torch.ones(3, dtype=torch.long))
