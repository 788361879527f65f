"""layer_norm and rms_norm over the last axis.

Shapes: x (..., C), weight (C,), bias (C,) -> (..., C).
"""
from .. import backend
from ..autograd import Function


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b, mean and var over the last axis.

    Inputs: x (..., C), weight w (C,) or None, bias b (C,) or None. Output: y (..., C).
    ctx keeps: xhat (..., C), rstd = 1 / sqrt(var + eps) (..., 1), w.
    Backward: docs/derivations.md#normalisation-functionalnormpy
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        xp = backend.array_module(x)
        # 1. statistics over the last axis
        mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (..., 1)
        rstd = 1 / xp.sqrt(var + eps)  # (..., 1)
        # 2. normalise
        xhat = (x - mean) * rstd  # (..., C)
        ctx.xhat, ctx.rstd, ctx.weight = xhat, rstd, weight
        # 3. scale and shift
        y = xhat * weight if weight is not None else xhat
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, dy):
        # BEGIN SOLUTION 15 "LayerNorm backward"
        xhat, rstd, weight = ctx.xhat, ctx.rstd, ctx.weight
        rows = tuple(range(dy.ndim - 1))  # every axis but the last
        # 3. y = xhat w + b  =>  dw = sum dy xhat, db = sum dy, dxhat = dy w
        dweight = (dy * xhat).sum(axis=rows) if ctx.needs_input_grad[1] else None  # (C,)
        dbias = dy.sum(axis=rows) if ctx.needs_input_grad[2] else None  # (C,)
        if not ctx.needs_input_grad[0]:
            return None, dweight, dbias
        dxhat = dy * weight if weight is not None else dy  # (..., C)
        # 2.-1. xhat = (x - mean) rstd  =>  dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, dweight, dbias
        # END SOLUTION 15


class RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis.

    Inputs: x (..., C), weight w (C,) or None. Output: y (..., C).
    ctx keeps: xhat (..., C), rrms = 1 / sqrt(mean(x^2) + eps) (..., 1), w.
    Backward: docs/derivations.md#normalisation-functionalnormpy
    """

    @staticmethod
    def forward(ctx, x, weight, eps=1e-6):
        xp = backend.array_module(x)
        rrms = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        xhat = x * rrms  # (..., C)
        ctx.xhat, ctx.rrms, ctx.weight = xhat, rrms, weight
        return xhat * weight if weight is not None else xhat

    @staticmethod
    def backward(ctx, dy):
        xhat, rrms, weight = ctx.xhat, ctx.rrms, ctx.weight
        # y = xhat w, xhat = x rrms  =>  dw = sum dy xhat, dx = rrms (dxhat - xhat mean(dxhat xhat))
        dweight = (dy * xhat).sum(axis=tuple(range(dy.ndim - 1))) if ctx.needs_input_grad[1] else None
        dxhat = dy * weight if weight is not None else dy
        dx = None
        if ctx.needs_input_grad[0]:
            dx = rrms * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, dweight


def _check_last_axis(op, x, *params):
    for p in params:
        if p is not None and tuple(p.shape) != (x.shape[-1],):
            raise ValueError(f"{op}: parameter of shape {tuple(p.shape)} does not match the last axis of input {tuple(x.shape)}")


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    _check_last_axis("layer_norm", x, weight, bias)
    return LayerNorm.apply(x, weight, bias, eps=eps)


def rms_norm(x, weight=None, eps=1e-6):
    _check_last_axis("rms_norm", x, weight)
    return RMSNorm.apply(x, weight, eps=eps)
