r"""Output heads: the last layer of a classifier or language model, hidden state -> classes.

Every head maps features of shape ``(*, in_features)`` to ``(*, n_classes)``:

* :class:`MixtureOfSoftmaxes` (MoS, and MoSS with ``mapping="sigsoftmax"``),
  :class:`DoublySparseSoftmax` (DS-Softmax) and :class:`DecoupledOutput` (D&D) return
  **log-probabilities**, ready for ``torch.nn.functional.nll_loss`` (flatten ``*`` first);
  ``head.probs(x)`` is their ``exp``.
* :class:`CosineClassifier` returns **cosine similarities** in ``[-1, 1]``, the input of the
  margin losses ``softmaxlab.losses.am_softmax_loss`` / ``arcface_loss``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as SF
from .._registry import resolve_log_mapping
from .._validation import check_bool, check_int, check_real

__all__ = ["MixtureOfSoftmaxes", "DoublySparseSoftmax", "DecoupledOutput", "CosineClassifier"]


# --------------------------------------------------------------------------- validation


def _check_features(x: Any, in_features: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a real floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (*, in_features={in_features}), got {tuple(x.shape)}"
        )
    return x


def _linear_init(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``nn.Linear``'s default initialisation."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


def _register_mapping_params(module: nn.Module, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if isinstance(value, nn.Parameter):
            module.register_parameter(key, value)


def _params_repr(params: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in params.items() if not isinstance(v, nn.Parameter))


# --------------------------------------------------------------------------- MoS / MoSS


class MixtureOfSoftmaxes(nn.Module):
    r"""Mixture of softmaxes (MoS): a high-rank output layer (Yang et al. 2018).

    .. math::

        \pi(g) = \mathrm{softmax}(W_\pi g), \qquad
        h_k = \tanh(W_k g + c_k), \qquad
        P(y \mid g) = \sum_{k=1}^{K} \pi_k(g)\, f(h_k W^\top + b)_y

    where :math:`f` is ``mapping`` and the output weight :math:`W` (``n_classes x
    in_features``) and bias :math:`b` are shared by the ``K = n_components`` components.
    ``mapping="softmax"`` is MoS; ``mapping="sigsoftmax"`` is MoSS (Kanai et al. 2018). Any
    normalized mapping of the registry with a log form is accepted (its parameters as
    keyword arguments). :math:`\log P` is computed stably as
    :math:`\mathrm{logsumexp}_k(\log\pi_k + \log f(h_k W^\top + b))`.

    A single softmax gives :math:`\log P = H W^\top` plus a bias and a row shift, of rank at
    most ``in_features + 2`` over any set of contexts (``+ 1`` without bias): the "softmax
    bottleneck". The mixture is not bound by it. ``weight`` is an ``nn.Parameter`` of shape
    ``(n_classes, in_features)``: tie it with ``head.weight = embedding.weight``.

    Cost: ``forward`` builds a ``(*, K, n_classes)`` intermediate (K times a softmax head).

    Args:
        in_features: size ``d`` of the context vector ``g`` (also the latent size).
        n_classes: number of classes ``V``.
        n_components: number of mixture components ``K`` (>= 1; 15 in the paper).
        mapping: the per-component mapping (``"softmax"`` or ``"sigsoftmax"``, ...).
        bias: learn the output bias ``b``.
        **mapping_params: parameters of ``mapping`` (e.g. ``temperature=``).

    Shape:
        ``(*, in_features)`` -> ``(*, n_classes)`` log-probabilities.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> head = MixtureOfSoftmaxes(8, 5, n_components=3)
        >>> logp = head(torch.randn(4, 8))
        >>> logp.shape, torch.allclose(logp.exp().sum(-1), torch.ones(4))
        (torch.Size([4, 5]), True)

    References:
        Yang, Dai, Salakhutdinov, Cohen. Breaking the softmax bottleneck: a high-rank RNN
        language model. ICLR 2018. Kanai et al. Sigsoftmax: reanalysis of the softmax
        bottleneck. NeurIPS 2018.
    """

    def __init__(self, in_features: int, n_classes: int, *, n_components: int = 15,
                 mapping: str = "softmax", bias: bool = True, **mapping_params: Any):
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.n_classes = check_int("n_classes", n_classes)
        self.n_components = check_int("n_components", n_components)
        check_bool("bias", bias)
        self._mapping = resolve_log_mapping(mapping, mapping_params)
        self.mapping = mapping
        self.mapping_params = dict(mapping_params)
        _register_mapping_params(self, mapping_params)
        d, k = self.in_features, self.n_components
        self.prior = nn.Linear(d, k, bias=False)
        self.latent = nn.Linear(d, k * d)
        self.weight = nn.Parameter(torch.empty(self.n_classes, d))
        self.bias = nn.Parameter(torch.empty(self.n_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every weight (``nn.Linear``'s defaults)."""
        self.prior.reset_parameters()
        self.latent.reset_parameters()
        _linear_init(self.weight, self.bias)

    def component_log_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(log pi, log f(h_k W^T + b))`` of shapes ``(*, K)`` and ``(*, K, n_classes)``."""
        _check_features(x, self.in_features)
        log_prior = SF.log_softmax(self.prior(x), -1)
        h = torch.tanh(self.latent(x)).unflatten(-1, (self.n_components, self.in_features))
        logits = F.linear(h, self.weight, self.bias)
        log_fn = self._mapping.log_fn
        assert log_fn is not None  # resolve_log_mapping returns only mappings with a log form
        return log_prior, log_fn(logits, -1, **self.mapping_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_prior, log_comp = self.component_log_probs(x)
        return torch.logsumexp(log_prior.unsqueeze(-1) + log_comp, dim=-2)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: ``forward(x).exp()``."""
        return self(x).exp()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, "
                f"n_components={self.n_components}, mapping={self.mapping!r}, "
                f"bias={self.bias is not None}{_params_repr(self.mapping_params)}")


