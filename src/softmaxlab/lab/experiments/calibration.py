"""Guo et al. 2017 (arXiv 1706.04599), "On calibration of modern neural networks":
temperature scaling, one scalar fitted on held-out data, cuts the expected calibration error
(15 bins) of an over-confident network, e.g. CIFAR-100 ResNet-110 16.53 % -> 1.26 %."""

from __future__ import annotations

from . import Check, Experiment, register

_SETUP = {
    "smoke": dict(dataset="digits", seeds=2, epochs=20, model="mlp"),
    "small": dict(dataset="fashion-mnist", limit=10_000, seeds=5, epochs=30, model="mlp"),
    "full": dict(dataset="fashion-mnist", seeds=10, epochs=60, model="cnn"),
}

register(Experiment(
    name="temperature-scaling",
    paper="Guo et al. 2017 (arXiv 1706.04599)",
    claim="temperature scaling lowers the expected calibration error of an over-confident "
          "softmax network (CIFAR-100 ResNet-110: 16.53 % -> 1.26 %)",
    checks=(Check("softmax", "softmax", "ece_pct", higher=False, paper="1.26 % vs 16.53 %",
                  better_metric="ece_ts_pct"),),
    setup=lambda scale: dict(mappings="softmax", **_SETUP[scale]),
    differences=lambda scale: (
        f"{_SETUP[scale]['model'].upper()} on {_SETUP[scale]['dataset']} "
        f"({_SETUP[scale].get('limit') or 'all'} training rows) trained "
        f"{_SETUP[scale]['epochs']} epochs to over-fit, {_SETUP[scale]['seeds']} seeds; the "
        "temperature is fitted on the validation split and ECE measured there (the paper: "
        "ResNet-110 on CIFAR-100, fitted on validation, measured on test)"),
    tags=("calibration",),
))
