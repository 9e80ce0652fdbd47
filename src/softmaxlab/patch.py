r"""One call puts any mapping into a real model, one call takes it out again.

``patch(model, output=..., loss=..., attention=..., **params)`` finds the model's output
head by structure (a Hugging Face model's output embeddings or classifier; otherwise the
last ``nn.Linear``), never by a list of per-family forwards, and changes only behaviour:

* ``output="sparsemax"``: ``model.probs(*inputs)`` and ``model.predict(*inputs)`` give the
  mapping's probabilities of the model's logits and their argmax;
* ``loss="entmax15"`` (a mapping: its natural loss, ``cross_entropy`` for one with a log
  form, else ``fenchel_young_loss``) or a loss of :mod:`softmaxlab.losses` by name
  (``loss="sparse_softmax_loss", k=10``): what a Hugging Face model returns as ``loss``
  when given ``labels`` (causal LMs shift them as transformers does, and with a log-form
  mapping use the fused :func:`~softmaxlab.losses.linear_cross_entropy`: no ``(N, V)``
  logits; ``return_logits=True`` keeps them); for any other model, ``model.loss(*inputs,
  target=...)``;
* ``attention="entmax15"``: a Hugging Face model's attention through
  :func:`softmaxlab.attention.scaled_dot_product_attention` (``attn_implementation=
  "softmaxlab"``).

``params`` go to the mapping (``temperature=``, ``alpha=``, ``k=``). Parameters, buffers
and the state dict are never touched; :func:`unpatch` restores the model exactly.

Example:
    >>> import torch, softmaxlab as sl
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> _ = sl.patch(net, output="sparsemax", loss="sparsemax")
    >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    >>> bool(net.probs(x).sum(-1).allclose(torch.ones(5))), net.loss(x, target=y).dim()
    (True, 0)
    >>> _ = sl.unpatch(net); hasattr(net, "probs")
    False
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import losses as L
from ._registry import get_mapping

__all__ = ["patch", "patched", "unpatch"]

_STATE = "_softmaxlab_patch"
#: losses of :mod:`softmaxlab.losses` that take ``(logits, target)``
LOSS_NAMES = ("cross_entropy", "fenchel_young_loss", "sparse_softmax_loss", "soft_margin_loss")
#: config attributes that scale or squash a causal LM's logits after its head: the fused
#: loss (which never builds the logits) cannot reproduce them
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale")


@dataclass
class _Patch:
    """What a patch changed, to undo it."""

    attrs: list[str] = field(default_factory=list)  # instance attributes it added
    forward: Callable | None = None  # the forward it wrapped (an instance attribute or None)
    had_forward: bool = False
    loss_function: Any = None  # the instance's own loss_function before, if it had one
    patched_loss_function: bool = False
    had_loss_function: bool = False
    attention: tuple[Any, dict] | None = None  # (implementation, config attrs) before


# ----------------------------------------------------------------------------- losses
def _natural_loss(name: str, params: dict) -> Callable[..., torch.Tensor]:
    """``loss(logits, target, **options)`` of ``name``: a mapping (its natural loss) or a
    loss of :mod:`softmaxlab.losses`."""
    if name in LOSS_NAMES:
        return functools.partial(getattr(L, name), **params)
    try:
        return L.natural_loss(name, **params)
    except ValueError as e:
        raise ValueError(f"loss={name!r}: {e}; or give a loss of softmaxlab.losses by name: "
                         f"{', '.join(LOSS_NAMES)}") from None


def _fused(name: str, params: dict) -> dict | None:
    """``linear_cross_entropy``'s mapping arguments when ``name`` is a mapping with a log
    form (the fused vocabulary loss applies), else ``None``."""
    try:
        m = get_mapping(name)
    except ValueError:
        return None
    if m.loss != "cross_entropy" or m.log_fn is None:
        return None
    return {"mapping": name, **params}


# ----------------------------------------------------------------------- the model kind
def _hf_kind(model: nn.Module) -> str | None:
    """``"causal_lm"``, ``"sequence_classification"``, ``"other"`` for a Hugging Face model,
    ``None`` for anything else."""
    try:
        from transformers import PreTrainedModel
        from transformers.models.auto import modeling_auto as auto
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    name = type(model).__name__
    if name in set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return "causal_lm"
    if name in set(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()):
        return "sequence_classification"
    return "other"


def _logits(out: Any) -> torch.Tensor:
    """The logits in a forward's result: the tensor, ``.logits``, or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]  # e.g. torchvision's GoogLeNetOutputs / InceptionOutputs
    raise ValueError(f"cannot find logits in the model's output ({type(out).__name__})")


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"cannot patch {type(model).__name__}: no output head found (an "
                         "nn.Linear, or a Hugging Face model's output embeddings)")
    return last


