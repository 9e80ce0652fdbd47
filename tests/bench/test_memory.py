"""Peak memory measured in a fresh process."""

from __future__ import annotations

import pytest

from softmaxlab.bench import memory, suites


def test_fresh_process_rss_measurement_detects_a_known_allocation():
    target = (memory.__name__, "allocation_probe")
    big, method = memory.rss_growth_in_fresh_process((*target, {"nbytes": 200_000_000}))
    small, _ = memory.rss_growth_in_fresh_process((*target, {"nbytes": 1_000}))
    assert 150e6 <= big <= 260e6, (big, method)
    assert small < 20e6, small  # a fresh process: the big one's pages are not counted here
    assert "fresh process" in method


def test_a_failing_memory_measurement_raises_with_the_childs_error():
    with pytest.raises(RuntimeError, match="no case 'nope'"):
        memory.rss_growth_in_fresh_process((suites.__name__, "memory_steps",
                                            {"suite": "topk", "quick": True, "compile": False,
                                             "case_id": "nope", "impl": "softmaxlab",
                                             "modes": ["forward"]}))


def test_the_peak_rss_helper_reads_the_resident_set():
    base = memory.reset_peak_rss()
    if base is None:
        pytest.skip("no /proc/self/clear_refs")
    assert base > 0 and memory.proc_status_bytes("VmHWM") >= base
    assert memory.proc_status_bytes("NoSuchField") is None
