"""Elementwise ops: arithmetic with broadcasting, and the pointwise nonlinearities.

Shapes: inputs broadcast as in NumPy; the output has the broadcast shape. The
autograd engine sums each gradient back to its input's shape (``unbroadcast``),
so the backwards below are written for the broadcast shape.
"""
import math

import numpy as np

from .. import backend
from ..autograd import Function, Tensor


def _as_operand(x):
    """Tensors and Python numbers pass through; arrays and lists become constant Tensors."""
    if isinstance(x, (Tensor, int, float)):
        return x
    return Tensor(x)


def _check_broadcast(op, a, b):
    shape_a, shape_b = np.shape(a), np.shape(b)
    try:
        np.broadcast_shapes(shape_a, shape_b)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {tuple(shape_a)} and {tuple(shape_b)} cannot be broadcast together "
            "(trailing dimensions must be equal or 1). Fix: reshape one input, e.g. add a size-1 axis."
        ) from None


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("add", a, b)
        return a + b

    @staticmethod
    def backward(ctx, grad):  # y = a + b  =>  da = dy, db = dy
        return grad, grad


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("sub", a, b)
        return a - b

    @staticmethod
    def backward(ctx, grad):  # y = a - b  =>  da = dy, db = -dy
        return grad, -grad


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("mul", a, b)
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, grad):  # y = a * b  =>  da = b dy, db = a dy
        da = grad * ctx.b if ctx.needs_input_grad[0] else None
        db = grad * ctx.a if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("div", a, b)
        ctx.a, ctx.b = a, b
        return a / b

    @staticmethod
    def backward(ctx, grad):  # y = a / b  =>  da = dy / b, db = -dy a / b^2
        da = grad / ctx.b if ctx.needs_input_grad[0] else None
        db = -grad * ctx.a / (ctx.b * ctx.b) if ctx.needs_input_grad[1] else None
        return da, db


class Neg(Function):
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, grad):  # y = -x  =>  dx = -dy
        return -grad


class Pow(Function):
    @staticmethod
    def forward(ctx, x, exponent):
        ctx.x, ctx.exponent = x, exponent
        return x ** exponent

    @staticmethod
    def backward(ctx, grad):  # y = x^p  =>  dx = p x^(p-1) dy
        return grad * ctx.exponent * ctx.x ** (ctx.exponent - 1), None


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).exp(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, grad):  # y = e^x  =>  dx = y dy
        return grad * ctx.y


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return backend.array_module(x).log(x)

    @staticmethod
    def backward(ctx, grad):  # y = ln x  =>  dx = dy / x
        return grad / ctx.x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).sqrt(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, grad):  # y = sqrt(x)  =>  dx = dy / (2 y)
        return grad / (2 * ctx.y)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).tanh(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, grad):  # y = tanh x  =>  dx = (1 - y^2) dy
        return grad * (1 - ctx.y * ctx.y)


def _sigmoid(x):
    xp = backend.array_module(x)
    # 1/(1+e^-x) overflows for large negative x; the tanh form is stable everywhere.
    return 0.5 * (1 + xp.tanh(0.5 * x))


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        y = _sigmoid(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, grad):  # y = 1/(1+e^-x)  =>  dx = y (1 - y) dy
        return grad * ctx.y * (1 - ctx.y)


class ReLU(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.positive = x > 0
        return x * ctx.positive

    @staticmethod
    def backward(ctx, grad):  # y = max(x, 0)  =>  dx = [x > 0] dy
        return grad * ctx.positive


class SiLU(Function):
    @staticmethod
    def forward(ctx, x):
        s = _sigmoid(x)
        ctx.x, ctx.s = x, s
        return x * s

    @staticmethod
    def backward(ctx, grad):  # y = x s(x)  =>  dx = s (1 + x (1 - s)) dy
        s = ctx.s
        return grad * s * (1 + ctx.x * (1 - s))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GeluTanh(Function):
    """GPT-2's gelu: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).

    Both passes work in place on one or two buffers: on a CPU every fresh
    temporary of this size (B*T*4C floats) costs page faults, and a chain of
    them made this op slower than all of the MLP's matmuls.
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.array_module(x)
        t = x * x
        t *= 0.044715
        t += 1
        t *= x
        t *= _SQRT_2_OVER_PI  # u = sqrt(2/pi) x (1 + 0.044715 x^2)
        xp.tanh(t, out=t)  # t = tanh(u)
        ctx.x, ctx.t = x, t
        y = t + 1
        y *= x
        y *= 0.5  # y = 0.5 x (1 + t)
        return y

    @staticmethod
    def backward(ctx, grad):
        # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        xp = backend.array_module(grad)
        x, t = ctx.x, ctx.t
        du = x * x
        du *= 3 * 0.044715 * _SQRT_2_OVER_PI
        du += _SQRT_2_OVER_PI  # du/dx
        dx = t * t
        xp.subtract(1, dx, out=dx)  # 1 - t^2
        dx *= x
        dx *= du
        dx += 1
        dx += t
        dx *= 0.5  # dy/dx = 0.5 (1 + t + x (1 - t^2) du/dx)
        dx *= grad
        return dx


def erf(x):
    """The error function, Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7.

    That is float32's resolution near 1, so a float32 model cannot tell it from
    the exact erf; float64 comparisons with PyTorch use atol 1e-6 for it.
    """
    xp = backend.array_module(x)
    sign = xp.sign(x)
    a = xp.abs(x)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1 - poly * xp.exp(-a * a))


class GeluErf(Function):
    """BERT's exact gelu: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))

    @staticmethod
    def backward(ctx, grad):  # y = x Phi(x)  =>  dx = (Phi(x) + x phi(x)) dy, phi the normal density
        x = ctx.x
        xp = backend.array_module(x)
        cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return grad * (cdf + x * pdf)


def add(a, b):
    return Add.apply(_as_operand(a), _as_operand(b))


def sub(a, b):
    return Sub.apply(_as_operand(a), _as_operand(b))


def mul(a, b):
    return Mul.apply(_as_operand(a), _as_operand(b))


def div(a, b):
    return Div.apply(_as_operand(a), _as_operand(b))


def neg(x):
    return Neg.apply(x)


def pow(x, exponent):
    """x ** exponent for a Python-number exponent."""
    if not isinstance(exponent, (int, float)):
        raise TypeError(
            f"pow: the exponent must be a Python number, got {type(exponent).__name__}. "
            "Fix: write exp(b * log(a)) for a tensor exponent."
        )
    return Pow.apply(x, exponent)


def exp(x):
    return Exp.apply(x)


def log(x):
    return Log.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def tanh(x):
    return Tanh.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def relu(x):
    return ReLU.apply(x)


def silu(x):
    return SiLU.apply(x)


def gelu(x, approximate="none"):
    """gelu as in torch: approximate="tanh" is GPT-2's form, "none" the exact erf form (BERT's)."""
    if approximate == "tanh":
        return backend.fused_or_reference(GeluTanh, x.data).apply(x)
    if approximate == "none":
        return GeluErf.apply(x)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
