"""softmaxlab.patch: a patched model's loss and gradients against the unpatched model
(softmax) or against its logits through the library loss (every other mapping); unpatch
restores it exactly; training lowers the loss; generation still works."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import softmaxlab as sl
from softmaxlab import losses as L

from ._helpers import assert_close
from .tolerances import F32, F64, PATCHED_MODEL

MAPPINGS = ["softmax", "sparsemax", "entmax15", "sigsoftmax"]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys()
    for n in a:
        assert_close(a[n], b[n], PATCHED_MODEL[F64], n)


# ------------------------------------------------------------------- any nn.Module
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5)).double()


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_a_plain_classifier_gets_probs_predict_and_loss(mapping):
    net = _mlp()
    x, y = torch.randn(7, 6, dtype=F64), torch.randint(0, 5, (7,))
    sl.patch(net, output=mapping, loss=mapping)
    logits = net(x)
    m = sl.get_mapping(mapping)
    assert_close(net.probs(x), m.fn(logits, -1), PATCHED_MODEL[F64])
    assert torch.equal(net.predict(x), m.fn(logits, -1).argmax(-1))
    assert_close(net.loss(x, target=y), L.natural_loss(mapping)(logits, y), PATCHED_MODEL[F64])
    sl.unpatch(net)
    assert not hasattr(net, "probs") and not hasattr(net, "loss")


def test_a_loss_by_name_takes_its_parameters():
    net = _mlp()
    x, y = torch.randn(7, 6, dtype=F64), torch.randint(0, 5, (7,))
    with sl.patched(net, loss="sparse_softmax_loss", k=3):
        got = net.loss(x, target=y)
    assert_close(got, L.sparse_softmax_loss(net(x), y, k=3), PATCHED_MODEL[F64])
    assert not hasattr(net, "loss")


def test_training_a_patched_classifier_lowers_its_loss():
    net = _mlp()
    x, y = torch.randn(64, 6, dtype=F64), torch.randint(0, 5, (64,))
    sl.patch(net, loss="entmax15")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = float(net.loss(x, target=y))
    for _ in range(30):
        opt.zero_grad()
        net.loss(x, target=y).backward()
        opt.step()
    assert float(net.loss(x, target=y)) < first


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({}, ValueError, "at least one"),
    ({"loss": "nope"}, ValueError, "unknown mapping 'nope'"),
    ({"output": "nope"}, ValueError, "unknown mapping 'nope'"),
    ({"loss": "normalize"}, ValueError, "no natural training loss"),
    ({"attention": "entmax15"}, ValueError, "not a Hugging Face model"),
    ({"output": "softmax", "temperature": 0.0}, ValueError, "temperature"),
])
def test_bad_requests_are_refused_and_change_nothing(kwargs, error, message):
    net = _mlp()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(error, match=message):
        sl.patch(net, **kwargs)
    assert not hasattr(net, "_softmaxlab_patch") and not hasattr(net, "probs")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_patch_twice_and_unpatch_unpatched_are_refused():
    net = _mlp()
    with pytest.raises(ValueError, match="not patched"):
        sl.unpatch(net)
    sl.patch(net, output="softmax")
    with pytest.raises(ValueError, match="already patched"):
        sl.patch(net, loss="softmax")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        sl.patch("model", output="softmax")


def test_a_model_without_a_head_is_refused():
    with pytest.raises(ValueError, match="no output head"):
        sl.patch(nn.Sequential(nn.ReLU()), loss="softmax")


def test_a_patched_model_pickles_after_unpatch_and_keeps_its_state_dict():
    import pickle

    net = _mlp()
    sd = copy.deepcopy(net.state_dict())
    sl.patch(net, output="sparsemax", loss="sparsemax")
    assert net.state_dict().keys() == sd.keys()
    sl.unpatch(net)
    again = pickle.loads(pickle.dumps(net))
    assert all(torch.equal(sd[k], v) for k, v in again.state_dict().items())


# ------------------------------------------------- image classifiers (torchvision layouts)
# torchvision itself cannot be imported here (its wheels are CUDA builds), so these are small
# hand-built modules with the head where torchvision puts it: ResNet and GoogLeNet ``.fc``,
# VGG and AlexNet ``.classifier[-1]`` (a Sequential), DenseNet ``.classifier``, ViT-style
# ``.head``; GoogLeNet returns (logits, aux2, aux1) in training mode as torchvision's does.
class _Stem(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                      nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def pooled(self, x):
        return torch.flatten(self.avgpool(self.features(x)), 1)


class _ResNetLike(_Stem):
    def __init__(self, classes=5, width=8):
        super().__init__(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.pooled(x))


class _VGGLike(_Stem):  # AlexNet has the same layout: features, avgpool, classifier[-1]
    def __init__(self, classes=5, width=8):
        super().__init__(width)
        self.classifier = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Dropout(0.0),
                                        nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.0),
                                        nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(self.pooled(x))


class _DenseNetLike(_Stem):
    def __init__(self, classes=5, width=8):
        super().__init__(width)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x):
        return self.classifier(nn.functional.relu(self.pooled(x)))


class _GoogLeNetOutputs(tuple):
    pass


class _GoogLeNetLike(_Stem):
    def __init__(self, classes=5, width=8):
        super().__init__(width)
        self.aux1 = nn.Sequential(nn.Flatten(), nn.Linear(width * 36, classes))  # 12x12 images
        self.aux2 = nn.Sequential(nn.Flatten(), nn.Linear(width * 36, classes))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = self.features(x)
        logits = self.fc(torch.flatten(self.avgpool(h), 1))
        if self.training:
            return _GoogLeNetOutputs((logits, self.aux2(h), self.aux1(h)))
        return logits


class _HeadLike(_Stem):
    def __init__(self, classes=5, width=8):
        super().__init__(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pooled(x))


VISION = {"resnet (.fc)": _ResNetLike, "vgg/alexnet (.classifier[-1])": _VGGLike,
          "densenet (.classifier)": _DenseNetLike, "googlenet (.fc, aux outputs)": _GoogLeNetLike,
          "vit-style (.head)": _HeadLike}


def _vision(layout):
    torch.manual_seed(0)
    net = VISION[layout]().double()
    return net, torch.randn(12, 3, 12, 12, dtype=F64), torch.arange(12) % 5


def _main_logits(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("layout", VISION)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_an_image_classifier_gets_probs_predict_and_loss(layout, mapping):
    net, x, y = _vision(layout)
    net.eval()
    logits = net(x)
    sl.patch(net, output=mapping, loss=mapping)
    m = sl.get_mapping(mapping)
    assert_close(net.probs(x), m.fn(logits, -1), PATCHED_MODEL[F64])
    assert torch.equal(net.predict(x), m.fn(logits, -1).argmax(-1))
    expected = L.natural_loss(mapping)(logits, y)
    assert_close(net.loss(x, target=y), expected, PATCHED_MODEL[F64])
    sl.unpatch(net)
    assert not hasattr(net, "probs") and not hasattr(net, "loss")
    assert torch.equal(net(x), logits)
    net.train()  # GoogLeNet's training output (logits, aux2, aux1): the main logits' loss
    with sl.patched(net, loss=mapping):
        got = net.loss(x, target=y)
    assert_close(got, L.natural_loss(mapping)(_main_logits(net(x)), y), PATCHED_MODEL[F64])


@pytest.mark.parametrize("layout", VISION)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_training_a_patched_image_classifier_lowers_its_loss(layout, mapping):
    net, x, y = _vision(layout)
    net.train()
    sl.patch(net, loss=mapping)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = float(net.loss(x, target=y))
    for _ in range(15):
        opt.zero_grad()
        net.loss(x, target=y).backward()
        opt.step()
    assert float(net.loss(x, target=y)) < first


# -------------------------------------------------------------- Hugging Face models
transformers = pytest.importorskip(
    "transformers", reason="pip install 'softmaxlab[transformers]' for the HF tests")

V = 61


def _causal(name: str):
    t = transformers
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = t.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=V, n_positions=32,
                           bos_token_id=0, eos_token_id=0)
        return t.GPT2LMHeadModel(cfg).double().eval()
    if name == "llama":
        cfg = t.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                            max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
        return t.LlamaForCausalLM(cfg).double().eval()
    cfg = t.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                        max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
    return t.Qwen2ForCausalLM(cfg).double().eval()


CAUSAL = ["gpt2", "llama", "qwen2"]


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (3, 9), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt that is not scored
    return ids, labels


def _shifted_loss(logits, labels, mapping):
    t = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return L.natural_loss(mapping)(logits.reshape(-1, V), t.reshape(-1))


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_causal_lm_softmax_fused_loss_equals_the_model_loss_and_gradients(family, dtype):
    """float32: the model's own loss; float64: its logits through torch's cross-entropy
    (transformers' loss rounds float64 logits to float32)."""
    model = _causal(family).to(dtype)
    ids, labels = _batch()
    if dtype == F32:
        ref = model(ids, labels=labels).loss
    else:
        t = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        ref = torch.nn.functional.cross_entropy(model(ids).logits.reshape(-1, V), t.reshape(-1))
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    sl.patch(model, loss="softmax")
    out = model(ids, labels=labels)
    assert out.logits is None  # the fused loss never built them
    assert_close(out.loss, ref, PATCHED_MODEL[dtype])
    out.loss.backward()
    got = _grads(model)
    assert got.keys() == ref_grads.keys()
    for n in got:
        assert_close(got[n], ref_grads[n], PATCHED_MODEL[dtype], n)


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("mapping", MAPPINGS[1:])
def test_causal_lm_other_mappings_equal_logits_through_the_library_loss(family, mapping):
    model = _causal(family)
    ids, labels = _batch()
    logits = model(ids).logits
    expected = _shifted_loss(logits, labels, mapping)
    expected.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    sl.patch(model, loss=mapping)
    got = model(ids, labels=labels).loss
    assert_close(got, expected, PATCHED_MODEL[F64])
    got.backward()
    _assert_same_grads(_grads(model), ref_grads)


@pytest.mark.parametrize("family", CAUSAL)
def test_unpatch_restores_the_causal_lm_bit_for_bit(family):
    model = _causal(family)
    ids, labels = _batch()
    before = model(ids, labels=labels)
    sl.patch(model, loss="sigsoftmax", output="entmax15")
    model(ids, labels=labels)
    sl.unpatch(model)
    after = model(ids, labels=labels)
    assert torch.equal(before.loss, after.loss) and torch.equal(before.logits, after.logits)
    assert "forward" not in vars(model) and "_loss_function" not in vars(model)


def test_logits_on_request_and_the_token_count_of_gradient_accumulation():
    model = _causal("gpt2").float()
    ids, labels = _batch()
    ref = model(ids, labels=labels, num_items_in_batch=torch.tensor(10))
    sl.patch(model, loss="softmax", return_logits=True)
    out = model(ids, labels=labels, num_items_in_batch=torch.tensor(10))
    assert_close(out.logits, ref.logits, PATCHED_MODEL[F32])
    assert_close(out.loss, ref.loss, PATCHED_MODEL[F32])
    assert isinstance(model(ids, labels=labels, return_dict=False), tuple)


@pytest.mark.parametrize("family", CAUSAL)
def test_generate_still_works_on_a_patched_causal_lm(family):
    model = _causal(family)
    prompt = torch.tensor([[5, 7, 11]])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    before = model.generate(prompt, **kwargs)
    sl.patch(model, loss="sparsemax", output="sparsemax")
    assert torch.equal(model.generate(prompt, **kwargs), before)
    assert model.predict(prompt).shape == (1, 3)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_training_a_patched_causal_lm_lowers_its_loss(mapping):
    model = _causal("llama").train()
    ids, labels = _batch()
    sl.patch(model, loss=mapping)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model(ids, labels=labels).loss)
    for _ in range(8):
        opt.zero_grad()
        model(ids, labels=labels).loss.backward()
        opt.step()
    assert float(model(ids, labels=labels).loss) < first


