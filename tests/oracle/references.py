"""Independent, naive reference formulas ("oracle") for softmaxlab tests.

Every reference takes a tensor ``x`` (logit rows ``z`` along the LAST dim) and
computes in ``x``'s own dtype (no internal upcast), so that the same code gives
float64 ground truth and a "naive formula in low precision" error baseline.

Conventions shared by every *normalized* mapping:
  * entries equal to -inf are excluded: probability 0 (log form: -inf), and
    the formula is evaluated on the kept entries only;
  * a row with no kept entry gives all zeros (log form: all -inf);
  * a NaN anywhere in a row makes the whole output row NaN.
Deliberately not stabilised beyond the textbook row-max shift (except the
noted gaussian/arctan activation tweaks). All needed ops (sort, cumsum, topk,
amax, logsigmoid, softplus) run natively in float16/bfloat16 on CPU in
torch 2.x, so no float32 detours are used.
"""
import math

import torch
import torch.nn.functional as F

_NEG_INF = float("-inf")


def _kept(x):
    """Mask of non-excluded entries (x != -inf)."""
    return x != _NEG_INF


def _finish(x, out, log=False):
    """Force excluded entries to 0 / -inf and NaN-containing rows to NaN."""
    out = torch.where(_kept(x), out, torch.full_like(out, _NEG_INF if log else 0.0))
    nan_row = torch.isnan(x).any(dim=-1, keepdim=True)
    return torch.where(nan_row, torch.full_like(out, float("nan")), out)


def _ratio(x, a, log=False, log_a=None):
    """p = a / sum(a) over kept entries (log: log a - log sum a); empty row -> 0."""
    kept = _kept(x)
    a = torch.where(kept, a, torch.zeros_like(a))
    s = a.sum(dim=-1, keepdim=True)
    any_kept = kept.any(dim=-1, keepdim=True)
    s = torch.where(any_kept, s, torch.ones_like(s))
    if log:
        la = torch.log(a) if log_a is None else log_a
        return _finish(x, la - torch.log(s), log=True)
    return _finish(x, a / s)


def _softmax_core(x, g, log=False):
    """softmax of g over kept entries of x: exp(g - max g) / sum exp(g - max g)."""
    kept = _kept(x)
    g = torch.where(kept, g, torch.full_like(g, _NEG_INF))
    m = g.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)  # empty rows
    e = torch.exp(g - m)
    s = e.sum(dim=-1, keepdim=True)
    s = torch.where(kept.any(dim=-1, keepdim=True), s, torch.ones_like(s))
    if log:
        return _finish(x, g - m - torch.log(s), log=True)
    return _finish(x, e / s)


def _fill_excluded(x, value=0.0):
    """Replace excluded (-inf) entries by a harmless finite value before a formula."""
    return torch.where(_kept(x), x, torch.full_like(x, value))


# ---------------------------------------------------------------- softmax family
def ref_softmax(x, temperature=1.0):
    """p_i = exp(z_i/T - m) / sum_j exp(z_j/T - m), m = max_j z_j/T."""
    return _softmax_core(x, x / temperature)


def ref_log_softmax(x, temperature=1.0):
    """log p_i = z_i/T - m - log sum_j exp(z_j/T - m)."""
    return _softmax_core(x, x / temperature, log=True)


def _taylor_f(x, order):
    """f_n(z) = sum_{i=0..n} z^i / i!  (direct polynomial, input dtype)."""
    z = _fill_excluded(x)
    return sum(z ** i / math.factorial(i) for i in range(order + 1))


def ref_taylor_softmax(x, order=2):
    """p_i = f_n(z_i) / sum_j f_n(z_j), f_n(z) = sum_{i<=n} z^i/i! (n even)."""
    return _ratio(x, _taylor_f(x, order))


def ref_log_taylor_softmax(x, order=2):
    """log p_i = log f_n(z_i) - log sum_j f_n(z_j)."""
    return _ratio(x, _taylor_f(x, order), log=True)


def ref_spherical_softmax(x, eps=0.01):
    """p_i = (z_i^2 + eps) / sum_j (z_j^2 + eps)."""
    z = _fill_excluded(x)
    return _ratio(x, z * z + eps)


def ref_log_spherical_softmax(x, eps=0.01):
    """log p_i = log(z_i^2 + eps) - log sum_j (z_j^2 + eps)."""
    z = _fill_excluded(x)
    return _ratio(x, z * z + eps, log=True)


def ref_sigsoftmax(x):
    """p_i = e^{z_i} sigmoid(z_i) / sum_j e^{z_j} sigmoid(z_j), via g = z + logsigmoid(z)."""
    z = _fill_excluded(x)
    return _softmax_core(x, z + F.logsigmoid(z))


