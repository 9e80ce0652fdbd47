"""Every ``softmaxlab.nn`` module in a model: ``torch.export`` round-trips (export, save,
load, run), pickle and deepcopy keep it working, and the mapping modules trace and save with
``torch.jit.trace``; on both backends (the default fast path and the reference)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from softmaxlab import kernels
from softmaxlab import nn as snn

from .._helpers import gen

MAPPING_MODULES = sorted(
    name for name in snn.__all__
    if isinstance(getattr(snn, name), type) and issubclass(getattr(snn, name), snn.MappingModule)
    and name != "MappingModule")
#: A model (a Linear layer feeding the module) for each module: (name, constructor, args)
N, D, C = 4, 8, 6


def _features():
    return torch.randn(N, D, generator=gen("export-x"))


def _target():
    return torch.tensor([0, 1, 2, 5])


class Model(torch.nn.Module):
    """Features -> Linear -> the module (and the target, for a loss)."""

    def __init__(self, module: torch.nn.Module, *, squash=None):
        super().__init__()
        self.proj = torch.nn.Linear(D, C)
        self.module, self.squash = module, squash

    def forward(self, x, *rest):
        z = self.proj(x)
        return self.module(z if self.squash is None else self.squash(z), *rest)


def _cosine(z):
    return torch.tanh(z) * 0.9


def _model(name: str) -> Model:
    """The mapping module ``name`` behind a Linear layer (softplus first for ``normalize``,
    which needs x >= 0)."""
    return Model(getattr(snn, name)(), squash=F.softplus if name == "Normalize" else None)


def _models():
    t = _target()
    yield from ((name, _model(name), ()) for name in MAPPING_MODULES)
    yield "MixtureOfSoftmaxes", snn.MixtureOfSoftmaxes(D, C, n_components=3), ()
    yield "DoublySparseSoftmax", snn.DoublySparseSoftmax(D, C, n_experts=2), ()
    yield "DecoupledOutput", snn.DecoupledOutput(D, C), ()
    yield "CosineClassifier", snn.CosineClassifier(D, C), ()
    yield "Maxout", snn.Maxout(D, C), ()
    yield "TemperatureScaler", Model(snn.TemperatureScaler()), ()
    yield "CrossEntropyLoss", Model(snn.CrossEntropyLoss(mapping="sigsoftmax")), (t,)
    yield "FenchelYoungLoss", Model(snn.FenchelYoungLoss(mapping="entmax15")), (t,)
    yield "SoftMarginLoss", Model(snn.SoftMarginLoss(margin=0.5)), (t,)
    yield "AMSoftmaxLoss", Model(snn.AMSoftmaxLoss(), squash=_cosine), (t,)
    yield "ArcFaceLoss", Model(snn.ArcFaceLoss(), squash=_cosine), (t,)
    yield "SparseSoftmaxLoss", Model(snn.SparseSoftmaxLoss(k=2)), (t,)
    yield "LinearCrossEntropyLoss", snn.LinearCrossEntropyLoss(), (
        torch.randn(C, D, generator=gen("export-w")).requires_grad_(), t)


MODELS = list(_models())


@pytest.fixture(params=["", "reference"], ids=["default", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, request.param)


@pytest.mark.parametrize("name, model, rest", MODELS, ids=[m[0] for m in MODELS])
def test_export_save_load_equals_eager(backend, name, model, rest):
    model.eval()
    args = (_features(), *rest)
    program = torch.export.export(model, args)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    torch.testing.assert_close(loaded(*args), model(*args))


@pytest.mark.parametrize("name, model, rest", MODELS, ids=[m[0] for m in MODELS])
def test_pickle_and_deepcopy_after_a_training_step(name, model, rest):
    args = (_features(), *rest)
    out = model(*args)
    out.sum().backward()
    model.eval()
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.eval()
        torch.testing.assert_close(clone(*args), model(*args))


@pytest.mark.filterwarnings("ignore:`torch.jit")  # TorchScript is deprecated, still used
@pytest.mark.parametrize("name", MAPPING_MODULES)
def test_mapping_modules_trace_and_save_with_torchscript(backend, name):
    model = _model(name).eval()
    x = _features()
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), model(x))


def test_export_records_the_custom_op():
    program = torch.export.export(Model(snn.Sparsemax()), (_features(),))
    code = program.graph_module.code
    if kernels.kernel_name("sparsemax", _features()) == "cpu.sparsemax":
        assert "torch.ops.softmaxlab.sparse_map" in code, code
