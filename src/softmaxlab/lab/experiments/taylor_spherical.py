"""de Brébisson & Vincent 2016 (arXiv 1511.05042), "An exploration of softmax alternatives
belonging to the spherical loss family": log-Taylor and log-spherical softmax against
log-softmax; Taylor and spherical win with few classes (MNIST error 0.812 % softmax,
0.785 % Taylor, 0.828 % spherical) and lose with many (PTB perplexity 126.7 / 147.2 /
149.2)."""

from __future__ import annotations

from . import Check, Experiment, register

PAPER = "de Brébisson & Vincent 2016 (arXiv 1511.05042)"
MAPPINGS = "softmax,taylor_softmax,spherical_softmax"

_MNIST = {
    "smoke": dict(dataset="digits", seeds=2, epochs=3),
    "small": dict(dataset="mnist", limit=10_000, seeds=5, epochs=8),
    "full": dict(dataset="mnist", seeds=10, epochs=30),
}

register(Experiment(
    name="taylor-spherical-mnist",
    paper=PAPER,
    claim="with few classes (MNIST, 10) Taylor softmax has a lower test error than softmax "
          "(0.785 % vs 0.812 %); spherical softmax is close behind (0.828 %)",
    checks=(Check("taylor_softmax", "softmax", "error_pct", higher=False,
                  paper="0.785 % vs 0.812 %"),),
    setup=lambda scale: dict(mappings=MAPPINGS, model="mlp", **_MNIST[scale]),
    differences=lambda scale: (
        "a 2-layer MLP trained a few epochs with Adam, validation-set error "
        f"({_MNIST[scale]['dataset']}, {_MNIST[scale].get('limit') or 'all'} training rows, "
        f"{_MNIST[scale]['epochs']} epochs, {_MNIST[scale]['seeds']} seeds); the paper tuned "
        "a deeper MLP per loss to convergence and reports test error"
        + ("; smoke scale uses the 8x8 digits that ship with scikit-learn" if scale == "smoke"
           else "")),
    tags=("accuracy", "few classes"),
))

_PTB = {
    "smoke": dict(dataset="ptb", limit=20_000, seeds=2, epochs=1),
    "small": dict(dataset="ptb", limit=100_000, seeds=3, epochs=2),
    "full": dict(dataset="ptb", seeds=5, epochs=20),
}

register(Experiment(
    name="taylor-spherical-ptb",
    paper=PAPER,
    claim="with many classes (PTB, 10k words) softmax has a lower perplexity than Taylor "
          "(126.7 vs 147.2) and spherical softmax (149.2)",
    checks=(Check("softmax", "taylor_softmax", "perplexity", higher=False,
                  paper="126.7 vs 147.2"),
            Check("softmax", "spherical_softmax", "perplexity", higher=False,
                  paper="126.7 vs 149.2")),
    setup=lambda scale: dict(mappings=MAPPINGS, model="lstm", **_PTB[scale]),
    differences=lambda scale: (
        f"a 1-layer LSTM language model, {_PTB[scale].get('limit') or 'all'} training tokens, "
        f"{_PTB[scale]['epochs']} epochs, {_PTB[scale]['seeds']} seeds, validation perplexity; "
        "the paper trained a larger model to convergence"),
    tags=("accuracy", "many classes"),
))
