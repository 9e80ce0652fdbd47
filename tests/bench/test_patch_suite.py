"""``softmaxlab bench --suite patch`` at its quick size: the cases and their baselines, the
records a run writes (no time is asserted), and that the benchmarked patched softmax step
computes the unpatched model's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from softmaxlab import losses as L
from softmaxlab.bench import records, runner, suites

from .._helpers import assert_close
from ..tolerances import F32, PATCHED_MODEL

pytest.importorskip("transformers", reason="the GPT-2 cases need transformers")

STEPS = ("gpt2_step(loss=softmax)", "gpt2_step(loss=sparsemax)", "gpt2_step(attention=entmax15)")
TORCH_LCE = {"F.linear_cross_entropy", "F.linear_cross_entropy chunked",
             "F.linear_cross_entropy chunk=256"}


def _cases(quick=True):
    return {c.op: c for c in suites.build_suite("patch", quick=quick)}


def test_the_suite_has_the_issue_cases_and_sizes():
    full = _cases(quick=False)
    assert list(full) == [*STEPS, "linear_cross_entropy"]
    b, n, d, layers, v = full[STEPS[0]].shape
    assert (d, layers, v) == (256, 4, 50257)  # issue 12's model, smaller batch and sequence
    assert full["linear_cross_entropy"].shape == (b * n, d, v)  # the same head
    for op in STEPS:
        assert [i.name for i in full[op].impls] == ["softmaxlab", "unpatched"]
        assert full[op].modes == ("both",)
    assert {(t.metric, t.baseline, t.value) for t in full[STEPS[0]].targets} == {
        ("memory", "unpatched", 0.5), ("time", "unpatched", 1.05)}
    names = {i.name for i in full["linear_cross_entropy"].impls}
    assert TORCH_LCE <= names and "F.cross_entropy" in names


def _loss_and_grads(case, impl, inputs):
    model, ids = inputs.args
    loss = case.impl(impl).resolve()(model, ids)
    return loss, torch.autograd.grad(loss, inputs.wrt)


def test_the_patched_softmax_step_is_the_unpatched_step():
    case = _cases()[STEPS[0]]
    inputs = case.make()
    ref, ref_grads = _loss_and_grads(case, "unpatched", inputs)
    got, grads = _loss_and_grads(case, "softmaxlab", inputs)
    assert_close(got, ref, PATCHED_MODEL[F32], "loss")
    assert len(grads) == len(ref_grads) == len(list(inputs.args[0].parameters()))
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close(g, r, PATCHED_MODEL[F32], f"grad {i}")
    assert not hasattr(inputs.args[0], "_softmaxlab_patch")  # unpatched after each step


def test_the_sparsemax_step_is_the_fenchel_young_loss_of_the_logits():
    case = _cases()[STEPS[1]]
    inputs = case.make()
    model, ids = inputs.args
    got, grads = _loss_and_grads(case, "softmaxlab", inputs)
    logits = model(ids).logits[:, :-1].reshape(-1, case.shape[-1])
    expected = L.fenchel_young_loss(logits, ids[:, 1:].reshape(-1), mapping="sparsemax")
    assert_close(got, expected, PATCHED_MODEL[F32], "loss")
    assert all(torch.isfinite(g).all() for g in grads)


def test_the_entmax15_attention_step_runs_softmaxlab_attention_and_restores_the_model():
    case = _cases()[STEPS[2]]
    inputs = case.make()
    model = inputs.args[0]
    impl = model.config._attn_implementation
    ref, _ = _loss_and_grads(case, "unpatched", inputs)
    got, grads = _loss_and_grads(case, "softmaxlab", inputs)
    assert torch.isfinite(got) and all(torch.isfinite(g).all() for g in grads)
    assert not torch.equal(got, ref)  # a different attention ran
    assert model.config._attn_implementation == impl


def test_a_quick_run_gives_a_row_per_case_and_implementation():
    doc = runner.run("patch", quick=True, repeat=2, memory=False)
    cases = _cases()
    expected = {(c.id, i.name) for c in cases.values() for i in c.impls}
    rows = doc["rows"]
    assert {(r["case"], r["impl"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        assert set(records.ROW_FIELDS) <= set(r)
        assert r["status"] == records.OK, r
        assert r["mode"] == "both" and r["n"] == 2 and r["median_s"] > 0
        assert r["flops"] > 0
        if r["role"] == "candidate":
            baselines = {i.name for i in cases[r["op"]].impls} - {"softmaxlab"}
            assert set(r["ratios"]) == baselines
    (soft,) = [r for r in rows if r["op"] == STEPS[0] and r["role"] == "candidate"]
    assert {t["metric"] for t in soft["targets"]} == {"time", "memory"}
    assert doc["suites"] == ["patch"] and doc["cases"]


def test_the_memory_of_a_model_step_is_measured_in_a_fresh_process():
    case = _cases()[STEPS[0]]
    settings = runner.Settings.default(quick=True, repeat=1)
    rows = runner.measure_case(case, ["both"], settings)
    assert [r.impl for r in rows] == ["softmaxlab", "unpatched"]
    for r in rows:
        assert r.status == records.OK and isinstance(r.peak_mem_bytes, int), r
        assert r.peak_mem_bytes >= 0 and "fresh process" in r.mem_method
