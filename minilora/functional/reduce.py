"""Reductions over an axis (None: all axes), each with ``keepdims``: sum, mean, max, var.

Shapes: x (...) -> the same shape with ``axis`` removed (or kept as size 1).
Each backward first restores the reduced axes as size 1 (``_expand``) so that
the gradient broadcasts back over them.
"""
from .. import backend
from ..autograd import Function


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < (ndim or 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(a % ndim for a in axes) if ndim else ()


def _expand(grad, axes, keepdims):
    """Give ``grad`` size-1 axes where the forward reduced, so it broadcasts against the input."""
    if keepdims:
        return grad
    xp = backend.array_module(grad)
    return xp.expand_dims(grad, axes) if axes else grad


class Sum(Function):
    """y = sum of x over ``axis``. Input: x (...). Output: x's shape less the axes (size 1 with keepdims).
    ctx keeps: x's shape, the axes. Backward: docs/derivations.md#reductions-functionalreducepy."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):  # y = sum_i x_i  =>  dx_i = dy
        # BEGIN SOLUTION 10 "Sum and Mean backward"
        xp = backend.array_module(dy)
        return xp.broadcast_to(_expand(dy, ctx.axes, ctx.keepdims), ctx.shape)
        # END SOLUTION 10


class Mean(Function):
    """y = mean of x over ``axis``. Input: x (...). Output: x's shape less the axes (size 1 with keepdims).
    ctx keeps: x's shape, the axes, the count n of values averaged. Backward: docs/derivations.md#reductions-functionalreducepy."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        ctx.count = 1
        for a in ctx.axes:
            ctx.count *= x.shape[a]
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):  # y = (1/n) sum_i x_i  =>  dx_i = dy / n
        # BEGIN SOLUTION 10 "Sum and Mean backward"
        xp = backend.array_module(dy)
        return xp.broadcast_to(_expand(dy, ctx.axes, ctx.keepdims) / ctx.count, ctx.shape)
        # END SOLUTION 10


class Max(Function):
    """y = max of x over ``axis``. Input: x (...). Output: x's shape less the axes (size 1 with keepdims).
    ctx keeps: the mask of the maxima (x's shape), the axes. Backward: docs/derivations.md#reductions-functionalreducepy."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = _axes(axis, x.ndim)
        y = x.max(axis=axes, keepdims=True)
        ctx.is_max = x == y
        ctx.axes, ctx.keepdims = axes, keepdims
        return y if keepdims else y.squeeze(axis=axes) if axes else y.reshape(())

    @staticmethod
    def backward(ctx, dy):
        # y = max_i x_i  =>  dx_i = dy [x_i = y] / (number of ties), as torch.amax splits ties evenly
        # BEGIN SOLUTION 11 "Max and Var backward"
        ties = ctx.is_max.sum(axis=ctx.axes, keepdims=True)
        return ctx.is_max * (_expand(dy, ctx.axes, ctx.keepdims) / ties)
        # END SOLUTION 11


class Var(Function):
    """y = sum (x - mean)^2 / (n - ddof) over ``axis``. Input: x (...). Output: x's shape less the axes.
    ctx keeps: x - mean (x's shape), the axes, n - ddof. Backward: docs/derivations.md#reductions-functionalreducepy."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, ddof=0):
        axes = _axes(axis, x.ndim)
        count = 1
        for a in axes:
            count *= x.shape[a]
        ctx.centered = x - x.mean(axis=axes, keepdims=True)
        ctx.axes, ctx.keepdims, ctx.divisor = axes, keepdims, count - ddof
        return (ctx.centered ** 2).sum(axis=axes, keepdims=keepdims) / ctx.divisor

    @staticmethod
    def backward(ctx, dy):  # y = sum (x - mean)^2 / (n - ddof)  =>  dx = 2 (x - mean) dy / (n - ddof)
        # BEGIN SOLUTION 11 "Max and Var backward"
        return 2 * ctx.centered * _expand(dy, ctx.axes, ctx.keepdims) / ctx.divisor
        # END SOLUTION 11


def sum(x, axis=None, keepdims=False):
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    """The largest value along ``axis``; like torch.amax, tied maxima share the gradient equally."""
    if x.size == 0:
        raise ValueError(f"max of an empty tensor (shape {x.shape}) has no value")
    return Max.apply(x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims=False, ddof=0):
    """Variance along ``axis``; ``ddof=0`` as NumPy (torch.var defaults to ``correction=1``)."""
    count = 1
    for a in _axes(axis, x.ndim):
        count *= x.shape[a]
    if count - ddof <= 0:
        raise ValueError(f"var: {count} values with ddof={ddof} leave no degrees of freedom")
    return Var.apply(x, axis=axis, keepdims=keepdims, ddof=ddof)
