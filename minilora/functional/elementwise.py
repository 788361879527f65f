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
    """y = a + b. Inputs: a, b (broadcastable). Output: y (the broadcast shape). ctx keeps: nothing.
    Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, dy):  # y = a + b  =>  da = dy, db = dy
        # BEGIN SOLUTION 5 "Add, Sub and Neg backward"
        return dy, dy
        # END SOLUTION 5


class Sub(Function):
    """y = a - b. Inputs: a, b (broadcastable). Output: y (the broadcast shape). ctx keeps: nothing.
    Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, dy):  # y = a - b  =>  da = dy, db = -dy
        # BEGIN SOLUTION 5 "Add, Sub and Neg backward"
        return dy, -dy
        # END SOLUTION 5


class Mul(Function):
    """y = a b, elementwise. Inputs: a, b (broadcastable). Output: y (the broadcast shape). ctx keeps: a, b.
    Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, dy):  # y = a b  =>  da = b dy, db = a dy
        # BEGIN SOLUTION 6 "Mul and Div backward"
        da = dy * ctx.b if ctx.needs_input_grad[0] else None
        db = dy * ctx.a if ctx.needs_input_grad[1] else None
        return da, db
        # END SOLUTION 6


class Div(Function):
    """y = a / b. Inputs: a, b (broadcastable). Output: y (the broadcast shape). ctx keeps: a, b.
    Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a / b

    @staticmethod
    def backward(ctx, dy):  # y = a / b  =>  da = dy / b, db = -a dy / b^2
        # BEGIN SOLUTION 6 "Mul and Div backward"
        da = dy / ctx.b if ctx.needs_input_grad[0] else None
        db = -ctx.a * dy / (ctx.b * ctx.b) if ctx.needs_input_grad[1] else None
        return da, db
        # END SOLUTION 6


class Neg(Function):
    """y = -x. Input: x (...). Output: y (...). ctx keeps: nothing. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dy):  # y = -x  =>  dx = -dy
        # BEGIN SOLUTION 5 "Add, Sub and Neg backward"
        return -dy
        # END SOLUTION 5


class Pow(Function):
    """y = x^p for a Python number p. Input: x (...). Output: y (...). ctx keeps: x, p.
    Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x, exponent):
        ctx.x, ctx.exponent = x, exponent
        return x ** exponent

    @staticmethod
    def backward(ctx, dy):  # y = x^p  =>  dx = p x^(p-1) dy
        if ctx.exponent == 0:  # y = 1 is a constant, so dx = 0, also at x = 0 where p x^(p-1) would be 0 * inf
            return backend.array_module(dy).zeros_like(dy), None
        return ctx.exponent * ctx.x ** (ctx.exponent - 1) * dy, None


class Exp(Function):
    """y = e^x. Input: x (...). Output: y (...). ctx keeps: y. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).exp(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, dy):  # y = e^x  =>  dx = y dy
        # BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"
        return ctx.y * dy
        # END SOLUTION 7


class Log(Function):
    """y = ln x. Input: x (...), positive. Output: y (...). ctx keeps: x. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return backend.array_module(x).log(x)

    @staticmethod
    def backward(ctx, dy):  # y = ln x  =>  dx = dy / x
        # BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"
        return dy / ctx.x
        # END SOLUTION 7


class Sqrt(Function):
    """y = sqrt(x). Input: x (...), positive. Output: y (...). ctx keeps: y. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).sqrt(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, dy):  # y = sqrt(x)  =>  dx = dy / (2 y)
        return dy / (2 * ctx.y)


class Tanh(Function):
    """y = tanh x. Input: x (...). Output: y (...). ctx keeps: y. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        y = backend.array_module(x).tanh(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, dy):  # y = tanh x  =>  dx = (1 - y^2) dy
        # BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"
        return (1 - ctx.y * ctx.y) * dy
        # END SOLUTION 7


def _sigmoid(x):
    xp = backend.array_module(x)
    # 1/(1+e^-x) overflows for large negative x; the tanh form is stable everywhere.
    return 0.5 * (1 + xp.tanh(0.5 * x))


class Sigmoid(Function):
    """y = s(x) = 1 / (1 + e^-x). Input: x (...). Output: y (...). ctx keeps: y. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        y = _sigmoid(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, dy):  # y = s(x)  =>  dx = y (1 - y) dy
        # BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"
        return ctx.y * (1 - ctx.y) * dy
        # END SOLUTION 7


class ReLU(Function):
    """y = max(x, 0). Input: x (...). Output: y (...). ctx keeps: the mask x > 0. Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        ctx.positive = x > 0
        return x * ctx.positive

    @staticmethod
    def backward(ctx, dy):  # y = max(x, 0)  =>  dx = [x > 0] dy
        return ctx.positive * dy


class SiLU(Function):
    """y = x s(x), s the sigmoid. Input: x (...). Output: y (...). ctx keeps: x, s = s(x). Backward: docs/derivations.md#elementwise-functionalelementwisepy"""

    @staticmethod
    def forward(ctx, x):
        s = _sigmoid(x)
        ctx.x, ctx.s = x, s
        return x * s

    @staticmethod
    def backward(ctx, dy):  # y = x s  =>  dx = (s + x s (1 - s)) dy = s (1 + x (1 - s)) dy
        s = ctx.s
        return s * (1 + ctx.x * (1 - s)) * dy


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GeluTanh(Function):
    """GPT-2's gelu: y = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3).

    Input: x (...). Output: y (...). ctx keeps: x, t (...).
    Backward: docs/derivations.md#elementwise-functionalelementwisepy
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.array_module(x)
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        t = xp.tanh(u)
        ctx.x, ctx.t = x, t
        return 0.5 * x * (1 + t)

    @staticmethod
    def backward(ctx, dy):  # dx = (0.5 (1 + t) + 0.5 x (1 - t^2) du/dx) dy
        x, t = ctx.x, ctx.t
        du_dx = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du_dx) * dy


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
    """BERT's exact gelu: y = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), Phi the normal distribution function.

    Input: x (...). Output: y (...). ctx keeps: x. Backward: docs/derivations.md#elementwise-functionalelementwisepy
    """

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))

    @staticmethod
    def backward(ctx, dy):  # y = x Phi(x)  =>  dx = (Phi(x) + x phi(x)) dy, phi the normal density
        x = ctx.x
        xp = backend.array_module(x)
        cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return (cdf + x * pdf) * dy


def add(a, b):
    a, b = _as_operand(a), _as_operand(b)
    _check_broadcast("add", a, b)
    return Add.apply(a, b)


def sub(a, b):
    a, b = _as_operand(a), _as_operand(b)
    _check_broadcast("sub", a, b)
    return Sub.apply(a, b)


def mul(a, b):
    a, b = _as_operand(a), _as_operand(b)
    _check_broadcast("mul", a, b)
    return Mul.apply(a, b)


def div(a, b):
    a, b = _as_operand(a), _as_operand(b)
    _check_broadcast("div", a, b)
    return Div.apply(a, b)


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
        return GeluTanh.apply(x)
    if approximate == "none":
        return GeluErf.apply(x)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
