"""Numerical gradient checking: central differences in float64 against the hand-written backward.

For a function f of tensors, pick a fixed random upstream gradient v of f's
output shape and look at the scalar L = sum(v * f(x)). Backward gives dL/dx
analytically; central differences give it numerically:

    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)      (error O(eps^2))

The two must agree to |analytic - numeric| <= atol + rtol |numeric| everywhere.
"""
import numpy as np

from . import backend
from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree (or a NaN appeared)."""


def _scalar_objective(fn, inputs, cotangent):
    out = fn(*inputs)
    return float(backend.to_numpy((out.data * cotangent).sum()))


def numerical_gradient(fn, inputs, which, cotangent, eps=1e-6):
    """d sum(cotangent * fn(*inputs)) / d inputs[which], by central differences (a host array)."""
    # BEGIN SOLUTION 4 "Numerical gradient"
    xp = backend.array_module(inputs[which].data)
    base = inputs[which].data.copy()  # contiguous, so the flat view below writes into it
    flat = base.reshape(-1)
    grad = np.zeros(base.size)
    trial = list(inputs)
    with no_grad():
        for i in range(base.size):
            original = flat[i].copy()
            values = []
            for step in (eps, -eps):
                flat[i] = original + step
                trial[which] = Tensor._wrap(xp.array(base))
                values.append(_scalar_objective(fn, trial, cotangent))
            flat[i] = original
            grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad.reshape(base.shape)
    # END SOLUTION 4


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, names=None):
    """Check ``fn``'s backward against central differences for every input with requires_grad.

    fn: a callable taking ``inputs`` and returning a Tensor (any shape).
    inputs: Tensors (float64 where requires_grad) and any other arguments.
    Returns True, or raises GradcheckError naming the input, the worst index,
    both values and the relative error.
    """
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {i} is {inputs[i].dtype}; central differences need float64 "
                "(float32 rounding swamps a step of 1e-6). Fix: Tensor(x, dtype='float64', requires_grad=True)."
            )
        inputs[i].grad = None
    names = names or [f"input {i}" for i in range(len(inputs))]

    out = fn(*inputs)
    values = backend.to_numpy(out.data)
    if not np.all(np.isfinite(values)):
        where = tuple(int(w) for w in np.argwhere(~np.isfinite(values))[0])
        raise GradcheckError(
            f"gradcheck: the function's output is {values[where]} (NaN or inf) at index {where}, "
            "so no gradient can be checked there. Fix: keep inputs inside the op's domain "
            "(e.g. log and sqrt of positive numbers, no division by zero)."
        )
    rng = np.random.default_rng(seed)
    cotangent = backend.asarray(rng.standard_normal(out.shape), dtype=np.float64, like=out.data)
    out.backward(cotangent)

    for i in checked:
        x = inputs[i]
        analytic = np.zeros(x.shape) if x.grad is None else backend.to_numpy(x.grad).astype(np.float64)
        numeric = numerical_gradient(fn, inputs, i, cotangent, eps)
        if not np.all(np.isfinite(numeric)) or not np.all(np.isfinite(analytic)):
            where = tuple(int(w) for w in np.argwhere(~(np.isfinite(numeric) & np.isfinite(analytic)))[0])
            raise GradcheckError(
                f"gradcheck: {names[i]} (shape {x.shape}) met a NaN or inf at index {where}: "
                f"analytic {analytic[where]}, numeric {numeric[where]}. "
                "Fix: keep inputs inside the op's domain (e.g. log of positive numbers)."
            )
        excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if excess.size and excess.max() > 0:
            worst = np.unravel_index(np.argmax(excess), excess.shape)
            a, n = analytic[worst], numeric[worst]
            relative = abs(a - n) / max(abs(a), abs(n), 1e-300)
            raise GradcheckError(
                f"gradcheck: the gradient of {names[i]} (shape {x.shape}) is wrong; worst at index "
                f"{tuple(int(w) for w in worst)}: analytic {a:.6g}, numeric {n:.6g}, relative error "
                f"{relative:.3g} (atol={atol}, rtol={rtol}). Look at the backward step that produces this input's gradient."
            )
    return True