def test_a_model_that_transforms_its_logits_is_refused_for_the_fused_loss():
    model = _causal("gpt2")
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        sl.patch(model, loss="softmax")
    sl.patch(model, loss="sparsemax")  # a Fenchel-Young loss reads the logits themselves
    sl.unpatch(model)


def _bert(num_labels=3, problem_type=None):
    t = transformers
    torch.manual_seed(0)
    cfg = t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, vocab_size=V, num_labels=num_labels,
                       problem_type=problem_type)
    return t.BertForSequenceClassification(cfg).double().eval()


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_bert_sequence_classification_loss(mapping):
    model = _bert()
    ids, y = torch.randint(1, V, (4, 7)), torch.tensor([0, 2, 1, 2])
    ref = model(ids, labels=y)
    logits = ref.logits
    expected = ref.loss if mapping == "softmax" else L.natural_loss(mapping)(logits, y)
    sl.patch(model, loss=mapping, output=mapping)
    out = model(ids, labels=y)
    assert_close(out.loss, expected, PATCHED_MODEL[F64])
    assert out.to_tuple()[0] is out.loss  # the loss comes first, as transformers puts it
    assert_close(model.probs(ids).sum(-1), torch.ones(4, dtype=F64), PATCHED_MODEL[F64])


def test_bert_regression_keeps_the_model_loss():
    model = _bert(num_labels=1)
    ids, y = torch.randint(1, V, (4, 7)), torch.randn(4, dtype=F64)
    ref = model(ids, labels=y).loss
    with sl.patched(model, loss="sparsemax"):
        assert torch.equal(model(ids, labels=y).loss, ref)


@pytest.mark.parametrize("family", CAUSAL)
def test_attention_patch_runs_the_model_through_softmaxlab_and_unpatch_restores_it(family):
    model = _causal(family)
    ids, labels = _batch()
    before = model(ids, labels=labels)
    sl.patch(model, attention="softmax")
    same = model(ids, labels=labels)  # softmax attention: the model's own numbers
    assert model.config._attn_implementation == "softmaxlab"
    assert_close(same.logits, before.logits, PATCHED_MODEL[F64])
    sl.unpatch(model)
    sl.patch(model, attention="entmax15", loss="sparsemax")
    sparse = model(ids, labels=labels)
    assert torch.isfinite(sparse.loss) and not torch.allclose(sparse.logits, before.logits)
    # causal: a later token does not change earlier positions
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % V
    assert_close(model(ids2).logits[:, :-1], model(ids).logits[:, :-1], PATCHED_MODEL[F64])
    sl.unpatch(model)
    after = model(ids, labels=labels)
    assert model.config._attn_implementation == before_impl(family)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)
    assert not hasattr(model.config, "softmaxlab_mapping")


def before_impl(family):
    return _causal(family).config._attn_implementation


def test_the_readme_example_runs_as_written(capsys):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("## Patch a model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([2, 8])"
