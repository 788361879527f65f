"""The products on the GPU through ``backend.matmul`` (cuBLAS called directly), and Linear's bias gradient.

``backend.matmul`` multiplies batches of bfloat16 matrices (CuPy's ``@`` takes
bf16 only two axes at a time) and can be recorded into a CUDA graph (CuPy
refuses its own cuBLAS calls while a graph records: minilora.fused.graph).

CublasLinear: x (..., in), W (out, in), b (out,) -> (..., out). Besides, the
reference's dbias = dy.sum(0) is a CuPy reduction over axis 0; cuBLAS does
ones (1, N) @ dy (N, out) reading the rows in order, and CuPy's reduction made
GPT-2's full fine-tuning step 9 ms slower (99.6 against 90.7 ms of GPU time,
bench/profile_gpu_step.py --mode full).

BatchedMatMul: a (..., n, k) @ b (..., k, m).
"""
from .. import backend
from ..functional.linalg import Linear, MatMul


class CublasLinear(Linear):
    """Linear with the reference's formulas, its products through ``backend.matmul``."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.x, ctx.weight = x, weight
        y = backend.matmul(x.reshape(-1, x.shape[-1]), weight.T)  # (N, out)
        if bias is not None:
            y += bias
        return y.reshape(x.shape[:-1] + (weight.shape[0],))  # (..., out)

    @staticmethod
    def backward(ctx, dy):  # y = x W^T + b  =>  dx = dy W, dW = dy^T x, db = sum over rows of dy
        x, weight = ctx.x, ctx.weight
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
        dx = backend.matmul(dy2, weight).reshape(x.shape) if ctx.needs_input_grad[0] else None  # (..., in)
        dweight = backend.matmul(dy2.T, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None  # (out, in)
        dbias = backend.sum_over_rows(dy2) if ctx.needs_input_grad[2] else None  # (out,)
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
