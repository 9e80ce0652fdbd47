"""The distributed benchmark on a tiny problem (2 spawned gloo ranks): the traffic it counts
is its analytical table's, its label-smoothing finding holds, and the committed results
agree with the formulas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from softmaxlab.bench import distributed as B

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend")

N, D, V, ROWS = 64, 16, 101, 32
COMMITTED = Path(__file__).parents[2] / "benchmarks" / "results" / "distributed-cpu-w2.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    assert B.main(["--n", str(N), "--d", str(D), "--v", str(V), "--repeat", "1",
                   "--count-rows", str(ROWS), "--out", str(out)]) == 0
    return (json.loads((out / "distributed-cpu-w2.json").read_text()),
            (out / "distributed-cpu-w2.md").read_text())


def _counted_rows(res: dict) -> list[tuple[dict, dict]]:
    """(analytical row, counted entry) of every scheme the gloo run counted."""
    pairs = []
    for a in res["analytical"]:
        key = "megatron " + a["loss"] if a["scheme"] == "megatron" else a["loss"]
        if key in res["counted"]:
            pairs.append((a, res["counted"][key]))
    return pairs


def _assert_counted_is_analytical(res: dict) -> None:
    pairs = _counted_rows(res)
    assert len(pairs) == 6  # Megatron's CE and the five losses of softmaxlab.distributed
    for a, c in pairs:
        # the counted calls include the all-gather of the slice sizes, once per call
        assert c["collectives"] - (c["per_call_bytes"] > 0) == a["collectives"], a["loss"]
        assert c["payload_bytes_per_token"] == pytest.approx(a["payload_bytes_per_token"])
        assert c["bus_bytes_per_token"] == pytest.approx(a["bus_bytes_per_token"])
    assert res["linear_counted_bytes_per_token"] == 4 * res["config"]["d"] + 12


def test_counted_traffic_is_the_analytical_volume(tiny):
    _assert_counted_is_analytical(tiny[0])


def test_label_smoothing_megatron_varies_by_rank_softmaxlab_is_the_single_process_loss(tiny):
    res = tiny[0]
    g = torch.Generator().manual_seed(0)  # the bench's data, in its order
    h = torch.randn(N, D, generator=g) / D**0.5
    w = torch.randn(V, D, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    z = h[:ROWS] @ w.T
    prior = -torch.arange(1, V + 1, dtype=z.dtype).log()
    for name, logits in (("random", z), ("zipf", z + prior)):
        ls = res["label_smoothing"][name]
        per_rank = ls["megatron_per_rank_mean_loss"]
        assert per_rank[0] != per_rank[1]
        assert ls["megatron_tp1_mean_loss"] not in per_rank
        expected = float(F.cross_entropy(logits, t[:ROWS], label_smoothing=0.1))
        assert ls["softmaxlab_mean_loss"] == pytest.approx(expected, rel=1e-5)


def test_every_setup_computes_the_same_loss_and_the_report_shows_it(tiny):
    res, md = tiny
    assert list(res["time"]) == ["2 gloo processes x 1 thread", "1 process x 2 threads",
                                 "1 process x 1 thread"]
    losses = [v["loss"] for v in res["time"].values()]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)
    for setup in res["time"]:
        assert setup in md
    assert "Megatron TP=1" in md and f"V={V} split [51, 50]" in md


def test_the_committed_results_agree_with_the_formulas():
    res = json.loads(COMMITTED.read_text())
    cfg = res["config"]
    assert B.analytical(cfg["world"], cfg["d"], res["threshold_steps"]) == res["analytical"]
    _assert_counted_is_analytical(res)
