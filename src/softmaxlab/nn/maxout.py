"""Maxout (Goodfellow et al. 2013): the maximum over k affine pieces per output unit."""

from __future__ import annotations

import torch
from torch import nn


class Maxout(nn.Module):
    r"""Maxout layer: :math:`h_i(x) = \max_{j \le k} (x W_{ij} + b_{ij})`.

    The last alternative the softmax articles list: a learned piecewise-linear activation
    used in the lab's hidden layers (not an output mapping).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        pieces: number of affine pieces ``k`` (>= 1) maximized over.

    Shape:
        ``(*, in_features)`` -> ``(*, out_features)``.

    Example:
        >>> layer = Maxout(4, 3, pieces=2)
        >>> layer(torch.zeros(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, out_features: int, pieces: int = 2, bias: bool = True):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features),
                        ("pieces", pieces)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.in_features, self.out_features, self.pieces = in_features, out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y.unflatten(-1, (self.out_features, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"pieces={self.pieces}")
