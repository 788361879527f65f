"""GPT-2's tanh gelu as two elementwise kernels: x (...) -> y (...).

The reference makes about ten passes over x (each NumPy operator is one); a
kernel reads x once and writes y once. The backward recomputes tanh(u) from x,
so only x is kept.
"""
import functools

from ..functional.elementwise import GeluTanh
from ._cuda import fusable

# u = sqrt(2/pi) (x + 0.044715 x^3)
_U = "const T u = (T)0.7978845608028654 * (x + (T)0.044715 * x * x * x);"


@functools.lru_cache(maxsize=None)
def _kernels():
    import cupy

    forward = cupy.ElementwiseKernel(
        "T x", "T y", _U + "y = (T)0.5 * x * (1 + tanh(u));", "minilora_gelu_tanh_forward")
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  t = tanh(u),  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    backward = cupy.ElementwiseKernel(
        "T x, T dy", "T dx",
        _U + """
        const T t = tanh(u);
        const T du_dx = (T)0.7978845608028654 * (1 + (T)(3 * 0.044715) * x * x);
        dx = dy * ((T)0.5 * (1 + t) + (T)0.5 * x * (1 - t * t) * du_dx);
        """,
        "minilora_gelu_tanh_backward")
    return forward, backward


class FusedGeluTanh(GeluTanh):
    """GeluTanh in one kernel each way; other dtypes take the reference path."""

    @staticmethod
    def forward(ctx, x):
        ctx.fused = fusable(x)
        if not ctx.fused:
            return GeluTanh.forward(ctx, x)
        ctx.x = x
        return _kernels()[0](x)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return GeluTanh.backward(ctx, grad)
        return _kernels()[1](ctx.x, grad.astype(ctx.x.dtype, copy=False))
