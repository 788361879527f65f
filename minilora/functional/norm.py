"""layer_norm and rms_norm over the last axis.

Shapes: x (..., C), weight (C,), bias (C,) -> (..., C).
"""
from .. import backend
from ..autograd import Function


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        xp = backend.array_module(x)
        # 1. statistics over the last axis
        centered = x - x.mean(axis=-1, keepdims=True)  # (..., C)
        rstd = 1 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        # 2. normalise
        xhat = centered
        xhat *= rstd  # (..., C): x - mean is not needed again, so normalise it in place
        # 3. scale and shift
        ctx.xhat, ctx.rstd, ctx.weight = xhat, rstd, weight
        if weight is None and bias is None:
            return xhat
        y = xhat * weight if weight is not None else xhat.copy()  # xhat is kept for backward: never shift it in place
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx, grad):
        # Every (..., C) temporary costs page faults on a CPU, so the steps share buffers where they can.
        xhat, rstd, weight = ctx.xhat, ctx.rstd, ctx.weight
        lead = tuple(range(grad.ndim - 1))
        # 3. y = xhat w + b  =>  dw = sum dy xhat, db = sum dy, dxhat = dy w
        dbias = grad.sum(axis=lead) if ctx.needs_input_grad[2] else None
        grad_xhat = grad * xhat  # (..., C): dy xhat, the summand of dw
        dweight = grad_xhat.sum(axis=lead) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, dweight, dbias
        dxhat = grad * weight if weight is not None else grad
        # 2.+1. xhat = (x - mean) rstd  =>  dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        if weight is not None:
            grad_xhat *= weight  # now dxhat xhat
        dx = xhat * grad_xhat.mean(axis=-1, keepdims=True)  # (..., C)
        xp = backend.array_module(grad)
        xp.subtract(dxhat, dx, out=dx)
        dx -= dxhat.mean(axis=-1, keepdims=True)
        dx *= rstd
        return dx, dweight, dbias


class RMSNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, eps=1e-6):
        xp = backend.array_module(x)
        rrms = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        xhat = x * rrms  # (..., C)
        ctx.xhat, ctx.rrms, ctx.weight = xhat, rrms, weight
        return xhat * weight if weight is not None else xhat

    @staticmethod
    def backward(ctx, grad):
        xhat, rrms, weight = ctx.xhat, ctx.rrms, ctx.weight
        # y = xhat w, xhat = x rrms  =>  dw = sum dy xhat, dx = rrms (dxhat - xhat mean(dxhat xhat))
        dweight = (grad * xhat).sum(axis=tuple(range(grad.ndim - 1))) if ctx.needs_input_grad[1] else None
        dxhat = grad * weight if weight is not None else grad
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
