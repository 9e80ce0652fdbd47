"""The ``patch`` suite: what :func:`softmaxlab.patch` saves and costs in a real model's
training step, on CPU.

* ``gpt2_step(...)``: one training step (forward with ``labels``, then the gradients of
  every parameter; no optimizer update) of a Hugging Face GPT-2 with random weights,
  ``shape = (B, L, d, layers, V)`` = (2, 256, 256, 4, 50257): issue 12's model (d=256,
  4 layers, V=50257) at batch 2 and sequence 256 instead of 8 and 512, sized to a 2-core
  CPU; ``--quick``: (1, 32, 32, 2, 512). 4 heads, dropout 0 (so that the losses of the
  patched and the unpatched model compare), labels = the input ids (transformers shifts
  them). Three cases, each against the unpatched model measured in the same run:

  - ``loss=softmax``: the fused :func:`~softmaxlab.losses.linear_cross_entropy` against
    the tied output embeddings: no ``(B L, V)`` logits (issue 12's targets: peak memory
    <= 0.5x, time <= 1.05x the unpatched step);
  - ``loss=sparsemax``: the Fenchel-Young loss of the logits;
  - ``attention=entmax15``: every attention layer through
    :func:`softmaxlab.attention.scaled_dot_product_attention` with entmax15 (the model's
    own loss).

* ``linear_cross_entropy`` at the GPT-2 head's shape ``(B L, d, V)``: softmaxlab against
  ``F.cross_entropy`` of the logits and torch's own ``F.linear_cross_entropy`` (reference,
  default chunked options, a fixed chunk), forward + backward.

The GPT-2 cases need transformers (``pip install softmaxlab[transformers]``); without it
the suite has the linear case only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..baselines import (
    LOGITS_CROSS_ENTROPY,
    linear_candidate,
    patch_impls,
    torch_linear_impls,
)
from ..records import Case, Impl, LinearCase, Target
from ..timing import Inputs

#: Attention heads of the benchmarked GPT-2.
HEADS = 4


@dataclass(frozen=True)
class GPT2StepCase(Case):
    """A training step of ``transformers.GPT2LMHeadModel`` with ``shape = (B, L, d,
    layers, V)``: the implementation gets ``(model, ids)`` and returns the loss, whose
    gradients with respect to every parameter are taken."""

    io: str = ("compute-bound: forward 2 N (12 layers d^2 + V d) FLOPs for the GEMMs and "
               "4 N L d layers for the attention at full length (N = B L tokens), backward "
               "twice the forward; reported as GFLOP/s, no byte count")
    modes: tuple[str, ...] = ("both",)

    def make(self) -> Inputs:
        import transformers

        b, n, d, layers, v = self.shape
        cfg = transformers.GPT2Config(n_embd=d, n_layer=layers, n_head=HEADS, vocab_size=v,
                                      n_positions=n, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        g = self.generator()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(g.initial_seed())
            model = transformers.GPT2LMHeadModel(cfg).to(self.dtype).train()
        ids = torch.randint(0, v, (b, n), generator=g, device=self.device)
        return Inputs((model.to(self.device), ids), tuple(model.parameters()), None)

    def flops(self, mode: str) -> int:
        b, n, d, layers, v = self.shape
        tokens = b * n
        forward = 2 * tokens * (12 * layers * d * d + v * d) + 4 * tokens * n * d * layers
        return {"forward": 1, "backward": 2, "both": 3}[mode] * forward


def patch_suite(quick: bool) -> list[Case]:
    shape = (1, 32, 32, 2, 512) if quick else (2, 256, 256, 4, 50257)
    b, n, d, _, v = shape
    out: list[Case] = []
    if importlib.util.find_spec("transformers") is not None:
        src = "issue 12: patched softmax step"
        softmax_targets = (
            Target("memory", 0.5, "unpatched", ("both",), f"{src} memory <= 0.5x unpatched"),
            Target("time", 1.05, "unpatched", ("both",), f"{src} time <= 1.05x unpatched"),
        )
        for op, patch, targets in (("gpt2_step(loss=softmax)", {"loss": "softmax"},
                                    softmax_targets),
                                   ("gpt2_step(loss=sparsemax)", {"loss": "sparsemax"}, ()),
                                   ("gpt2_step(attention=entmax15)", {"attention": "entmax15"},
                                    ())):
            out.append(GPT2StepCase("patch", op, shape, torch.float32, "cpu", patch_impls(**patch),
                                    targets))
    linear = (Impl("softmaxlab", linear_candidate, role="candidate"), LOGITS_CROSS_ENTROPY,
              *torch_linear_impls())
    out.append(LinearCase("patch", "linear_cross_entropy", (b * n, d, v), torch.float32, "cpu",
                          linear, modes=("both",)))
    return out
