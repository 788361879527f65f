"""Gradient checks of whole Modules: every parameter checked separately, by name, in float64."""

import numpy as np

from minilora import backend
from minilora.gradcheck import gradcheck


default_dtype = backend.using_default_dtype  # build parameters in float64 inside the block, for gradchecks


def assert_module_gradcheck(module, loss_fn, *extra, atol=1e-5, rtol=1e-3):
    """Check d loss_fn(*extra) / d p for every parameter p of ``module`` (and every Tensor in ``extra``).

    gradcheck perturbs copies of its inputs, so the copies are swapped into the
    module's parameters for each evaluation and the originals put back.
    """
    names, params = zip(*module.named_parameters())
    originals = [p.data for p in params]
    assert all(a.dtype == np.float64 for a in originals), "build the module inside default_dtype(np.float64)"

    def fn(*values):
        for p, value, original in zip(params, values, originals):
            p.data = original if value is p else value.data
        return loss_fn(*values[len(params):])

    try:
        return gradcheck(fn, *params, *extra, names=list(names) + [f"input {i}" for i in range(len(extra))], atol=atol, rtol=rtol)
    finally:
        for p, original in zip(params, originals):
            p.data = original
