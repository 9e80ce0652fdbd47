"""Kanai et al. 2018 (arXiv 1805.10829), "Sigsoftmax: reanalysis of the softmax
bottleneck": sigsoftmax, exp(z) sigmoid(z) normalized, gives a lower perplexity than softmax
on PTB and WikiText-2 with AWD-LSTM (numbers not recorded in our sources)."""

from __future__ import annotations

from . import Check, Experiment, register

_SETUP = {
    "smoke": dict(dataset="ptb", limit=20_000, seeds=2, epochs=1),
    "small": dict(dataset="ptb", limit=100_000, seeds=3, epochs=2),
    "full": dict(dataset="ptb", seeds=5, epochs=20),
}

register(Experiment(
    name="sigsoftmax-ptb",
    paper="Kanai et al. 2018 (arXiv 1805.10829)",
    claim="sigsoftmax has a lower language-model perplexity than softmax (PTB, AWD-LSTM)",
    checks=(Check("sigsoftmax", "softmax", "perplexity", higher=False,
                  paper="lower (the number is not in our sources)"),),
    setup=lambda scale: dict(mappings="softmax,sigsoftmax", model="lstm", **_SETUP[scale]),
    differences=lambda scale: (
        f"a 1-layer LSTM, {_SETUP[scale].get('limit') or 'all'} training tokens, "
        f"{_SETUP[scale]['epochs']} epochs, {_SETUP[scale]['seeds']} seeds, validation "
        "perplexity; the paper used a 3-layer AWD-LSTM with its regularizers, trained to "
        "convergence"),
    tags=("accuracy", "many classes"),
))
