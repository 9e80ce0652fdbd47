"""The implementations a case compares: the candidate (the public softmaxlab function),
torch, the naive formula in unfused torch ops, and peer packages (entmax, Liger,
cut-cross-entropy; imported only when a case runs, "not installed" when missing)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .._registry import get_mapping, mappings
from .records import Case, Impl, ImplUnavailable
from .timing import CallStep, Inputs, Step


def naive_softmax(x: torch.Tensor) -> torch.Tensor:
    """The registry's naive softmax (three unfused passes)."""
    return get_mapping("softmax").naive(x)


def naive_linear_ce(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.T).float()
    return -naive_softmax(logits).log().gather(-1, t[:, None]).mean()


# ------------------------------------------------------------------------ implementations
def _registry_fn(op: str):
    """The public function called ``op`` (a mapping or its log form) from the registry,
    its mapping record and the mapping's default parameters."""
    for m in mappings():
        for f in (m.fn, m.log_fn):
            if f is not None and f.__name__ == op:
                return f, m, m.defaults
    raise ValueError(f"{op!r} is not a registered mapping function")


def candidate(op: str) -> Impl:
    """The public softmaxlab function ``op`` along the last dim, default parameters."""

    def load():
        fn, _, params = _registry_fn(op)
        return functools.partial(fn, dim=-1, **params)  # its own code object for torch.compile

    return Impl("softmaxlab", load, role="candidate")


def naive(op: str) -> Impl:
    def load():
        fn, m, params = _registry_fn(op)
        if m.naive is None:
            raise ImplUnavailable(f"{m.name} has no naive formula in the registry")
        if fn is m.log_fn:
            return lambda x: m.naive(x, **params).log()
        return lambda x: m.naive(x, **params)

    return Impl("naive", load, note="the registry's formula in unfused torch ops")


TORCH_SOFTMAX = Impl("torch.softmax", lambda: lambda x: torch.softmax(x, -1))
TORCH_LOG_SOFTMAX = Impl("torch.log_softmax", lambda: lambda x: torch.log_softmax(x, -1))


def entmax_impl(name: str) -> Impl:
    def load():
        import entmax

        f = getattr(entmax, name)
        return lambda x: f(x, dim=-1)

    return Impl("entmax", load, package="entmax", dist="entmax",
                note=f"entmax.{name} (sort-based)")


def topk_impls(k: int) -> tuple[Impl, ...]:
    def load_candidate():
        import softmaxlab as sl

        return lambda x: sl.softmax_topk(x, k)

    return (Impl("softmaxlab", load_candidate, role="candidate"),
            Impl("torch.softmax.topk", lambda: lambda x: torch.softmax(x, -1).topk(k, -1)),
            Impl("naive", lambda: lambda x: naive_softmax(x).topk(k, -1),
                 note="naive softmax, then topk"))


def cross_entropy_impls() -> tuple[Impl, ...]:
    """``softmaxlab.losses.cross_entropy(x, t)`` and ``F.cross_entropy(x, t)``."""

    def load_candidate():
        import softmaxlab as sl

        return sl.losses.cross_entropy

    return (Impl("softmaxlab", load_candidate, role="candidate"),
            Impl("F.cross_entropy", lambda: F.cross_entropy))


def linear_candidate():
    import softmaxlab as sl

    return lambda h, w, t: sl.losses.linear_cross_entropy(h, w, t)


def _gemm_bound(case: Case, inputs: Inputs, mode: str) -> Step:
    """The 3 matrix products of linear cross-entropy alone: h @ W.T (forward), g @ W and
    g.T @ h (backward), with g an N x V gradient made untimed once."""
    h, w, _ = inputs.detached()
    state: dict[str, torch.Tensor] = {}

    def before():
        if mode != "forward" and "g" not in state:
            state["g"] = torch.randn(h.shape[0], w.shape[0], generator=case.generator(),
                                     dtype=h.dtype, device=h.device)

    if mode == "forward":
        return CallStep(lambda: h @ w.T)
    if mode == "backward":
        return CallStep(lambda: (state["g"] @ w, state["g"].T @ h), before)
    return CallStep(lambda: (h @ w.T, state["g"] @ w, state["g"].T @ h), before)


def liger_flce(**kw):
    def load():
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:  # older releases: the module only
            from liger_kernel.transformers.fused_linear_cross_entropy import (
                LigerFusedLinearCrossEntropyLoss,
            )

            loss = LigerFusedLinearCrossEntropyLoss(**kw)
            return lambda h, w, t: loss(w, h, t)
        return lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, **kw)

    return load


def _cce(exact: bool):
    def load():
        from cut_cross_entropy import linear_cross_entropy

        if exact:
            return lambda h, w, t: linear_cross_entropy(h, w, t, filter_eps=None)
        return lambda h, w, t: linear_cross_entropy(h, w, t)

    return load


def liger_softmax():
    from liger_kernel.transformers.softmax import LigerSoftmax

    m = LigerSoftmax()
    return lambda x: m(x)


def liger_sparsemax():
    from liger_kernel.transformers.functional import liger_sparsemax

    return lambda x: liger_sparsemax(x, -1)


