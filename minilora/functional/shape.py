"""Ops that move values without changing them: reshape, permute, indexing, concatenate, split, where.

Each backward sends every gradient value back to the place its value came from.
"""
import numpy as np

from .. import backend
from ..autograd import Function, Tensor


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} ({x.size} values) into {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, grad):  # a reshape moves no value  =>  dx = dy reshaped back
        return grad.reshape(ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, x, axes):
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"permute: axes {tuple(axes)} are not a permutation of the {x.ndim} axes of {x.shape}")
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, grad):  # y = x.transpose(p)  =>  dx = dy.transpose(inverse of p)
        return grad.transpose(np.argsort([a % grad.ndim for a in ctx.axes])), None


def _has_array_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") or isinstance(p, list) for p in parts)


def _raw_index(index):
    """Unwrap Tensor indices into arrays (indexing is not differentiable in the index)."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


class GetItem(Function):
    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        return x[index]

    @staticmethod
    def backward(ctx, grad):  # y = x[i]  =>  dx[i] += dy (repeated indices add up)
        xp = backend.array_module(grad)
        dx = xp.zeros(ctx.shape, dtype=grad.dtype)
        if _has_array_index(ctx.index):
            backend.scatter_add(dx, ctx.index, grad)
        else:
            dx[ctx.index] = grad  # basic slices never repeat a position
        return dx, None


class Concatenate(Function):
    @staticmethod
    def forward(ctx, axis, *xs):
        xp = backend.array_module(xs[0])
        ctx.axis = axis
        ctx.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        try:
            return xp.concatenate(xs, axis=axis)
        except ValueError:
            shapes = ", ".join(str(tuple(x.shape)) for x in xs)
            raise ValueError(f"concatenate: shapes {shapes} differ off axis {axis}") from None

    @staticmethod
    def backward(ctx, grad):  # y = [x1, x2, ...] along axis  =>  dx_k = the k-th slab of dy
        xp = backend.array_module(grad)
        return (None, *xp.split(grad, ctx.bounds, axis=ctx.axis))


class Where(Function):
    @staticmethod
    def forward(ctx, condition, a, b):
        xp = backend.array_module(condition)
        ctx.condition = condition
        return xp.where(condition, a, b)

    @staticmethod
    def backward(ctx, grad):  # y = c ? a : b  =>  da = c dy, db = (not c) dy
        da = grad * ctx.condition if ctx.needs_input_grad[1] else None
        db = grad * ~ctx.condition if ctx.needs_input_grad[2] else None
        return None, da, db


def reshape(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Reshape.apply(x, tuple(shape))


def permute(x, *axes):
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    return Permute.apply(x, tuple(axes))


def transpose(x, axis0=-2, axis1=-1):
    """Swap two axes (the last two by default), as torch.transpose."""
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return Permute.apply(x, tuple(axes))


def getitem(x, index):
    """x[index] for ints, slices, None, Ellipsis and integer/boolean arrays."""
    return GetItem.apply(x, _raw_index(index))


def concatenate(xs, axis=0):
    return Concatenate.apply(axis, *xs)


def split(x, sections, axis=0):
    """Split into pieces along ``axis``: ``sections`` is a piece size (as torch.split) or a list of sizes."""
    n = x.shape[axis]
    sizes = [sections] * (n // sections) + ([n % sections] if n % sections else []) if isinstance(sections, int) else list(sections)
    if sum(sizes) != n:
        raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} has {n}")
    pieces, start = [], 0
    for size in sizes:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + size)
        pieces.append(getitem(x, tuple(index)))
        start += size
    return pieces


def where(condition, a, b):
    """Elementwise ``a`` where ``condition`` holds, else ``b``; all three broadcast."""
    like = next((t.data for t in (a, b) if isinstance(t, Tensor)), None)  # the condition goes beside the values
    condition = condition.data if isinstance(condition, Tensor) else backend.asarray(condition, like=like)
    a = a if isinstance(a, (Tensor, int, float)) else Tensor(a)
    b = b if isinstance(b, (Tensor, int, float)) else Tensor(b)
    return Where.apply(condition.astype(bool), a, b)


def masked_fill(x, mask, value):
    """``value`` where ``mask`` is True, else ``x`` (mask broadcasts against x)."""
    return where(mask, value, x)
