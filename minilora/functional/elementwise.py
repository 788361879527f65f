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
        if ctx.exponent == 0:  # y = 1 is a constant, so dx = 0, also at x = 0 where p x^(p-1) would be 0 * inf
            return backend.array_module(grad).zeros_like(grad), None
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


# W. J. Cody, "Rational Chebyshev approximations for the error function",
# Mathematics of Computation 23 (1969) 631-637; the coefficients are those of
# his Fortran routine CALERF (netlib.org/specfun/erf). Each range has its own
# ratio of polynomials, accurate to float64's precision:
#   |x| <= 0.46875:  erf(x)  = x P1(x^2) / Q1(x^2)
#   0.46875 < y <= 4: erfc(y) = e^(-y^2) P2(y) / Q2(y)
#   y > 4:            erfc(y) = e^(-y^2) / y (1/sqrt(pi) - z P3(z) / Q3(z)), z = 1/y^2
# Coefficients are listed from the constant term up.
_ERF_P1 = (3.20937758913846947e03, 3.77485237685302021e02, 1.13864154151050156e02, 3.16112374387056560e00,
           1.85777706184603153e-1)
_ERF_Q1 = (2.84423683343917062e03, 1.28261652607737228e03, 2.44024637934444173e02, 2.36012909523441209e01, 1.0)
_ERFC_P2 = (1.23033935479799725e03, 2.05107837782607147e03, 1.71204761263407058e03, 8.81952221241769090e02,
            2.98635138197400131e02, 6.61191906371416295e01, 8.88314979438837594e00, 5.64188496988670089e-1,
            2.15311535474403846e-8)
_ERFC_Q2 = (1.23033935480374942e03, 3.43936767414372164e03, 4.36261909014324716e03, 3.29079923573345963e03,
            1.62138957456669019e03, 5.37181101862009858e02, 1.17693950891312499e02, 1.57449261107098347e01, 1.0)
_ERFC_P3 = (6.58749161529837803e-4, 1.60837851487422766e-2, 1.25781726111229246e-1, 3.60344899949804439e-1,
            3.05326634961232344e-1, 1.63153871373020978e-2)
_ERFC_Q3 = (2.33520497626869185e-3, 6.05183413124413191e-2, 5.27905102951428412e-1, 1.87295284992346047e00,
            2.56852019228982242e00, 1.0)
_ERF_SMALL, _ERF_MIDDLE = 0.46875, 4.0


def _polynomial(coefficients, x):
    """c0 + c1 x + c2 x^2 + ..., by Horner's rule."""
    result = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        result = result * x + c
    return result


def erf(x):
    """The error function erf(x) = 2/sqrt(pi) * integral of e^(-t^2) from 0 to x, on an array of either backend.

    W. J. Cody's rational approximations (see above): float64 precision, float32
    inputs stay float32. Every range is evaluated on the whole array with its
    input clipped into that range (no warnings, no data-dependent indexing that
    would make a GPU wait), then ``where`` picks each element's range.
    """
    xp = backend.array_module(x)
    y = xp.abs(x)
    small = xp.minimum(y, _ERF_SMALL)
    erf_small = small * _polynomial(_ERF_P1, small * small) / _polynomial(_ERF_Q1, small * small)
    middle = xp.clip(y, _ERF_SMALL, _ERF_MIDDLE)
    erfc_middle = xp.exp(-middle * middle) * _polynomial(_ERFC_P2, middle) / _polynomial(_ERFC_Q2, middle)
    large = xp.clip(y, _ERF_MIDDLE, 27.0)  # erfc(27) < 1e-318: past it erf is 1 to the last bit (and y^2 cannot overflow)
    z = 1 / (large * large)
    asymptotic = 1 / math.sqrt(math.pi) - z * _polynomial(_ERFC_P3, z) / _polynomial(_ERFC_Q3, z)
    erfc_large = xp.exp(-large * large) / large * asymptotic
    erfc = xp.where(y <= _ERF_MIDDLE, erfc_middle, erfc_large)
    return xp.sign(x) * xp.where(y <= _ERF_SMALL, erf_small, 1 - erfc)


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