def attention_impls(mapping: str) -> tuple[Impl, ...]:
    """``softmaxlab.attention.scaled_dot_product_attention(q, k, v, mapping=mapping)``
    against ``F.scaled_dot_product_attention`` and the naive path that materializes the
    ``(L, S)`` scores and calls the mapping on them (softmaxlab's own row function; the
    ``entmax`` package's too for its two mappings)."""

    def load_candidate():
        from ..attention import scaled_dot_product_attention

        return lambda q, k, v: scaled_dot_product_attention(q, k, v, mapping=mapping)

    def materialized(fn):
        def attend(q, k, v):
            s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            return fn(s) @ v

        return attend

    def load_naive():
        f = get_mapping(mapping).fn
        return materialized(lambda s: f(s, -1))

    impls = [Impl("softmaxlab", load_candidate, role="candidate"),
             Impl("F.scaled_dot_product_attention",
                  lambda: F.scaled_dot_product_attention, note="torch's SDPA (softmax)"),
             Impl("naive", load_naive,
                  note=f"scores materialized, softmaxlab.{mapping}, then @ v")]
    if mapping in ("sparsemax", "entmax15"):
        def load_entmax():
            import entmax

            f = getattr(entmax, mapping)
            return materialized(lambda s: f(s, dim=-1))

        impls.append(Impl("entmax", load_entmax, package="entmax", dist="entmax",
                          note=f"scores materialized, entmax.{mapping}, then @ v"))
    return tuple(impls)


LOGITS_CROSS_ENTROPY = Impl("F.cross_entropy", lambda: lambda h, w, t: F.cross_entropy(h @ w.T, t),
                            note="F.cross_entropy(h @ W.T, t): the full N x V logits")


def _torch_linear_ce(**options):
    """torch's own ``F.linear_cross_entropy`` (PyTorch >= 2.13): the reference path
    without ``options``, the chunked one with ``nn.LinearCrossEntropyOptions(**options)``."""

    def load():
        if not hasattr(F, "linear_cross_entropy"):
            raise ImplUnavailable(f"torch {torch.__version__} has no "
                                  "F.linear_cross_entropy (PyTorch >= 2.13)")
        if not options:
            return F.linear_cross_entropy
        opts = torch.nn.LinearCrossEntropyOptions(**options)
        return lambda h, w, t: F.linear_cross_entropy(h, w, t, options=opts)

    return load


#: Rows per chunk of the fixed-chunk torch baseline.
TORCH_LINEAR_CE_CHUNK = 256


def torch_linear_impls() -> tuple[Impl, ...]:
    """``F.linear_cross_entropy`` of torch >= 2.13: the reference path (full logits), the
    chunked path with the default ``LinearCrossEntropyOptions()`` (the chunk size from its
    'auto' aspect-ratio rule) and with a fixed chunk of :data:`TORCH_LINEAR_CE_CHUNK` rows."""
    n = TORCH_LINEAR_CE_CHUNK
    return (
        Impl("F.linear_cross_entropy", _torch_linear_ce(),
             note="torch's F.linear_cross_entropy, options=None: the reference path"),
        Impl("F.linear_cross_entropy chunked", _torch_linear_ce(chunking_method="auto"),
             note="options=nn.LinearCrossEntropyOptions(): the default chunked path"),
        Impl(f"F.linear_cross_entropy chunk={n}",
             _torch_linear_ce(chunking_method=None, batch_chunk_size=n),
             note=f"options=nn.LinearCrossEntropyOptions(batch_chunk_size={n}, "
                  "chunking_method=None)"),
    )


def linear_impls(gpu: bool = False) -> tuple[Impl, ...]:
    impls = [
        Impl("softmaxlab", linear_candidate, role="candidate"),
        LOGITS_CROSS_ENTROPY,
        Impl("naive", lambda: naive_linear_ce, note="float32 logits, naive log_softmax, gather"),
        Impl("3 GEMMs", lambda: _gemm_bound, manual=True,
             note="bound: h @ W.T, g @ W, g.T @ h alone"),
        *torch_linear_impls(),
    ]
    if gpu:
        impls += [Impl("liger", liger_flce(), package="liger_kernel", dist="liger-kernel",
                       note="LigerFusedLinearCrossEntropyLoss"),
                  Impl("cce", _cce(False), package="cut_cross_entropy",
                       dist="cut-cross-entropy",
                       note="cut_cross_entropy.linear_cross_entropy (default: gradient filtering)"),
                  Impl("cce exact", _cce(True), package="cut_cross_entropy",
                       dist="cut-cross-entropy", note="filter_eps=None: exact gradients")]
    return tuple(impls)


def _patched_step(patch: dict):
    def load():
        from ..patch import patched

        def step(model, ids):
            if not patch:
                return model(ids, labels=ids).loss
            with patched(model, **patch):
                return model(ids, labels=ids).loss

        return step

    return load


def patch_impls(**patch) -> tuple[Impl, ...]:
    """A causal LM's training loss ``fn(model, ids)`` (labels = ids) with
    ``softmaxlab.patch(model, **patch)`` in force for the call (patch and unpatch run inside
    the timed region: a few attribute writes, microseconds), against the unpatched model."""
    what = ", ".join(f"{k}={v!r}" for k, v in patch.items())
    return (Impl("softmaxlab", _patched_step(patch), role="candidate", package="transformers",
                 dist="transformers", note=f"softmaxlab.patch(model, {what})"),
            Impl("unpatched", _patched_step({}), package="transformers", dist="transformers",
                 note="the model's own forward and loss: (B L, V) logits, transformers' "
                      "ForCausalLMLoss, torch SDPA attention"))
