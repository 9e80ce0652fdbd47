"""The lab's models, one small network per task, each ending in an exchangeable output layer.

Every model maps a batch of inputs to a 2-D output ``(rows, n_classes)``: logits for a
mapping head, cosines for a margin head (:class:`softmaxlab.nn.CosineClassifier`). The head
(``softmaxlab.lab.heads``) turns that output into a loss and probabilities, so every mapping
plugs into every task.

* classification: ``mlp`` (any feature shape), ``cnn`` (images, ``meta["input_shape"]``
  ``(1, H, W)``, e.g. 28x28 MNIST).
* language_model: ``lstm`` and ``transformer`` over windows of ``(B, T)`` tokens; one output
  row per position (``B * T`` rows).
* recommendation: ``gru`` over left-padded item histories ``(B, L)``; one row per history.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..nn import CosineClassifier, MultiheadAttention

__all__ = ["ATTENTION_MODELS", "MODELS", "DEFAULT_MODEL", "build_model", "check_model"]


def output_layer(in_features: int, n_classes: int, cosine: bool) -> nn.Module:
    """A linear layer (logits) or a cosine classifier (cosines, for margin losses)."""
    return CosineClassifier(in_features, n_classes) if cosine else nn.Linear(in_features,
                                                                            n_classes)


class MLP(nn.Module):
    """Flatten, two ReLU hidden layers, output layer."""

    def __init__(self, in_features: int, n_classes: int, cosine: bool, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.out = output_layer(hidden, n_classes, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class CNN(nn.Module):
    """Two conv-ReLU-maxpool blocks, a ReLU hidden layer, output layer."""

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int, cosine: bool,
                 hidden: int = 128):
        super().__init__()
        c, h, w = input_shape
        self.input_shape = tuple(input_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), hidden), nn.ReLU())
        self.out = output_layer(hidden, n_classes, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x.reshape(-1, *self.input_shape)))


class LSTMLM(nn.Module):
    """Word embedding, one LSTM layer, output layer at every position."""

    def __init__(self, vocab: int, cosine: bool, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.out = output_layer(dim, vocab, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.out(h.reshape(-1, h.shape[-1]))


class TransformerLM(nn.Module):
    """Word and learned position embeddings, a causal 2-layer Transformer encoder.

    ``attention``: ``(mapping, params)`` of every layer's self-attention
    (:class:`softmaxlab.nn.MultiheadAttention`); ``None``: torch's own module (softmax).
    """

    def __init__(self, vocab: int, cosine: bool, dim: int = 128, max_len: int = 512,
                 attention: tuple[str, dict] | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim,
                                           dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        if attention is not None:
            mapping, params = attention
            for each in self.encoder.layers:
                each.self_attn = MultiheadAttention(dim, 4, batch_first=True, mapping=mapping,
                                                    mapping_params=dict(params))
        self.out = output_layer(dim, vocab, cosine)

    @torch.no_grad()
    def attention_support(self, x: torch.Tensor) -> tuple[int, int]:
        """``(keys with non-zero weight, queries)`` summed over the layers and heads of a
        forward pass on ``x``: their ratio is the mean attention support per query (a
        causal softmax query at position ``t`` sees ``t + 1`` keys)."""
        calls: list = []
        hooks = [each.self_attn.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((m, args, kwargs)), with_kwargs=True)
            for each in self.encoder.layers]
        try:
            self(x)
        finally:
            for h in hooks:
                h.remove()
        keys = queries = 0
        for module, args, kwargs in calls:
            _, w = module(*args, **{**kwargs, "need_weights": True,
                                    "average_attn_weights": False})
            keys += int((w > 0).sum())
            queries += w.shape[:-1].numel()
        return keys, queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) * math.sqrt(self.embed.embedding_dim) + self.pos.weight[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        h = self.encoder(h, mask=causal, is_causal=True)
        return self.out(h.reshape(-1, h.shape[-1]))


class GRURec(nn.Module):
    """Item embedding (0 = padding), one GRU layer; the last state predicts the next item."""

    def __init__(self, n_items: int, cosine: bool, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(n_items, dim, padding_idx=0)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.out = output_layer(dim, n_items, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))  # left padding: the last position is the newest item
        return self.out(h[:, -1])


def _features(dataset) -> int:
    return math.prod(dataset.train.x.shape[1:])


def _image_shape(dataset) -> tuple[int, int, int]:
    shape = tuple(dataset.meta.get("input_shape", ()))
    if len(shape) != 3 or math.prod(shape) != _features(dataset):
        raise ValueError(f"model 'cnn' needs images: dataset {dataset.name!r} has input_shape "
                         f"{shape or 'unknown'} for {_features(dataset)} features")
    return shape


#: name -> (task, build(dataset, cosine) -> nn.Module)
MODELS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "mlp": ("classification", lambda d, cos: MLP(_features(d), d.n_classes, cos)),
    "cnn": ("classification", lambda d, cos: CNN(_image_shape(d), d.n_classes, cos)),
    "lstm": ("language_model", lambda d, cos: LSTMLM(d.n_classes, cos)),
    "transformer": ("language_model", lambda d, cos, **kw: TransformerLM(d.n_classes, cos,
                                                                          **kw)),
    "gru": ("recommendation", lambda d, cos: GRURec(d.n_classes, cos)),
}
#: The model used when none is named, per task.
DEFAULT_MODEL = {"classification": "mlp", "language_model": "lstm", "recommendation": "gru"}


def check_model(name: str | None, task: str) -> str:
    """``name`` (or the task's default) when it fits ``task``; else a ``ValueError``."""
    name = name or DEFAULT_MODEL[task]
    valid = [n for n, (t, _) in MODELS.items() if t == task]
    if name not in valid:
        raise ValueError(f"unknown model {name!r} for a {task} dataset; valid: "
                         f"{', '.join(valid)}")
    return name


#: The models whose attention mapping can be chosen (``build_model(attention=...)``).
ATTENTION_MODELS = ("transformer",)


def build_model(name: str, dataset, cosine: bool,
                attention: tuple[str, dict] | None = None) -> nn.Module:
    """Model ``name`` for ``dataset`` with a linear (or, ``cosine``, a cosine) output;
    ``attention``: ``(mapping, params)`` of its self-attention (a model of
    :data:`ATTENTION_MODELS`)."""
    name = check_model(name, dataset.task)
    if attention is None:
        return MODELS[name][1](dataset, cosine)
    if name not in ATTENTION_MODELS:
        raise ValueError(f"--attention needs a model with attention ({', '.join(ATTENTION_MODELS)}"
                         f"), got model {name!r}")
    return MODELS[name][1](dataset, cosine, attention=attention)
