"""Matrix products: ``matmul`` (batched, broadcasting) and ``linear`` (y = x W^T + b)."""
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
    """y = a @ b. Inputs: a (..., n, k), b (..., k, m); leading axes broadcast, a 1-D a is a row, a 1-D b a column.
    Output: y (..., n, m). ctx keeps: a, b. Backward: docs/derivations.md#matrix-products-functionallinalgpy.
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a @ b

    @staticmethod
    def backward(ctx, dy):  # y = a @ b  =>  da = dy @ b^T, db = a^T @ dy
        # BEGIN SOLUTION 8 "MatMul backward"
        a, b = ctx.a, ctx.b
        # Treat vectors as matrices (1-d a is a row, 1-d b a column) so one formula serves all,
        # and give the gradient back the axes that the vector product dropped.
        a2 = a[None, :] if a.ndim == 1 else a  # (..., n, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., k, m)
        dy2 = dy[..., None] if b.ndim == 1 else dy
        dy2 = dy2[..., None, :] if a.ndim == 1 else dy2  # (..., n, m)
        da = db = None
        if ctx.needs_input_grad[0]:
            da = dy2 @ b2.swapaxes(-1, -2)  # (..., n, k)
            da = da[..., 0, :] if a.ndim == 1 else da
        if ctx.needs_input_grad[1]:
            db = a2.swapaxes(-1, -2) @ dy2  # (..., k, m)
            db = db[..., 0] if b.ndim == 1 else db
        return da, db
        # END SOLUTION 8


class Linear(Function):
    """y = x W^T + b, PyTorch's layout (W is out x in).

    Inputs: x (..., in), weight W (out, in), bias b (out,) or None. Output: y (..., out).
    ctx keeps: x, W. Backward: docs/derivations.md#matrix-products-functionallinalgpy.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.x, ctx.weight = x, weight
        # One 2-D product over all leading axes is one BLAS call, not one per batch entry.
        y = x.reshape(-1, x.shape[-1]) @ weight.T  # (N, out), N = all leading axes
        if bias is not None:
            y += bias  # y is a fresh array: adding in place shares nothing
        return y.reshape(x.shape[:-1] + (weight.shape[0],))  # (..., out)

    @staticmethod
    def backward(ctx, dy):  # y = x W^T + b  =>  dx = dy W, dW = dy^T x, db = sum over rows of dy
        # BEGIN SOLUTION 9 "Linear backward"
        x, weight = ctx.x, ctx.weight
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        dx = (dy2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None  # (..., in)
        dweight = dy2.T @ x2 if ctx.needs_input_grad[1] else None  # (out, in)
        dbias = dy2.sum(0) if ctx.needs_input_grad[2] else None  # (out,)
        return dx, dweight, dbias
        # END SOLUTION 9


def matmul(a, b):
    """a @ b with NumPy's rules: a (..., n, k), b (..., k, m) -> (..., n, m)."""
    _check_matmul(a, b)
    return MatMul.apply(a, b)


def linear(x, weight, bias=None):
    """y = x W^T + b: x (..., in), weight (out, in), bias (out,) or None -> (..., out)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {tuple(x.shape)}) but the weight "
            f"{tuple(weight.shape)} expects {weight.shape[1]}; weights are (out, in)."
        )
    return Linear.apply(x, weight, bias)
