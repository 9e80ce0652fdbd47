"""Independent float64 references of the published loss formulas.

Written from the math (DESIGN.md §1, ../shared/reference/papers.md), never by calling
softmaxlab: plain per-row loops over float64 tensors. They are built from differentiable torch
ops, so ``torch.autograd`` gives the reference gradient too.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64
NEG_INF = float("-inf")


# ------------------------------------------------------------------ layout
def to_rows(logits: torch.Tensor, target: torch.Tensor):
    """torch's layout -> rows ``(M, C)`` (class dimension 1, or the only one) and ``(M,)``."""
    if logits.dim() == 1:
        return logits[None], target.reshape(1)
    c = logits.shape[1]
    return logits.movedim(1, -1).reshape(-1, c), target.reshape(-1)


def batch_shape(logits: torch.Tensor) -> torch.Size:
    return torch.Size() if logits.dim() == 1 else logits.shape[:1] + logits.shape[2:]


def lse(v: torch.Tensor) -> torch.Tensor:
    """log sum exp of a 1-D tensor, written out (max shift)."""
    m = v.max().detach()
    if m == NEG_INF:
        return m
    return m + torch.log(torch.exp(v - m).sum())


# ------------------------------------------------------------------ mappings (log-scores)
def log_scores(name: str, z: torch.Tensor, **p) -> torch.Tensor:
    """log of the positive, unnormalized score a(z_j) of a normalized mapping (1-D)."""
    if name == "softmax":
        return z / p.get("temperature", 1.0)
    if name == "taylor_softmax":
        n = p.get("order", 2)
        f = sum(z**i / math.factorial(i) for i in range(n + 1))
        return torch.log(f)
    if name == "spherical_softmax":
        return torch.log(z * z + p.get("eps", 0.01))
    if name == "sigsoftmax":
        # e^z * sigmoid(z) = e^z / (1 + e^-z)
        return z - torch.log1p(torch.exp(-z))
    if name == "activation_normalize":
        a = p.get("activation", "softplus")
        if a == "softplus":
            return torch.log(torch.log1p(torch.exp(z)))
        if a == "arctan":
            return torch.log(torch.atan(z) + math.pi / 2)
        if a == "gaussian":
            return -(z * z)
        if a == "relu":
            return torch.log(torch.clamp(z, min=0) + 1e-6)
    raise KeyError(name)


def log_probs(name: str, z: torch.Tensor, **p) -> torch.Tensor:
    s = log_scores(name, z, **p)
    return s - lse(s)