def ref_log_sigsoftmax(x):
    """log p_i = g_i - max g - log sum_j exp(g_j - max g), g = z + logsigmoid(z)."""
    z = _fill_excluded(x)
    return _softmax_core(x, z + F.logsigmoid(z), log=True)


# ---------------------------------------------------------------- sparse maps
def ref_sparsemax(x):
    """Sort algorithm (Martins & Astudillo 2016) on z - max z:
    k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)},
    tau = (sum_{j<=k(z)} z_(j) - 1) / k(z),  p_i = max(z_i - tau, 0)."""
    kept = _kept(x)
    m = torch.where(kept, x, torch.full_like(x, _NEG_INF)).amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    z = torch.where(kept, x - m, torch.full_like(x, _NEG_INF))
    zs, _ = torch.sort(z, dim=-1, descending=True)
    ks = _kept(zs)
    cs = torch.cumsum(torch.where(ks, zs, torch.zeros_like(zs)), dim=-1)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    support = ks & (1 + k * zs > cs)
    kz = (support.long() * torch.arange(1, x.shape[-1] + 1, device=x.device)).amax(
        dim=-1, keepdim=True).clamp(min=1)
    tau = (torch.gather(cs, -1, kz - 1) - 1) / kz.to(x.dtype)
    p = torch.clamp(torch.where(kept, z, torch.zeros_like(z)) - tau, min=0)
    return _finish(x, torch.where(kept.any(dim=-1, keepdim=True), p, torch.zeros_like(p)))


def ref_simplex_bisect(x, alpha, n_iter=200):
    """alpha-entmax by bisection (alpha > 1; float or tensor with last dim 1):
    p_i = [(alpha-1) z_i - tau]_+^{1/(alpha-1)}, tau with sum p = 1 bisected in
    [max((alpha-1) z) - 1, max((alpha-1) z) - (1/d)^(alpha-1)], d = #kept;
    finally p / sum p. z is shifted by its row max first (shift invariant)."""
    kept = _kept(x)
    m = torch.where(kept, x, torch.full_like(x, _NEG_INF)).amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    am1 = alpha - 1
    if isinstance(am1, torch.Tensor):
        am1 = am1.to(x.dtype)
    zz = torch.where(kept, (x - m) * am1, torch.full_like(x, _NEG_INF))
    mx = zz.amax(dim=-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    d = kept.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)
    lo = mx - 1
    hi = mx - (1 / d) ** am1
    for _ in range(n_iter):
        tau = (lo + hi) / 2
        f = (torch.clamp(zz - tau, min=0) ** (1 / am1)).sum(dim=-1, keepdim=True) - 1
        lo = torch.where(f >= 0, tau, lo)
        hi = torch.where(f >= 0, hi, tau)
    p = torch.clamp(zz - (lo + hi) / 2, min=0) ** (1 / am1)
    return _ratio(x, p)


def ref_entmax15(x):
    """Exact 1.5-entmax by sorting (Peters, Niculae & Martins 2019, Alg. 2) on
    u = (z - max z) / 2:  p_i = [u_i - tau]_+^2, sum_i p_i = 1.

    On u sorted descending, with the mean mu_k and mean square ms_k of the k largest,
    tau_k = mu_k - sqrt(1/k - (ms_k - mu_k^2)) solves sum_{j<=k} (u_(j) - tau)^2 = 1;
    the support size is k* = max{k : tau_k <= u_(k)}. The support (all u_i >= u_(k*)) is
    found without gradient; tau is then recomputed from that support as a differentiable
    closed form, tau = mean_S u - sqrt(1/|S| - var_S u), so autograd through it is the exact
    Jacobian of the fixed-support solution (the shift by max z is detached: shift
    invariance makes it Jacobian-neutral)."""
    kept = _kept(x)
    m = torch.where(kept, x, torch.full_like(x, _NEG_INF)).amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    u = torch.where(kept, (x - m) / 2, torch.zeros_like(x))
    with torch.no_grad():
        us, _ = torch.sort(torch.where(kept, u, torch.full_like(u, _NEG_INF)), dim=-1,
                           descending=True)
        ks = _kept(us)
        uz = torch.where(ks, us, torch.zeros_like(us))
        k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
        mu = torch.cumsum(uz, dim=-1) / k
        ms = torch.cumsum(uz * uz, dim=-1) / k
        tau_k = mu - torch.sqrt(torch.clamp(1 / k - (ms - mu * mu), min=0))
        support = ks & (tau_k <= us)
        kz = (support.long() * torch.arange(1, x.shape[-1] + 1, device=x.device)).amax(
            dim=-1, keepdim=True).clamp(min=1)
        smallest = torch.gather(us, -1, kz - 1)
        in_s = kept & (u >= smallest)
    n = in_s.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)
    us_ = torch.where(in_s, u, torch.zeros_like(u))
    mean = us_.sum(dim=-1, keepdim=True) / n
    dev = torch.where(in_s, u - mean, torch.zeros_like(u))
    var = (dev * dev).sum(dim=-1, keepdim=True) / n
    tau = mean - torch.sqrt(1 / n - var)
    p = torch.where(in_s, torch.clamp(u - tau, min=0) ** 2, torch.zeros_like(u))
    return _finish(x, torch.where(kept.any(dim=-1, keepdim=True), p, torch.zeros_like(p)))


