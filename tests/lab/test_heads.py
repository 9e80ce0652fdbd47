"""The lab's heads: per-mapping parameters (``--mappings entmax:alpha=1.3``), the default
sweep, and the errors that name the bad entry."""

from __future__ import annotations

import pytest
import torch

from softmaxlab import losses as L
from softmaxlab.cli import main
from softmaxlab.lab.datasets import load
from softmaxlab.lab.heads import SWEEPS, default_heads, get_head, parse_heads
from softmaxlab.lab.train import RunConfig, run


def test_all_sweeps_entmax_alpha_and_sparse_softmax_k_instead_of_duplicating_entmax15():
    names = [h.name for h in default_heads()]
    assert "entmax" not in names and "sparse_softmax" not in names  # no registry default
    assert {"entmax:alpha=1.25", "entmax:alpha=1.75", "sparse_softmax:k=2",
            "sparse_softmax:k=5"} <= set(names)
    assert "entmax15" in names and len(names) == len(set(names))
    assert [h.name for h in parse_heads("all")] == names
    for base, points in SWEEPS.items():
        assert all(p != get_head(base).mapping.defaults for p in points)


def test_parameters_are_given_per_mapping_and_named_canonically():
    hs = parse_heads("entmax:alpha=1.3,n_iter=30,sparse_softmax:k=5,softmax,entmax:alpha=1.5")
    assert [(h.name, h.kwargs) for h in hs] == [
        ("entmax:alpha=1.3,n_iter=30", {"alpha": 1.3, "n_iter": 30}),
        ("sparse_softmax:k=5", {"k": 5}), ("softmax", {}), ("entmax", {})]  # 1.5: the default
    assert get_head("entmax:alpha=1.3,n_iter=30").name == "entmax:alpha=1.3,n_iter=30"


def test_a_margin_head_takes_its_losss_scale_and_margin():
    cos = torch.rand(6, 10, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.arange(6)
    h = get_head("arcface:margin=0.3,scale=16")
    assert h.name == "arcface:scale=16.0,margin=0.3" and h.cosine and h.kwargs == {}
    assert h.values == {"scale": 16.0, "margin": 0.3}
    assert h.loss(cos, y) == L.arcface_loss(cos, y, scale=16.0, margin=0.3)
    torch.testing.assert_close(h.probs(cos), torch.softmax(16.0 * cos, -1))
    real = get_head("real_am:margin=0.2")
    assert real.loss(cos, y) == L.am_softmax_loss(cos, y, margin=0.2, real=True)
    assert get_head("am_softmax:margin=0.35").name == "am_softmax"  # the loss's default


def test_a_head_uses_its_parameters_in_the_loss_and_the_probabilities():
    z = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    h = get_head("sparse_softmax:k=3")
    assert ((h.probs(z) > 0).sum(-1) == 3).all()
    assert h.loss(z, y) == L.sparse_softmax_loss(z, y, k=3)
    e = get_head("entmax:alpha=1.75")
    assert e.loss(z, y) == L.fenchel_young_loss(z, y, mapping="entmax", alpha=1.75)
    assert not torch.equal(e.probs(z), get_head("entmax15").probs(z))


@pytest.mark.parametrize("spec, words", [
    ("entmax:alpha=0.5", ["entmax:alpha=0.5", "alpha must be", "got 0.5"]),
    ("entmax:beta=2", ["no parameter 'beta'", "alpha, n_iter"]),
    ("sparse_softmax:k=two", ["sparse_softmax:k=two", "k must be an integer"]),
    ("am_softmax:real=1", ["no parameter 'real'", "scale, margin"]),
    ("arcface:margin=3.5", ["arcface:margin=3.5", "margin must be a number in [0, pi)"]),
    ("real_am:scale=-1", ["scale must be a finite number > 0, got -1.0"]),
    ("alpha=2", ["'alpha=2' must follow a mapping name"]),
    ("entmax:alpha", ["name=value"]),
    ("nope:k=1", ["unknown mapping 'nope'"]),
])
def test_bad_mapping_entries_name_the_problem(spec, words):
    with pytest.raises(ValueError) as e:
        parse_heads(spec)
    for w in words:
        assert w in str(e.value)


def test_k_above_the_number_of_classes_is_refused_up_front(tmp_path, capsys):
    assert main(["compare", "--mappings", "sparse_softmax:k=11", "--out", str(tmp_path / "o")]
                ) == 2
    assert "k must be <= the number of classes (10), got k=11" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_run_with_parameters_trains_with_them():
    data = load("digits", limit=150)
    cfg = RunConfig(model="mlp", epochs=1)
    r = run(data, "sparse_softmax:k=2", 0, cfg)
    assert r["status"] == "ok" and r["metrics"]["support"] == 2
    r = run(data, "taylor_softmax:order=4", 0, cfg)
    assert r["status"] == "ok" and r["metrics"]["temperature"] > 0
    wide, narrow = (run(data, f"arcface:margin={m}", 0, cfg) for m in (0.1, 0.6))
    assert wide["status"] == narrow["status"] == "ok"
    assert wide["curve"]["train_loss"] != narrow["curve"]["train_loss"]
