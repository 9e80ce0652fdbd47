"""Steps: what each mode times."""

from __future__ import annotations

import pytest
import torch

from softmaxlab.bench import timing


class _Counting:
    def __init__(self):
        self.forwards = 0

    def __call__(self, x):
        self.forwards += 1
        return x.exp()


def test_backward_mode_times_the_backward_alone_and_forward_mode_builds_no_graph():
    x = torch.randn(4, 3, requires_grad=True)
    fn = _Counting()
    inputs = timing.Inputs((x,), (x,), torch.ones(4, 3))
    bwd = timing.AutogradStep(fn, inputs, "backward")
    bwd.before()
    assert fn.forwards == 1
    (dx,) = bwd.call()
    assert fn.forwards == 1  # the timed call ran no forward
    assert torch.allclose(dx, x.exp())
    bwd.after()
    both = timing.AutogradStep(fn, inputs, "both")
    _y, (dx,) = both.call()
    assert fn.forwards == 2 and torch.allclose(dx, x.exp())
    fwd = timing.AutogradStep(fn, inputs, "forward")
    assert fwd.call().grad_fn is None
    with pytest.raises(ValueError, match="mode must be one of forward, backward, both"):
        timing.AutogradStep(fn, inputs, "sideways")
