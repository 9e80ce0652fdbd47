"""Statistics of the repetitions (synthetic timings)."""

from __future__ import annotations

import pytest

from softmaxlab.bench import stats


def test_quantiles_and_stats_on_synthetic_timings():
    ten = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted on purpose
    assert stats.quantile(ten, 0.5) == pytest.approx(5.5)
    assert stats.quantile(ten, 0.2) == pytest.approx(2.8)  # 1 + 0.2 * 9
    assert stats.quantile(ten, 0.8) == pytest.approx(8.2)
    assert stats.quantile(ten, 0.0) == 1.0 and stats.quantile(ten, 1.0) == 10.0
    assert stats.quantile([3.0], 0.2) == 3.0
    with pytest.raises(ValueError, match="no values"):
        stats.quantile([], 0.5)
    with pytest.raises(ValueError, match="q must be in"):
        stats.quantile([1.0], 1.5)
    # one slow outlier moves the mean, not the median or the p20/p80 band
    times = [1.0] * 9 + [100.0]
    s = stats.Stats.of(times)
    assert (s.n, s.median, s.p20, s.p80, s.min, s.max) == (10, 1.0, 1.0, 1.0, 1.0, 100.0)
    assert s.mean == pytest.approx(10.9)
    with pytest.raises(ValueError, match="no timings"):
        stats.Stats.of([])