# ------------------------------------------------------------------------------ patch
def patch(model: nn.Module, *, output: str | None = None, loss: str | None = None,
          attention: str | None = None, return_logits: bool = False,
          **params: Any) -> nn.Module:
    """Patch ``model`` in place (see the module docstring) and return it.

    Args:
        model: a Hugging Face ``PreTrainedModel`` or any ``nn.Module`` classifier.
        output: the mapping behind ``model.probs`` / ``model.predict``.
        loss: a mapping (its natural loss) or a loss name of :mod:`softmaxlab.losses`.
        attention: a normalized mapping for a Hugging Face model's attention.
        return_logits: with the fused vocabulary loss, still return the logits.
        **params: the mapping's (or loss's) parameters.

    Raises:
        ValueError: naming what could not be patched (an unknown mapping, a model that is
            already patched, a head that cannot be found, logits the fused loss cannot
            reproduce). Nothing is changed then.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, _STATE, None) is not None:
        raise ValueError(f"{type(model).__name__} is already patched; unpatch it first")
    if output is None and loss is None and attention is None:
        raise ValueError("give at least one of output=, loss=, attention=")
    kind = _hf_kind(model)
    if attention is not None and kind is None:
        raise ValueError(f"attention=: {type(model).__name__} is not a Hugging Face model "
                         "(use softmaxlab.nn.MultiheadAttention or "
                         "softmaxlab.attention.scaled_dot_product_attention in its code)")
    out_fn = _output_fn(output, params) if output is not None else None
    loss_fn = _natural_loss(loss, params) if loss is not None else None
    fused = _fused(loss, params) if loss is not None and kind == "causal_lm" else None
    if fused is not None:
        bad = [a for a in _LOGIT_TRANSFORMS if getattr(model.config, a, None) not in (None, 1, 1.0)]
        if bad:
            raise ValueError(f"loss={loss!r}: {type(model).__name__} transforms its logits "
                             f"after the head ({', '.join(bad)}); the fused loss cannot")
    if kind is None and loss is not None:
        _last_linear(model)  # a classifier head must exist
    state = _Patch()
    if attention is not None:
        state.attention = _patch_attention(model, attention, params)
    if out_fn is not None:
        _add(model, state, "probs", functools.partial(_probs, model, out_fn))
        _add(model, state, "predict", functools.partial(_predict, model, out_fn))
    if loss_fn is not None:
        if kind == "causal_lm":
            _patch_causal_lm(model, state, loss_fn, fused, return_logits)
        elif kind == "sequence_classification":
            _wrap_forward(model, state, functools.partial(_classification_forward, loss_fn))
        else:
            _add(model, state, "loss", functools.partial(_module_loss, model, loss_fn))
    setattr(model, _STATE, state)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the model behaves exactly as before it (``ValueError`` when it
    is not patched)."""
    state = getattr(model, _STATE, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} is not patched")
    for name in state.attrs:
        delattr(model, name)
    if state.forward is not None:
        if state.had_forward:
            model.forward = state.forward
        else:
            del model.forward
    if state.patched_loss_function:
        if state.had_loss_function:
            model.loss_function = state.loss_function
        elif "_loss_function" in vars(model):
            del model._loss_function
    if state.attention is not None:
        impl, attrs = state.attention
        for name, value in attrs.items():
            if value is _MISSING:
                if hasattr(model.config, name):
                    delattr(model.config, name)
            else:
                setattr(model.config, name, value)
        model.set_attn_implementation(impl)  # type: ignore[operator]
    delattr(model, _STATE)
    return model


@contextlib.contextmanager
def patched(model: nn.Module, **kwargs: Any) -> Iterator[nn.Module]:
    """``with patched(model, loss="sparsemax"): ...``: :func:`patch`, then :func:`unpatch`
    on leaving the block."""
    patch(model, **kwargs)
    try:
        yield model
    finally:
        unpatch(model)


_MISSING = object()


def _add(model: nn.Module, state: _Patch, name: str, value: Any) -> None:
    if name in vars(model) or hasattr(type(model), name):
        raise ValueError(f"cannot add {name!r} to {type(model).__name__}: it already has one")
    object.__setattr__(model, name, value)
    state.attrs.append(name)


def _wrap_forward(model: nn.Module, state: _Patch, new: Callable) -> None:
    state.had_forward = "forward" in vars(model)
    state.forward = model.forward
    original = model.forward
    model.forward = functools.wraps(original)(functools.partial(new, model, original))


