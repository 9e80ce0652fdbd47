"""The lab's heads: every registry mapping with its natural loss, plus the margin losses.

A :class:`Head` says how a model's last layer, its training loss and its test-time
probabilities fit together. One head per ``softmaxlab.mappings()`` entry (a linear output
layer, trained with the mapping's natural loss) and one per margin loss (a
:class:`softmaxlab.nn.CosineClassifier` output layer, trained with the margin loss, predicting
with the softmax of the scaled cosines). Nothing else lists mapping names.

A head's parameters are part of its name, as ``--mappings`` takes them:
``entmax:alpha=1.3``, ``sparse_softmax:k=5``, ``entmax:alpha=1.3,n_iter=30`` (a ``p=v``
item after a comma belongs to the mapping before it), and the margin losses' ``scale`` and
``margin``: ``arcface:margin=0.3``; values equal to the default (the registry's, or the
loss's) are left out of the name (``entmax:alpha=1.5`` is ``entmax``). The default
comparison (``all``) sweeps the parameters of :data:`SWEEPS` instead of training the
registry default: ``entmax`` at alpha 1.5 would duplicate ``entmax15``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from .. import losses as L
from .._registry import Mapping, Param, get_mapping, mappings, positive_finite

__all__ = ["Head", "SWEEPS", "heads", "default_heads", "get_head", "head_name", "order_key",
           "parse_attention", "parse_heads", "too_big"]



#: The parameter values ``all`` trains in place of a mapping's registry defaults (each
#: entry one head); ``k`` values above the number of classes are left out.
SWEEPS: dict[str, tuple[dict, ...]] = {
    "entmax": ({"alpha": 1.25}, {"alpha": 1.75}),
    "sparse_softmax": ({"k": 2}, {"k": 5}),
}


@dataclass(frozen=True)
class Head:
    """How one lab entry trains and predicts.

    ``loss(out, target)`` trains on the model output ``out`` (logits, or cosines when
    ``scale`` is set); at test time ``mapping`` turns ``logits(out)`` (``scale * out`` for
    cosine heads) into probabilities. ``skip`` says why a head cannot train a classifier.
    ``tunable`` are the ``Param`` records of the parameters it takes (the mapping's, or a
    margin loss's ``scale`` and ``margin``); ``params`` the values its name gives.
    """

    name: str
    mapping: Mapping
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    scale: float | None = None
    skip: str | None = None
    params: tuple[tuple[str, object], ...] = ()  # the values given (not the defaults)
    tunable: tuple[Param, ...] = ()  # the parameters it takes: the mapping's or the loss's

    @property
    def values(self) -> dict:
        """The parameter values given in the name."""
        return dict(self.params)

    @property
    def kwargs(self) -> dict:
        """The mapping's keyword arguments (none for a cosine head: its values are the
        loss's)."""
        return {} if self.cosine else dict(self.params)

    def param(self, name: str) -> Param:
        for p in self.tunable:
            if p.name == name:
                return p
        raise KeyError(f"{self.base} has no parameter {name!r}")

    @property
    def base(self) -> str:
        """The name without parameters (the registry's or the margin loss's)."""
        return self.name.split(":", 1)[0]

    @property
    def cosine(self) -> bool:
        """The output layer is a ``CosineClassifier`` (margin losses)."""
        return self.scale is not None

    @property
    def has_log(self) -> bool:
        """Log-probabilities exist: NLL, perplexity and temperature scaling are defined."""
        return self.mapping.log_fn is not None and self.mapping.normalized

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.scale is None else self.scale * out

    def probs(self, out: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.mapping.fn(self.logits(out) / temperature, -1, **self.kwargs)

    def log_probs(self, out: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.mapping.log_fn(self.logits(out) / temperature, -1, **self.kwargs)


def head_name(base: str, params: dict) -> str:
    """``base:p=v,q=w`` (the parameters in the given order), or ``base`` without any."""
    if not params:
        return base
    return base + ":" + ",".join(f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}"
                                 for k, v in params.items())


def _mapping_head(m: Mapping, params: dict | None = None) -> Head:
    params = {p.name: params[p.name] for p in m.params
              if params and p.name in params and params[p.name] != p.default}
    name = head_name(m.name, params)
    if m.loss is None:
        return Head(name, m, None, skip=f"no natural training loss in the registry; "
                                        f"{m.name} is {m.summary}", params=tuple(params.items()),
                    tunable=m.params)
    return Head(name, m, L.natural_loss(m.name, **params), params=tuple(params.items()),
                tunable=m.params)


def _below_pi(v) -> bool:
    return 0 <= v < math.pi


def _non_negative(v) -> bool:
    return 0 <= v < math.inf


#: Margin head -> (loss, fixed keyword arguments, the bound of its margin).
MARGIN_LOSSES: dict[str, tuple[Callable, dict, Callable[[object], bool], str]] = {
    "am_softmax": (L.am_softmax_loss, {}, _non_negative, "a finite number >= 0"),
    "real_am": (L.am_softmax_loss, {"real": True}, _non_negative, "a finite number >= 0"),
    "arcface": (L.arcface_loss, {}, _below_pi, "a number in [0, pi) (radians)"),
}


def _margin_head(name: str, params: dict | None = None) -> Head:
    """Trains with the margin loss ``name`` at its ``scale`` and ``margin`` (the loss's
    defaults unless given); predicts with softmax(scale * cosine)."""
    loss, fixed, check, description = MARGIN_LOSSES[name]
    defaults = inspect.signature(loss).parameters
    tunable = (Param("scale", defaults["scale"].default, (numbers.Real,), positive_finite,
                     "a finite number > 0"),
               Param("margin", defaults["margin"].default, (numbers.Real,), check, description))
    params = {p.name: params[p.name] for p in tunable
              if params and p.name in params and params[p.name] != p.default}
    values = {p.name: p.default for p in tunable} | params
    return Head(head_name(name, params), get_mapping("softmax"), partial(loss, **fixed, **values),
                scale=values["scale"], params=tuple(params.items()), tunable=tunable)


def heads() -> tuple[Head, ...]:
    """Every lab head: the registry's mappings (in order), then the margin losses."""
    return (
        *(_mapping_head(m) for m in mappings()),
        *(_margin_head(name) for name in MARGIN_LOSSES),
    )


def _parse_value(head: Head, key: str, text: str, entry: str):
    """``text`` as the type of ``head``'s parameter ``key``, validated by its ``Param``."""
    try:
        param = head.param(key)
    except KeyError:
        known = ", ".join(p.name for p in head.tunable) or "none"
        raise ValueError(f"--mappings {entry}: {head.base} has no parameter {key!r} "
                         f"(its parameters: {known})") from None
    value: object = text
    if not isinstance(param.default, str):
        try:
            value = int(text) if isinstance(param.default, int) else float(text)
        except ValueError:
            value = text  # validate() names the type it wants
    try:
        return param.validate(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--mappings {entry}: {e}") from None


def get_head(name: str) -> Head:
    """The head called ``name`` (``base`` or ``base:p=v,...``); a ``ValueError`` lists the
    valid names, or names the bad parameter, otherwise."""
    base, _, rest = name.partition(":")
    found = {h.name: h for h in heads()}
    if base not in found:
        raise ValueError(f"unknown mapping {base!r}; valid names: {', '.join(found)}")
    head = found[base]
    if not rest:
        return head
    items = [t.strip() for t in rest.split(",") if t.strip()]
    if not items or any("=" not in t for t in items):
        raise ValueError(f"--mappings {name}: give parameters as {base}:name=value")
    params = {}
    for item in items:
        key, _, text = item.partition("=")
        params[key.strip()] = _parse_value(head, key.strip(), text.strip(), name)
    return _margin_head(base, params) if head.cosine else _mapping_head(head.mapping, params)


def default_heads() -> tuple[Head, ...]:
    """What ``--mappings all`` trains: every head, with :data:`SWEEPS` in place of the
    registry defaults of the mappings it names."""
    out = []
    for h in heads():
        sweep = SWEEPS.get(h.name) if not h.cosine else None
        out += [_mapping_head(h.mapping, p) for p in sweep] if sweep else [h]
    return tuple(out)


def _entries(spec: str, flag: str, expected: str = "comma-separated names") -> list[str]:
    """Comma-separated entries ``name`` / ``name:p=v`` (a ``p=v`` after a comma continues
    the entry before it)."""
    entries: list[str] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token:
            if not entries:
                raise ValueError(f"{flag}: {token!r} must follow a mapping name "
                                 "(name:param=value)")
            entries[-1] += "," + token
        else:
            entries.append(token)
    if not entries:
        raise ValueError(f"{flag} must be {expected}, got {spec!r}")
    return entries


def parse_heads(spec: str) -> tuple[Head, ...]:
    """``"all"`` (:func:`default_heads`, skipped ones included) or comma-separated entries
    ``name`` / ``name:p=v`` (a ``p=v`` after a comma continues the entry before it)."""
    if spec.strip() == "all":
        return default_heads()
    found = [get_head(e) for e in _entries(spec, "--mappings", "'all' or comma-separated names")]
    return tuple({h.name: h for h in found}.values())


def parse_attention(spec: str) -> list[tuple[str, str, dict]]:
    """``--attention``: comma-separated attention mappings
    (:func:`softmaxlab.attention.normalizers.normalizer_names`), each ``name`` or, for a
    registry mapping, ``name:p=v``, as ``(label, mapping, params)``.

    Example:
        >>> parse_attention("entmax15,sigmoid")
        [('entmax15', 'entmax15', {}), ('sigmoid', 'sigmoid', {})]
    """
    from ..attention.normalizers import normalizer_names

    names = normalizer_names()
    out: dict[str, tuple[str, str, dict]] = {}
    for entry in _entries(spec, "--attention"):
        base, _, rest = entry.partition(":")
        if base not in names:
            raise ValueError(f"--attention: unknown attention mapping {base!r}; valid names: "
                             f"{', '.join(names)}")
        if not rest:
            out[base] = (base, base, {})
            continue
        if base not in {h.name for h in heads()}:
            raise ValueError(f"--attention {entry}: {base} takes no parameters here")
        try:
            head = get_head(entry)
        except ValueError as e:
            raise ValueError(str(e).replace("--mappings", "--attention")) from None
        out[head.name] = (head.name, base, dict(head.kwargs))
    return list(out.values())


def too_big(head: Head, n_classes: int) -> str | None:
    """Why ``head``'s parameters do not suit ``n_classes`` (``k`` of ``sparse_softmax`` above
    the number of classes), or None."""
    k = head.kwargs.get("k")
    if k is not None and k > n_classes:
        return f"k must be <= the number of classes ({n_classes}), got k={k}"
    return None


def order_key(name: str) -> tuple:
    """Sort key of head names: registry order of the base name, then the parameters."""
    order = {h.name: i for i, h in enumerate(heads())}
    base, _, rest = name.partition(":")
    return order.get(base, len(order)), rest
