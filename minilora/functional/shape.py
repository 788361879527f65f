"""Ops that move values without changing them: reshape, permute, indexing, concatenate, split, where.

Each backward sends every gradient value back to the place its value came from.
"""
import numbers

import numpy as np

from .. import backend
from ..autograd import Function, Tensor


def _check_axis(op, axis, shape):
    """``axis`` as a number in [0, ndim), or a ValueError that names ``op``, the axis and the shape."""
    ndim = len(shape)
    if not isinstance(axis, numbers.Integral) or not -ndim <= axis < ndim:
        valid = f"{ndim} axes: {-ndim} to {ndim - 1}" if ndim else "it has no axes"
        raise ValueError(f"{op}: axis {axis} is out of range for shape {tuple(shape)} ({valid}). "
                         "Fix: count axes from 0, or from -1 for the last.")
    return int(axis) % ndim


class Reshape(Function):
    """y = x with a new shape of the same size. Input: x (...). Output: y (shape). ctx keeps: x's shape. Backward: docs/derivations.md#moving-values-functionalshapepy."""

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
    """y = x with its axes reordered: y's axis i is x's axis axes[i]. Input: x (...). Output: y (...).
    ctx keeps: axes. Backward: docs/derivations.md#moving-values-functionalshapepy."""

    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, grad):  # y = x.transpose(p)  =>  dx = dy.transpose(inverse of p)
        return grad.transpose(np.argsort(ctx.axes)), None


def _has_array_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") or isinstance(p, list) for p in parts)


def _raw_index(index):
    """Unwrap Tensor indices into arrays (indexing is not differentiable in the index)."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


class GetItem(Function):
    """y = x[index] (ints, slices, None, Ellipsis, integer or boolean arrays). Input: x (...). Output: y (...).
    ctx keeps: x's shape and dtype, index. Backward: docs/derivations.md#moving-values-functionalshapepy."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as error:
            raise IndexError(f"getitem: {error} (tensor of shape {tuple(x.shape)}). "
                             "Fix: an index into an axis of size n must be in [-n, n).") from None

    @staticmethod
    def backward(ctx, grad):  # y = x[i]  =>  dx[i] += dy (repeated indices add up)
        # BEGIN SOLUTION 12 "GetItem and Embedding backward"
        xp = backend.array_module(grad)
        dx = xp.zeros(ctx.shape, dtype=grad.dtype)
        if _has_array_index(ctx.index):
            backend.scatter_add(dx, ctx.index, grad)
        else:
            dx[ctx.index] = grad  # basic slices never repeat a position
        return dx, None
        # END SOLUTION 12


class Concatenate(Function):
    """y = [x1, x2, ...] joined along ``axis``. Inputs: axis, then xs, equal off ``axis``. Output: y (...).
    ctx keeps: axis, where each x ends along it. Backward: docs/derivations.md#moving-values-functionalshapepy."""

    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis = axis
        ctx.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return backend.array_module(xs[0]).concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, grad):  # y = [x1, x2, ...] along axis  =>  dx_k = the k-th slab of dy
        xp = backend.array_module(grad)
        return (None, *xp.split(grad, ctx.bounds, axis=ctx.axis))


class Where(Function):
    """y = a where condition, else b. Inputs: condition (boolean), a, b, all broadcastable. Output: the broadcast shape.
    ctx keeps: condition. Backward: docs/derivations.md#moving-values-functionalshapepy."""

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
    """x with its axes reordered, as torch.permute: x.permute(2, 0, 1) or x.permute((2, 0, 1))."""
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    axes = tuple(_check_axis("permute", a, x.shape) for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute: axes {axes} are not a permutation of the {x.ndim} axes of {tuple(x.shape)}. "
                         f"Fix: name each axis once, e.g. {tuple(reversed(range(x.ndim)))}.")
    return Permute.apply(x, axes)


def transpose(x, axis0=-2, axis1=-1):
    """Swap two axes (the last two by default), as torch.transpose."""
    axis0, axis1 = _check_axis("transpose", axis0, x.shape), _check_axis("transpose", axis1, x.shape)
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return Permute.apply(x, tuple(axes))


def getitem(x, index):
    """x[index] for ints, slices, None, Ellipsis and integer/boolean arrays."""
    return GetItem.apply(x, _raw_index(index))


def concatenate(xs, axis=0):
    """Join tensors (a list, at least one) along ``axis``; their other axes must agree, as torch.cat."""
    xs = list(xs)
    if not xs:
        raise ValueError("concatenate: got no tensors to join. Fix: pass a list of at least one tensor.")
    shapes = ", ".join(str(tuple(x.shape)) for x in xs)
    if len({x.ndim for x in xs}) > 1:
        raise ValueError(f"concatenate: shapes {shapes} have different numbers of axes "
                         f"({', '.join(str(x.ndim) for x in xs)}). Fix: reshape them to the same number of axes.")
    axis = _check_axis("concatenate", axis, xs[0].shape)
    if len({x.shape[:axis] + x.shape[axis + 1:] for x in xs}) > 1:
        raise ValueError(f"concatenate: shapes {shapes} differ off axis {axis}; "
                         f"only the sizes along axis {axis} may differ.")
    return Concatenate.apply(axis, *xs)


def split(x, sections, axis=0):
    """Split into pieces along ``axis``: ``sections`` is a piece size (as torch.split) or a list of sizes."""
    axis = _check_axis("split", axis, x.shape)
    n = x.shape[axis]
    if isinstance(sections, numbers.Integral):
        if sections <= 0:
            raise ValueError(f"split: the piece size must be a positive integer, got {sections}. "
                             "Fix: a size of 1 or more, or a list of sizes.")
        sizes = [int(sections)] * (n // sections) + ([n % sections] if n % sections else [])
    else:
        sizes = list(sections)
        if not all(isinstance(size, numbers.Integral) and size >= 0 for size in sizes):
            raise ValueError(f"split: sizes {sizes} must be integers >= 0. Fix: one size per piece, adding up to {n}.")
    if sum(sizes) != n:
        raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} has {n}. Fix: sizes that add up to {n}.")
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
    shapes = [tuple(np.shape(v)) for v in (condition, a, b)]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"where: condition, a and b have shapes {shapes[0]}, {shapes[1]} and {shapes[2]} that cannot be broadcast "
            "together (trailing dimensions must be equal or 1). Fix: reshape one input, e.g. add a size-1 axis."
        ) from None
    return Where.apply(condition.astype(bool), a, b)


def masked_fill(x, mask, value):
    """``value`` where ``mask`` is True, else ``x`` (mask broadcasts against x)."""
    return where(mask, value, x)
