"""Products on the GPU: Linear's bias gradient as a matrix-vector product, and batched bf16 matmuls.

RowSumLinear: x (..., in), W (out, in), b (out,) -> (..., out). The
reference's dbias = dy.sum(0) is a CuPy reduction over axis 0; cuBLAS does
ones (N,) @ dy (N, out) reading the rows in order, and CuPy's reduction made
GPT-2's full fine-tuning step 9 ms slower (99.6 against 90.7 ms of GPU time,
bench/profile_gpu_step.py --mode full).

BatchedMatMul: a (..., n, k) @ b (..., k, m) through ``backend.matmul``, which
hands batches of bfloat16 matrices to cuBLAS (CuPy's own ``@`` takes bf16
only two axes at a time).
"""
from .. import backend
from ..functional.linalg import Linear, MatMul


class RowSumLinear(Linear):
    """Linear whose backward sums dy's rows with ``backend.sum_over_rows``; dx and dW are the reference's."""

    @staticmethod
    def backward(ctx, dy):
        want_dbias = ctx.needs_input_grad[2]
        ctx.needs_input_grad = ctx.needs_input_grad[:2] + (False,)  # the reference then skips its dbias
        dx, dweight, _ = Linear.backward(ctx, dy)
        dbias = backend.sum_over_rows(dy.reshape(-1, dy.shape[-1])) if want_dbias else None  # (out,)
        return dx, dweight, dbias


class BatchedMatMul(MatMul):
    """MatMul with its products through ``backend.matmul``; a vector operand takes the reference path."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        ctx.batched = a.ndim >= 2 and b.ndim >= 2
        return backend.matmul(a, b) if ctx.batched else a @ b

    @staticmethod
    def backward(ctx, dy):  # y = a @ b  =>  da = dy @ b^T, db = a^T @ dy (the engine sums broadcast axes away)
        if not ctx.batched:
            return MatMul.backward(ctx, dy)
        da = backend.matmul(dy, ctx.b.swapaxes(-1, -2)) if ctx.needs_input_grad[0] else None
        db = backend.matmul(ctx.a.swapaxes(-1, -2), dy) if ctx.needs_input_grad[1] else None
        return da, db