# --------------------------------------------------------------------------- DS-Softmax


def _group_norms(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``sqrt(mean(w^2))`` per (expert, class) row, with the bias in the group; gradient 0 at
    an all-zero group (a valid subgradient) instead of NaN."""
    sq = weight.square().sum(-1)
    n = weight.shape[-1]
    if bias is not None:
        sq = sq + bias.square()
        n += 1
    ms = sq / max(n, 1)
    pos = ms > 0
    return torch.where(pos, ms.masked_fill(~pos, 1.0).sqrt(), torch.zeros_like(ms))


def _cv_squared(v: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / (mean^2 + 1e-10)`` (population variance)."""
    mean = v.mean()
    return (v - mean).square().mean() / (mean.square() + 1e-10)


class DoublySparseSoftmax(nn.Module):
    r"""Doubly-sparse softmax (DS-Softmax): a sparse mixture of sparse softmax experts.

    Each of ``K = n_experts`` experts owns a softmax weight :math:`W^{(k)}` over **all**
    classes and a bool class mask :math:`m^{(k)}` (buffer ``class_mask``, all ``True``
    at first). A linear gate :math:`G(g) = \mathrm{softmax}(W_g g)` routes each row to one
    expert (top-1, no noise):

    .. math::

        k^* = \arg\max_k G_k(g), \qquad
        \log p(c \mid g) = \mathrm{log\_softmax}_{c \in m^{(k^*)}}
            \big(G_{k^*}(g)\,(W^{(k^*)}_c g + b^{(k^*)}_c)\big),

    and :math:`\log p = -\infty` for classes the chosen expert does not keep. The gate value
    :math:`G_{k^*}` (the probability **before** top-1, not renormalised: as in the authors'
    code) scales the chosen expert's logits, so the gate is trained by the task loss; no
    straight-through estimator is involved. ``forward`` computes only the chosen expert's
    logits for each row (rows are grouped by expert), so training costs one ``V``-wide
    product per row, like a plain softmax.

    Regularizers, added by the user to the loss (``loss = nll + head.regularization()``):

    .. math::

        R = \lambda\, \sum_{k} \sum_{c \in m^{(k)}} \sqrt{\mathrm{mean}_j (W^{(k)}_{cj})^2}
            \;+\; \beta\, \mathrm{CV}^2\Big(\big[\textstyle\sum_{\text{rows}} G_k \,
            [k = k^*]\big]_{k=1}^{K}\Big)

    (group lasso per expert and kept class, the bias joining the group when ``bias=True``;
    load balance = squared coefficient of variation of the expert importance over the last
    ``forward`` batch). :meth:`prune` then drops classes whose group norm falls under a
    threshold from each expert's mask, and :meth:`predict_topk` scores only the chosen
    expert's kept classes. Expected speed-up (:meth:`speedup`):
    :math:`1 / \sum_k (\text{fraction routed to } k)(\text{fraction of classes kept by } k)`.

    Differences from the authors' code: their gate adds the noise of noisy top-k gating
    while training (here routing is deterministic, the same in ``train()`` and ``eval()``);
    their pruned classes get logit 0, here they are excluded (probability exactly 0, so
    ``forward`` and :meth:`predict_topk` agree); "mitosis" training (cloning experts) and
    the expert-level lasso are not built in. After pruning, a row whose target class its
    expert no longer keeps has log-probability ``-inf``: its NLL is infinite (its
    gradients stay finite). An expert left with no class gives its rows all ``-inf``.

    Args:
        in_features: size ``d`` of the context vector.
        n_classes: number of classes ``V``.
        n_experts: number of experts ``K`` (>= 1; 2 in the paper's code).
        lasso_coef: group-lasso coefficient :math:`\lambda` (>= 0; 0.003 in the paper).
        importance_coef: load-balance coefficient :math:`\beta` (>= 0; 30 in the paper).
        bias: learn a per-expert class bias (the authors' experts have none).

    Shape:
        ``(*, in_features)`` -> ``(*, n_classes)`` log-probabilities.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> head = DoublySparseSoftmax(8, 6, n_experts=2)
        >>> x = torch.randn(5, 8)
        >>> logp = head(x)
        >>> logp.shape, torch.allclose(logp.exp().sum(-1), torch.ones(5))
        (torch.Size([5, 6]), True)
        >>> probs, classes = head.predict_topk(x, 2)
        >>> classes.shape
        torch.Size([5, 2])

    References:
        Liao, Chen, Wang, Schwing, Li. Doubly sparse: sparse mixture of sparse experts for
        efficient softmax inference. arXiv:1901.10668 (2019).
    """

    class_mask: torch.Tensor  # a buffer

    def __init__(self, in_features: int, n_classes: int, *, n_experts: int = 2,
                 lasso_coef: float = 0.003, importance_coef: float = 30.0, bias: bool = False):
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.n_classes = check_int("n_classes", n_classes)
        self.n_experts = check_int("n_experts", n_experts)
        self.lasso_coef = check_real("lasso_coef", lasso_coef, low=0.0)
        self.importance_coef = check_real("importance_coef", importance_coef, low=0.0)
        check_bool("bias", bias)
        k, v, d = self.n_experts, self.n_classes, self.in_features
        self.gate = nn.Linear(d, k, bias=False)
        self.weight = nn.Parameter(torch.empty(k, v, d))
        self.bias = nn.Parameter(torch.empty(k, v)) if bias else None
        self.register_buffer("class_mask", torch.ones(k, v, dtype=torch.bool))
        self._importance: torch.Tensor | None = None
        self._routed: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the weights (``nn.Linear``'s defaults per expert); masks untouched."""
        self.gate.reset_parameters()
        for e in range(self.n_experts):
            _linear_init(self.weight[e], None if self.bias is None else self.bias[e])

    # -- routing

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(expert, gate value)`` per row: top-1 of ``softmax(W_g x)``, shapes ``(*)``."""
        _check_features(x, self.in_features)
        gates = SF.softmax(self.gate(x), -1)
        value, expert = gates.max(-1)
        return expert, value

    def _expert_rows(self, expert: torch.Tensor):
        for e in range(self.n_experts):
            rows = (expert == e).nonzero().squeeze(-1)
            if rows.numel():
                yield e, rows

    # -- training path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert, value = self.route(x)
        lead = x.shape[:-1]
        xf, expert, value = x.reshape(-1, self.in_features), expert.reshape(-1), value.reshape(-1)
        if torch.compiler.is_compiling():  # traced (compile, export): every expert, no branch
            z = torch.einsum("nd,ecd->nec", xf, self.weight)
            z = z if self.bias is None else z + self.bias
            idx = expert[:, None, None].expand(-1, 1, self.n_classes)
            z = value[:, None] * z.gather(1, idx).squeeze(1)
            out = SF.log_softmax(z, -1, mask=self.class_mask[expert])
        else:
            out = self._expert_log_probs(xf, expert, value)
        onehot = F.one_hot(expert, self.n_experts).to(value.dtype)
        self._importance = (onehot * value[:, None]).sum(0)
        return out.reshape(*lead, self.n_classes)

    def _expert_log_probs(self, xf, expert, value):
        """Log-probabilities with each row's logits computed by its expert only."""
        order, parts = [], []
        for e, rows in self._expert_rows(expert):
            b = None if self.bias is None else self.bias[e]
            z = value[rows, None] * F.linear(xf[rows], self.weight[e], b)
            parts.append(SF.log_softmax(z, -1, mask=self.class_mask[e]))
            order.append(rows)
        if parts:
            return torch.cat(parts)[torch.argsort(torch.cat(order))]
        return xf.new_zeros(0, self.n_classes)  # an empty batch

    def __getstate__(self):
        # the last batch's importance is part of its graph, not of the module's state
        return {**self.__dict__, "_importance": None}

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: ``forward(x).exp()`` (0 outside the chosen expert's classes)."""
        return self(x).exp()

    def group_norms(self) -> torch.Tensor:
        """``sqrt(mean_j W_kcj^2)`` per expert and class, shape ``(n_experts, n_classes)``."""
        return _group_norms(self.weight, self.bias)

    def group_lasso(self) -> torch.Tensor:
        """Sum of :meth:`group_norms` over the kept (expert, class) pairs (unweighted)."""
        return self.group_norms().masked_fill(~self.class_mask, 0.0).sum()

    def load_balance(self) -> torch.Tensor:
        """Squared coefficient of variation of the expert importance of the last ``forward``
        batch (importance of ``k`` = sum over the rows routed to ``k`` of their gate value)."""
        if self._importance is None:
            raise RuntimeError(
                "load_balance() needs the gate values of a batch: call forward first")
        return _cv_squared(self._importance)

    def regularization(self) -> torch.Tensor:
        """``lasso_coef * group_lasso() + importance_coef * load_balance()``.

        The load-balance term uses the last ``forward`` batch: add it to that batch's loss
        before ``backward``.
        """
        return self.lasso_coef * self.group_lasso() + self.importance_coef * self.load_balance()

    @torch.no_grad()
    def prune(self, threshold: float = 0.03) -> int:
        """Drop each expert's classes whose group norm is below ``threshold``.

        A class that would be left with no expert stays in the expert (among those keeping
        it) where its group norm is largest. Pruned weights are set to zero (as in the
        authors' code). Returns the number of (expert, class) pairs pruned.
        """
        threshold = check_real("threshold", threshold, low=0.0)
        norms = self.group_norms()
        before = self.class_mask.clone()
        after = before & (norms >= threshold)
        orphan = before.any(0) & ~after.any(0)
        if orphan.any():
            best = norms.masked_fill(~before, -math.inf).argmax(0)
            cols = orphan.nonzero().squeeze(-1)
            after[best[cols], cols] = True
        pruned = before & ~after
        self.class_mask.copy_(after)
        self.weight.masked_fill_(pruned[..., None], 0.0)
        if self.bias is not None:
            self.bias.masked_fill_(pruned, 0.0)
        return int(pruned.sum())

    # -- inference path

    @torch.no_grad()
    def predict_topk(self, x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The fast inference path: top-``k`` classes scoring only the chosen expert's kept
        classes (their weight rows are gathered; no ``n_classes``-wide product).

        Probabilities are normalised over the chosen expert's kept classes, and equal the
        top-``k`` of :meth:`probs`. Where an expert keeps fewer than ``k`` classes, the
        missing slots have probability 0 and index -1. Routing counts are recorded for
        :meth:`speedup`. No gradients.

        Returns:
            ``(probs, classes)``, each of shape ``(*, k)``, sorted by decreasing probability.
        """
        k = check_int("k", k)
        if k > self.n_classes:
            raise ValueError(f"k must be <= n_classes={self.n_classes}, got {k}")
        expert, value = self.route(x)
        lead = x.shape[:-1]
        xf, expert, value = x.reshape(-1, self.in_features), expert.reshape(-1), value.reshape(-1)
        n = xf.shape[0]
        top_p = xf.new_zeros(n, k)
        top_i = torch.full((n, k), -1, dtype=torch.long, device=x.device)
        for e, rows in self._expert_rows(expert):
            kept = self.class_mask[e].nonzero().squeeze(-1)
            w = self.weight[e].index_select(0, kept)
            b = None if self.bias is None else self.bias[e].index_select(0, kept)
            z = value[rows, None] * F.linear(xf.index_select(0, rows), w, b)
            p = SF.softmax(z, -1)
            kk = min(k, kept.numel())
            vals, idx = p.topk(kk, -1)
            top_p[rows, :kk] = vals
            top_i[rows, :kk] = kept[idx]
        self._routed = torch.bincount(expert, minlength=self.n_experts)
        return top_p.reshape(*lead, k), top_i.reshape(*lead, k)

    @torch.no_grad()
    def speedup(self, x: torch.Tensor | None = None) -> float:
        r"""Expected inference speed-up over a full softmax:
        :math:`1 / \sum_k r_k q_k`, with :math:`r_k` the fraction of rows routed to expert
        ``k`` and :math:`q_k` the fraction of classes it keeps.

        Uses the routing of ``x`` when given, else that of the last :meth:`predict_topk`.
        The gate's own ``O(K d)`` cost per row is not counted.
        """
        if x is not None:
            expert, _ = self.route(x)
            counts = torch.bincount(expert.reshape(-1), minlength=self.n_experts)
        elif self._routed is None:
            raise RuntimeError(
                "speedup() needs routing statistics: pass x or call predict_topk first")
        else:
            counts = self._routed
        total = int(counts.sum())
        if total == 0:
            raise ValueError("speedup() needs at least one row, got an empty batch")
        routed = counts.double() / total
        kept = self.class_mask.double().mean(-1).to(routed.device)
        return float(1.0 / (routed * kept).sum())

    def extra_repr(self) -> str:
        kept = int(self.class_mask.sum())
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, "
                f"n_experts={self.n_experts}, lasso_coef={self.lasso_coef}, "
                f"importance_coef={self.importance_coef}, bias={self.bias is not None}, "
                f"kept={kept}/{self.n_experts * self.n_classes}")


# --------------------------------------------------------------------------- D&D


class DecoupledOutput(nn.Module):
    r"""Dropout-and-decouple (D&D) output layer (Lin et al. 2021).

    .. math:: \log p(y \mid h) = \log f\big(\mathrm{dropout}(h)\, W^\top + b\big)_y

    with :math:`f` = ``mapping`` (softmax by default). Two changes to the usual softmax
    head: dropout on the **input** of the final linear layer, and an output embedding
    :math:`W` (``n_classes x in_features``) that the head **owns**: it is never tied to an
    input (item) embedding, which "decouples" the two roles. To move a model that tied
    them, start from a copy with :meth:`untied_from`
    (``DecoupledOutput.untied_from(model.item_embedding.weight)``) instead of assigning
    the shared parameter.
    Same cost as a softmax head. ``dropout`` acts only in ``train()`` mode.

    Args:
        in_features: size of the hidden vector.
        n_classes: number of classes / items.
        dropout: drop probability on the input, in ``[0, 1)`` (0.5 by default).
        bias: learn the output bias.
        mapping: a normalized registry mapping with a log form (``"softmax"``).
        **mapping_params: parameters of ``mapping``.

    Shape:
        ``(*, in_features)`` -> ``(*, n_classes)`` log-probabilities.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> head = DecoupledOutput(8, 5).eval()
        >>> logp = head(torch.randn(3, 8))
        >>> logp.shape, torch.allclose(logp.exp().sum(-1), torch.ones(3))
        (torch.Size([3, 5]), True)

    References:
        Lin, Wang, Zhang, et al. Dropout and decouple: simple and effective output layers
        for sequential recommendation. arXiv:2110.05409 (2021).
    """

    def __init__(self, in_features: int, n_classes: int, *, dropout: float = 0.5,
                 bias: bool = True, mapping: str = "softmax", **mapping_params: Any):
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.n_classes = check_int("n_classes", n_classes)
        self.dropout = check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        check_bool("bias", bias)
        self._mapping = resolve_log_mapping(mapping, mapping_params)
        self.mapping = mapping
        self.mapping_params = dict(mapping_params)
        _register_mapping_params(self, mapping_params)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.n_classes)) if bias else None
        self.reset_parameters()

    @classmethod
    def untied_from(cls, weight: torch.Tensor, *, bias: torch.Tensor | bool = True,
                    **kwargs: Any) -> DecoupledOutput:
        """A head whose output weight starts as a **copy** of ``weight`` (e.g. a formerly
        tied input embedding, shape ``(n_classes, in_features)``): training one afterwards
        leaves the other untouched.

        ``bias``: a tensor of shape ``(n_classes,)`` to copy, ``True`` for a fresh bias,
        ``False`` for none. Other keyword arguments as in the constructor.
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = (tuple(weight.shape) if isinstance(weight, torch.Tensor)
                   else type(weight).__name__)
            raise ValueError(f"weight must be a 2-d tensor (n_classes, in_features), got {got}")
        n_classes, in_features = weight.shape
        if isinstance(bias, torch.Tensor) and tuple(bias.shape) != (n_classes,):
            raise ValueError(f"bias must have shape ({n_classes},), got {tuple(bias.shape)}")
        head = cls(in_features, n_classes, bias=isinstance(bias, torch.Tensor) or bias, **kwargs)
        head.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            head.weight.copy_(weight)
            if isinstance(bias, torch.Tensor):
                assert head.bias is not None
                head.bias.copy_(bias)
        return head

    def reset_parameters(self) -> None:
        """Re-initialise the output weight and bias (``nn.Linear``'s defaults)."""
        _linear_init(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features(x, self.in_features)
        h = F.dropout(x, self.dropout, self.training)
        log_fn = self._mapping.log_fn
        assert log_fn is not None  # resolve_log_mapping returns only mappings with a log form
        return log_fn(F.linear(h, self.weight, self.bias), -1, **self.mapping_params)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: ``forward(x).exp()``."""
        return self(x).exp()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, "
                f"dropout={self.dropout}, bias={self.bias is not None}, "
                f"mapping={self.mapping!r}{_params_repr(self.mapping_params)}")


# --------------------------------------------------------------------------- cosine


class CosineClassifier(nn.Module):
    r"""Cosine similarities between the features and learned class directions.

    .. math::

        \cos\theta_c = \frac{x}{\max(\lVert x\rVert, \epsilon)} \cdot
                       \frac{w_c}{\max(\lVert w_c\rVert, \epsilon)}

    clamped to ``[-1, 1]``. The output is **not** a log-probability: feed it to the margin
    losses ``softmaxlab.losses.am_softmax_loss(cosine, target)`` (AM-softmax / CosFace) or
    ``arcface_loss``, which scale it and add the margin. Invariant to positive scaling of
    ``x``; a zero feature vector gives cosines 0 and finite (zero) gradients.

    Args:
        in_features: size of the feature vector.
        n_classes: number of classes.
        eps: floor on the norms (> 0).

    Shape:
        ``(*, in_features)`` -> ``(*, n_classes)`` cosines in ``[-1, 1]``.

    Example:
        >>> head = CosineClassifier(2, 2)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
        ...     head(torch.tensor([[3.0, 3.0], [0.0, 0.0]]))
        tensor([[ 0.7071, -0.7071],
                [ 0.0000,  0.0000]])
    """

    def __init__(self, in_features: int, n_classes: int, *, eps: float = 1e-8):
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.n_classes = check_int("n_classes", n_classes)
        self.eps = check_real("eps", eps, low=0.0, low_open=True)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the class directions (``nn.Linear``'s default)."""
        _linear_init(self.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features(x, self.in_features)
        xn = F.normalize(x, dim=-1, eps=self.eps)
        wn = F.normalize(self.weight, dim=-1, eps=self.eps)
        return F.linear(xn, wn).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}, eps={self.eps}"