# ------------------------------------------------------------------ NLL with torch's conventions
def reduce_rows(losses, wts, kept_any_shape, reduction):
    """``losses``/``wts`` are python lists of 0-dim tensors (0 for ignored rows)."""
    loss = torch.stack(losses)
    if reduction == "none":
        return loss.reshape(kept_any_shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    den = torch.stack(wts).sum()
    return total / den if float(den) != 0 else total * 0


def nll(logp_rows, target, weight, ignore_index, eps, reduction, shape):
    """torch's definition, row by row: (1-e) w_y (-log p_y) + e/C sum_c w_c (-log p_c);
    mean divides by sum of w_y over kept rows; ignored rows count nowhere."""
    m, c = logp_rows.shape
    losses, wts = [], []
    zero = torch.zeros((), dtype=F64)
    for i in range(m):
        y = int(target[i])
        if y == ignore_index:
            losses.append(zero)
            wts.append(zero)
            continue
        wy = weight[y] if weight is not None else torch.ones((), dtype=F64)
        l_i = (1 - eps) * wy * (-logp_rows[i, y])
        if eps > 0:
            wc = weight if weight is not None else torch.ones(c, dtype=F64)
            l_i = l_i + eps / c * (wc * (-logp_rows[i])).sum()
        losses.append(l_i)
        wts.append(wy * torch.ones((), dtype=F64))
    return reduce_rows(losses, wts, shape, reduction)


def cross_entropy(logits, target, *, mapping="softmax", weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, **params):
    rows, t = to_rows(logits, target)
    logp = torch.stack([log_probs(mapping, rows[i], **params) for i in range(rows.shape[0])])
    return nll(logp, t, weight, ignore_index, label_smoothing, reduction, batch_shape(logits))


def weighted_rows(per_row, target, weight, ignore_index, reduction, shape):
    """Per-row losses (list of 0-dim) times the target's class weight; ignored rows -> 0."""
    losses, wts = [], []
    zero = torch.zeros((), dtype=F64)
    for i, l_i in enumerate(per_row):
        y = int(target[i])
        if y == ignore_index:
            losses.append(zero)
            wts.append(zero)
            continue
        wy = weight[y] if weight is not None else torch.ones((), dtype=F64)
        losses.append(wy * l_i)
        wts.append(wy * torch.ones((), dtype=F64))
    return reduce_rows(losses, wts, shape, reduction)


# ------------------------------------------------------------------ simplex projections
def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sort-based Euclidean projection onto the simplex (Martins & Astudillo 2016), 1-D."""
    zs = sorted(z.tolist(), reverse=True)
    cum, k_best, cum_best = 0.0, 0, 0.0
    for k, v in enumerate(zs, start=1):
        cum += v
        if 1 + k * v > cum:
            k_best, cum_best = k, cum
    tau = (cum_best - 1) / k_best
    return torch.clamp(z.detach() - tau, min=0)


def entmax(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-entmax by bisection on tau (1-D): p = [(a-1) z - tau]_+^(1/(a-1)), sum 1.
    alpha == 1 -> softmax; alpha == 2 -> the sort-based sparsemax."""
    z = z.detach()
    if alpha == 1:
        e = torch.exp(z - z.max())
        return e / e.sum()
    if alpha == 2:
        return sparsemax(z)
    x = (alpha - 1) * z
    lo, hi = float(x.max()) - 1.0, float(x.max())  # sum(p(lo)) >= 1 >= sum(p(hi)) = 0
    q = 1.0 / (alpha - 1)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        s = float(torch.clamp(x - mid, min=0).pow(q).sum())
        if s >= 1:
            lo = mid
        else:
            hi = mid
    p = torch.clamp(x - 0.5 * (lo + hi), min=0).pow(q)
    return p / p.sum()


def tsallis(p: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 1:
        return -sum(float(v) * math.log(float(v)) for v in p if v > 0) * torch.ones((), dtype=F64)
    return (1 - (p.clamp(min=0) ** alpha).sum()) / (alpha * (alpha - 1))


def fenchel_young(logits, target, *, alpha, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """<z, p - q> + H(p) - H(q), p = alpha-entmax(z), q the (smoothed) one-hot; times w_y.
    Returns (loss, list of p rows, list of q rows)."""
    rows, t = to_rows(logits, target)
    m, c = rows.shape
    per, ps, qs = [], [], []
    for i in range(m):
        y = int(t[i]) if int(t[i]) != ignore_index else 0
        z = rows[i]
        p = entmax(z, alpha)
        q = torch.zeros(c, dtype=F64)
        q[y] = 1.0
        q = (1 - label_smoothing) * q + label_smoothing / c
        per.append((z * (p - q)).sum() + tsallis(p, alpha) - tsallis(q, alpha))
        ps.append(p)
        qs.append(q)
    return weighted_rows(per, t, weight, ignore_index, reduction, batch_shape(logits)), ps, qs


# ------------------------------------------------------------------ margin losses
def soft_margin(logits, target, *, margin, mapping="softmax", weight=None, ignore_index=-100,
                reduction="mean", label_smoothing=0.0, order=2):
    """SM-softmax / SM-Taylor: the target's score is f(z_y - m), the others f(z_j)."""
    rows, t = to_rows(logits, target)
    m_, c = rows.shape
    logps = []
    for i in range(m_):
        z = rows[i]
        y = int(t[i])
        shift = torch.zeros(c, dtype=F64)
        if y != ignore_index:
            shift[y] = margin
        zz = z - shift
        if mapping == "softmax":
            s = zz
        else:
            s = torch.log(sum(zz**j / math.factorial(j) for j in range(order + 1)))
        logps.append(s - lse(s))
    return nll(torch.stack(logps), t, weight, ignore_index, label_smoothing, reduction,
               batch_shape(logits))


def am_softmax(cos, target, *, scale, margin, real=False, weight=None, ignore_index=-100,
               reduction="mean"):
    rows, t = to_rows(cos, target)
    per = []
    for i in range(rows.shape[0]):
        y = int(t[i]) if int(t[i]) != ignore_index else 0
        terms = [torch.zeros((), dtype=F64)]
        for j in range(rows.shape[1]):
            if j == y:
                continue
            gap = rows[i, j] - rows[i, y] + margin
            if real:
                gap = torch.clamp(gap, min=0)
            terms.append(scale * gap)
        per.append(lse(torch.stack(terms)))  # log(1 + sum_j e^{s gap_j})
    return weighted_rows(per, t, weight, ignore_index, reduction, batch_shape(cos))


def arcface_target_logit(cy: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(theta_y + m) for theta_y = acos(cos_y) <= pi - m, else cos_y - m sin m."""
    theta = torch.acos(cy)
    if float(theta.detach()) <= math.pi - margin:
        return torch.cos(theta + margin)
    return cy - margin * math.sin(margin)


def arcface(cos, target, *, scale, margin, weight=None, ignore_index=-100, reduction="mean"):
    rows, t = to_rows(cos, target)
    per = []
    for i in range(rows.shape[0]):
        y = int(t[i]) if int(t[i]) != ignore_index else 0
        phi = arcface_target_logit(rows[i, y], margin)
        logits = [scale * phi] + [scale * rows[i, j] for j in range(rows.shape[1]) if j != y]
        per.append(lse(torch.stack(logits)) - scale * phi)
    return weighted_rows(per, t, weight, ignore_index, reduction, batch_shape(cos))


def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr(K_a H K_b H) / (n-1)^2 with explicit n x n linear kernels and centring matrix."""
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    ka, kb = a2 @ a2.T, b2 @ b2.T
    h = torch.eye(n, dtype=a.dtype) - torch.ones(n, n, dtype=a.dtype) / n
    return torch.trace(ka @ h @ kb @ h) / (n - 1) ** 2


def sparse_softmax(logits, target, *, k, weight=None, ignore_index=-100, reduction="mean"):
    """logsumexp over top-k(z) U {y}, minus z_y."""
    rows, t = to_rows(logits, target)
    per = []
    for i in range(rows.shape[0]):
        y = int(t[i]) if int(t[i]) != ignore_index else 0
        order = sorted(range(rows.shape[1]), key=lambda j: -float(rows[i, j].detach()))
        s = sorted(set(order[:k]) | {y})
        per.append(lse(rows[i, s]) - rows[i, y])
    return weighted_rows(per, t, weight, ignore_index, reduction, batch_shape(logits))


# ------------------------------------------------------------------ sampled losses
def log_uniform_probs(v: int) -> torch.Tensor:
    return torch.tensor([math.log((c + 2) / (c + 1)) / math.log(v + 1) for c in range(v)],
                        dtype=F64)


def _sampled_rows(hidden, weight, target, bias, q, samples, remove_hits, kind, ignore_index):
    s_count = len(samples)
    per = []
    for i in range(hidden.shape[0]):
        y = int(target[i])
        if y == ignore_index:
            per.append(None)
            continue

        def corrected(c, *, i=i):
            z = (hidden[i] * weight[c]).sum()
            if bias is not None:
                z = z + bias[c]
            return z - math.log(s_count * float(q[c]))

        zy = corrected(y)
        neg = [corrected(int(c)) for c in samples if not (remove_hits and int(c) == y)]
        if kind == "sampled":
            per.append(lse(torch.stack([zy, *neg])) - zy)
        else:  # NCE: -log sigma(z_y) - sum_s log(1 - sigma(z_s))
            l_i = -torch.log(torch.sigmoid(zy))
            for zs in neg:
                l_i = l_i - torch.log(1 - torch.sigmoid(zs))
            per.append(l_i)
    return per


def sampled_loss(kind, hidden, weight, target, *, q, samples, bias=None, remove_hits=True,
                 ignore_index=-100, reduction="mean"):
    per = _sampled_rows(hidden, weight, target, bias, q, samples, remove_hits, kind,
                        ignore_index)
    zero = torch.zeros((), dtype=F64)
    losses = [zero if l_i is None else l_i for l_i in per]
    kept = sum(l_i is not None for l_i in per)
    loss = torch.stack(losses)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / kept if kept else loss.sum() * 0


# ------------------------------------------------------------------ graph TV
def graph_tv(probs, edges, *, weight=1.0, reduction="mean"):
    """lambda * sum_{(i, j, w) in edges} w |p_i - p_j| per row (class dim last)."""
    shape = probs.shape[:-1]
    rows = probs.reshape(-1, probs.shape[-1])
    per = []
    for r in range(rows.shape[0]):
        acc = torch.zeros((), dtype=F64)
        for i, j, w in edges:
            acc = acc + w * (rows[r, i] - rows[r, j]).abs()
        per.append(weight * acc)
    out = torch.stack(per).reshape(shape)
    if reduction == "none":
        return out
    return out.sum() if reduction == "sum" else out.mean()
