"""Matrix products: ``matmul`` (batched, broadcasting) and ``linear`` (y = x W^T + b)."""
from .. import backend
from ..autograd import Function


def _check_matmul(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: inputs must have at least 1 dimension, got shapes {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not align ({k_a} != {k_b}). "
            "The last axis of the first must equal the second-to-last of the second; "
            "did you forget a transpose?"
        )
    batch_a, batch_b = tuple(a.shape[:-2]), tuple(b.shape[:-2])  # a vector has no batch axes
    clashes = [(-i, n, m) for i, (n, m) in enumerate(zip(reversed(batch_a), reversed(batch_b)), 1) if n != m and 1 not in (n, m)]
    if clashes:
        where = ", ".join(f"{n} != {m} at batch axis {axis}" for axis, n, m in reversed(clashes))
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} have batch axes {batch_a} and {batch_b} "
            f"that do not broadcast: {where}. Batch axes (all but the last two) pair up from the right and "
            "must be equal or 1. Fix: reshape one input, e.g. add a size-1 axis."
        )


class MatMul(Function):
    """a (..., n, k) @ b (..., k, m) -> (..., n, m); leading axes broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        _check_matmul(a, b)
        ctx.a, ctx.b = a, b
        return a @ b

    @staticmethod
    def backward(ctx, grad):  # y = a @ b  =>  da = dy @ b^T, db = a^T @ dy
        a, b = ctx.a, ctx.b
        # Treat vectors as matrices (1-d a is a row, 1-d b a column) so one formula serves all,
        # and give the gradient back the axes that the vector product dropped.
        a2 = a[None, :] if a.ndim == 1 else a  # (..., n, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., k, m)
        g = grad[..., None] if b.ndim == 1 else grad
        g = g[..., None, :] if a.ndim == 1 else g  # (..., n, m)
        da = db = None
        if ctx.needs_input_grad[0]:
            da = g @ b2.swapaxes(-1, -2)  # (..., n, k)
            da = da[..., 0, :] if a.ndim == 1 else da
        if ctx.needs_input_grad[1]:
            db = a2.swapaxes(-1, -2) @ g  # (..., k, m)
            db = db[..., 0] if b.ndim == 1 else db
        return da, db


class Linear(Function):
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out), PyTorch's layout."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"linear: input has {x.shape[-1]} features (shape {tuple(x.shape)}) but the weight "
                f"{tuple(weight.shape)} expects {weight.shape[1]}; weights are (out, in)."
            )
        ctx.x, ctx.weight = x, weight
        # One 2-D product over all leading axes is one BLAS call, not one per batch entry.
        y = x.reshape(-1, x.shape[-1]) @ weight.T  # (N, out)
        if bias is not None:
            y += bias
        return y.reshape(x.shape[:-1] + (weight.shape[0],))  # (..., out)

    @staticmethod
    def backward(ctx, grad):  # y = x W^T + b  =>  dx = dy W, dW = dy^T x, db = sum dy
        x, weight = ctx.x, ctx.weight
        grad2d = grad.reshape(-1, grad.shape[-1])  # (N, out), N = all leading axes
        dx = (grad2d @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        dw = grad2d.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        db = backend.sum_over_rows(grad2d) if len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2] else None
        return dx, dw, db


def matmul(a, b):
    return MatMul.apply(a, b)


def linear(x, weight, bias=None):
    return Linear.apply(x, weight, bias)