def ref_entmax(x, alpha=1.5):
    """alpha-entmax: softmax if alpha == 1, else bisection (alpha may be a tensor)."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(x.dtype)
        if bool((alpha == 1).all()):
            return ref_softmax(x)
        return torch.where(alpha == 1, ref_softmax(x), ref_simplex_bisect(x, alpha))
    if alpha == 1:
        return ref_softmax(x)
    return ref_simplex_bisect(x, alpha)


def ref_sparse_softmax(x, k):
    """Softmax over the k largest entries (torch.topk), 0 elsewhere."""
    k = min(int(k), x.shape[-1])
    vals, idx = torch.topk(x, k, dim=-1)
    out = torch.zeros_like(x).scatter(-1, idx, ref_softmax(vals))
    return _finish(x, out)


# ---------------------------------------------------------------- others
def ref_normalize(x):
    """p_i = z_i / sum_j z_j for z >= 0; a row summing to 0 gives zeros."""
    z = _fill_excluded(x)
    s = z.sum(dim=-1, keepdim=True)
    zero = s == 0
    p = z / torch.where(zero, torch.ones_like(s), s)
    return _finish(x, torch.where(zero, torch.zeros_like(p), p))


def ref_ova_sigmoid(x):
    """p_i = sigmoid(z_i), elementwise, not normalized (sigmoid(-inf) = 0)."""
    return torch.sigmoid(x)


def _activation(x, activation):
    """(a(z), log a(z) or None) on kept entries; see ref_activation_normalize."""
    z = _fill_excluded(x)
    if activation == "softplus":
        return F.softplus(z), None
    if activation == "arctan":
        neg = z < 0
        safe = torch.where(neg, z, -torch.ones_like(z))  # avoid -1/0 in unused branch
        return torch.where(neg, torch.atan(-1 / safe), torch.atan(z) + math.pi / 2), None
    if activation == "gaussian":
        sq = z * z
        mn = torch.where(_kept(x), sq, torch.full_like(sq, float("inf"))).amin(
            dim=-1, keepdim=True)
        mn = torch.where(torch.isfinite(mn), mn, torch.zeros_like(mn))
        la = -(sq - mn)
        return torch.exp(la), la
    if activation == "relu":
        return torch.relu(z) + 1e-6, None
    raise ValueError(f"unknown activation {activation!r}")


def ref_activation_normalize(x, activation="softplus"):
    """p_i = a(z_i) / sum_j a(z_j); a = softplus: log(1+e^z) | arctan: arctan z + pi/2
    (as arctan(-1/z) for z < 0) | gaussian: exp(-z^2) (as exp(-(z^2 - min z^2)))
    | relu: relu(z) + 1e-6."""
    a, _ = _activation(x, activation)
    return _ratio(x, a)


def ref_log_activation_normalize(x, activation="softplus"):
    """log p_i = log a(z_i) - log sum_j a(z_j) (gaussian: log a = -(z^2 - min z^2))."""
    a, la = _activation(x, activation)
    return _ratio(x, a, log=True, log_a=la)


TEST_VECTOR = [-2.0, 0.0, 0.5]
PUBLISHED = {
    "softmax": [0.0486, 0.3592, 0.5922],
    "sparsemax": [0.0, 0.25, 0.75],
    "entmax15": [0.0, 0.3260, 0.6740],
}

REFERENCES = {
    "softmax": ref_softmax,
    "log_softmax": ref_log_softmax,
    "taylor_softmax": ref_taylor_softmax,
    "log_taylor_softmax": ref_log_taylor_softmax,
    "spherical_softmax": ref_spherical_softmax,
    "log_spherical_softmax": ref_log_spherical_softmax,
    "sigsoftmax": ref_sigsoftmax,
    "log_sigsoftmax": ref_log_sigsoftmax,
    "sparsemax": ref_sparsemax,
    "entmax15": ref_entmax15,
    "entmax": ref_entmax,
    "sparse_softmax": ref_sparse_softmax,
    "normalize": ref_normalize,
    "ova_sigmoid": ref_ova_sigmoid,
    "activation_normalize": ref_activation_normalize,
    "log_activation_normalize": ref_log_activation_normalize,
}
