"""Statistics of the repetitions' times: quantiles and :class:`Stats`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` by linear interpolation between order statistics
    (Hyndman-Fan type 7, numpy's default).

    Example:
        >>> quantile([4.0, 1.0, 3.0, 2.0], 0.5)
        2.5
        >>> quantile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.2)
        2.8
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of the repetitions' times (seconds)."""

    n: int
    median: float
    p20: float
    p80: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, times: Sequence[float]) -> Stats:
        """The statistics of ``times`` (at least one).

        Example:
            >>> s = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
            >>> (s.n, s.median, s.p20, s.p80, s.min, s.max, s.mean)
            (5, 3.0, 1.8, 4.2, 1.0, 5.0, 3.0)
        """
        if not times:
            raise ValueError("no timings")
        return cls(len(times), quantile(times, 0.5), quantile(times, 0.2), quantile(times, 0.8),
                   min(times), max(times), sum(times) / len(times))
