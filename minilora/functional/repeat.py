"""repeat_interleave: each slice along an axis, copied ``repeats`` times in a row, as torch.repeat_interleave.

Shapes: x (..., N, ...) -> (..., N * repeats, ...), output slice j = input slice j // repeats.

Grouped-query attention uses it to share each key/value head among
``repeats`` query heads: k (B, Hkv, S, D) -> (B, Hkv * repeats, S, D).
"""
from ..autograd import Function


class RepeatInterleave(Function):
    """x (..., N, ...) -> y (..., N * repeats, ...) along ``axis`` (non-negative); ctx keeps the axis and repeats."""

    @staticmethod
    def forward(ctx, x, repeats, axis):
        ctx.repeats, ctx.axis = repeats, axis
        return x.repeat(repeats, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        # Each input slice was used ``repeats`` times: dx = the sum of the gradients of its copies.
        axis, n = ctx.axis, grad.shape[ctx.axis] // ctx.repeats
        copies = grad.reshape(grad.shape[:axis] + (n, ctx.repeats) + grad.shape[axis + 1:])  # (..., N, repeats, ...)
        return copies.sum(axis=axis + 1), None, None


def repeat_interleave(x, repeats, axis):
    """Repeat every slice of x along ``axis`` ``repeats`` times in place (1 1 2 2, not 1 2 1 2)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeat_interleave: repeats must be a positive int, got {repeats!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"repeat_interleave: axis {axis} is out of range for shape {tuple(x.shape)}")
    return RepeatInterleave.apply(x, repeats, axis % x.ndim)
