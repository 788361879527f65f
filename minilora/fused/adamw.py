"""AdamW's update as one elementwise kernel: p, m, v (any shape) updated in place from the gradient g.

The reference (minilora.optim.adamw_update) is eleven array operations, so
eleven kernel launches per parameter; for GPT-2's 148 parameter arrays that
is 1,600 launches a step, whose launch cost the host pays one by one.
"""
import functools
import math

from .. import backend
from ..optim import adamw_update


@functools.lru_cache(maxsize=None)
def _kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "T g, T decay, T beta1, T beta2, T step_size, T bias2_sqrt, T eps", "T p, T m, T v",
        """
        p *= decay;                                             // p = p - lr wd p
        m = beta1 * m + (1 - beta1) * g;                        // first moment
        v = beta2 * v + (1 - beta2) * (g * g);                  // second moment
        p -= step_size * (m / (sqrt(v) / bias2_sqrt + eps));    // p = p - lr m_hat / (sqrt(v_hat) + eps)
        """,
        "minilora_adamw_update")


def fused_adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """minilora.optim.adamw_update in one kernel, for CuPy arrays of float32 or float64 (16-bit weights: the reference)."""
    if p.dtype.itemsize == 2:
        return adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)
    decay, step_size, bias2_sqrt = 1 - lr * weight_decay, lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t)
    dtype = p.dtype.type
    g = backend.array_module(p).asarray(g, dtype=p.dtype)
    _kernel()(g, dtype(decay), dtype(beta1), dtype(beta2), dtype(step_size), dtype(bias2_sqrt), dtype(eps), p, m, v)