def _output_fn(name: str, params: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    m = get_mapping(name)
    keys = {p.name for p in m.params}
    own = {k: v for k, v in params.items() if k in keys}
    for p in m.params:
        if p.name in own:
            p.validate(own[p.name])
    return functools.partial(m.fn, dim=-1, **own)


def _probs(model, mapping, *args, **kwargs) -> torch.Tensor:
    return mapping(_logits(model(*args, **kwargs)))


def _predict(model, mapping, *args, **kwargs) -> torch.Tensor:
    return _probs(model, mapping, *args, **kwargs).argmax(-1)


def _module_loss(model, loss_fn, *args, target: torch.Tensor, **kwargs) -> torch.Tensor:
    return loss_fn(_logits(model(*args, **kwargs)), target)


# ------------------------------------------------------------------ Hugging Face models
def _patch_attention(model, name: str, params: dict) -> tuple[Any, dict]:
    from .integrations import transformers as hf  # registers "softmaxlab"

    m = get_mapping(name)
    if not m.normalized:
        raise ValueError(f"attention={name!r}: attention needs a normalized mapping")
    keys = {p.name for p in m.params}
    before = {a: getattr(model.config, a, _MISSING)
              for a in ("softmaxlab_mapping", "softmaxlab_params")}
    impl = model.config._attn_implementation
    model.config.softmaxlab_mapping = name
    model.config.softmaxlab_params = {k: v for k, v in params.items() if k in keys}
    model.set_attn_implementation(hf.NAME)
    return impl, before


def _causal_lm_loss(loss_fn):
    """transformers' causal-LM loss signature (labels shifted by one; ``num_items_in_batch``
    makes it a sum over that many tokens) computed by ``loss_fn``."""

    def loss(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=-100,
             shift_labels=None, **kwargs):
        if shift_labels is None:
            labels = nn.functional.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        z = logits.reshape(-1, logits.shape[-1])  # half types: the losses compute in float32
        t = shift_labels.reshape(-1).to(z.device)
        if num_items_in_batch is None:
            return loss_fn(z, t, ignore_index=ignore_index)
        return loss_fn(z, t, ignore_index=ignore_index, reduction="sum") / num_items_in_batch

    return loss


def _patch_causal_lm(model, state: _Patch, loss_fn, fused: dict | None,
                     return_logits: bool) -> None:
    state.patched_loss_function = True
    state.had_loss_function = "_loss_function" in vars(model)
    state.loss_function = vars(model).get("_loss_function")
    model.loss_function = _causal_lm_loss(loss_fn)
    if fused is not None:
        _wrap_forward(model, state, functools.partial(_fused_forward, fused, return_logits))


def _fused_forward(fused: dict, return_logits: bool, model, original, *args,
                   labels: torch.Tensor | None = None, logits_to_keep: Any = 0,
                   return_dict: bool | None = None, **kwargs):
    """The causal LM's forward with the fused loss: its base model's hidden states, then
    :func:`~softmaxlab.losses.linear_cross_entropy` against the head's weight (no logits);
    without ``labels`` the original forward (generation)."""
    if labels is None:
        return original(*args, logits_to_keep=logits_to_keep, return_dict=return_dict,
                        **kwargs)
    num_items = kwargs.pop("num_items_in_batch", None)
    base = model.base_model(*args, return_dict=True, **kwargs)
    hidden = base.last_hidden_state
    head = model.get_output_embeddings()
    target = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].to(hidden.device)
    h = hidden.reshape(-1, hidden.shape[-1])
    reduction = "mean" if num_items is None else "sum"
    loss = L.linear_cross_entropy(h, head.weight, target.reshape(-1), bias=head.bias,
                                  reduction=reduction, **fused)
    if num_items is not None:
        loss = loss / num_items
    logits = head(hidden) if return_logits else None
    cls = _output_class(model)
    fields = {"loss": loss, "logits": logits}
    for name in (f.name for f in dataclasses.fields(cls)):
        if name not in fields and name in base:
            fields[name] = base[name]
    out = cls(**fields)
    return out if return_dict is not False else out.to_tuple()


def _output_class(model) -> type:
    """The output class the model's own forward returns (its return annotation, which
    transformers' modules write as a string), else ``CausalLMOutputWithPast``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    cls = inspect.signature(type(model).forward).return_annotation
    if isinstance(cls, str):
        cls = getattr(sys.modules[type(model).forward.__module__], cls.strip("'\""), None)
    if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__"):
        return cls
    return CausalLMOutputWithPast


def _classification_forward(loss_fn, model, original, *args,
                            labels: torch.Tensor | None = None, **kwargs):
    """A sequence classifier's forward with the loss of single-label classification by
    ``loss_fn``; other problem types (regression, multi-label) keep the model's loss."""
    single = (labels is not None and model.config.num_labels > 1
              and not labels.is_floating_point()
              and model.config.problem_type in (None, "single_label_classification"))
    if not single:
        return original(*args, labels=labels, **kwargs)
    out = original(*args, **kwargs)
    assert labels is not None  # single-label classification has labels
    loss = loss_fn(out.logits.reshape(-1, model.config.num_labels), labels.reshape(-1))
    fields = {"loss": loss, **{k: v for k, v in out.items() if k != "loss"}}
    return type(out)(**fields)
