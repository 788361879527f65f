"""Linear with its bias gradient as a matrix-vector product on the GPU: x (..., in), W (out, in), b (out,) -> (..., out).

The reference's dbias = dy.sum(0) is a CuPy reduction over axis 0; cuBLAS does
ones (N,) @ dy (N, out) reading the rows in order, and CuPy's reduction made
GPT-2's full fine-tuning step 9 ms slower (99.6 against 90.7 ms of GPU time,
bench/profile_gpu_step.py --mode full).
"""
from .. import backend
from ..functional.linalg import Linear


class RowSumLinear(Linear):
    """Linear whose backward sums dy's rows with ``backend.sum_over_rows``; dx and dW are the reference's."""

    @staticmethod
    def backward(ctx, dy):
        want_dbias = ctx.needs_input_grad[2]
        ctx.needs_input_grad = ctx.needs_input_grad[:2] + (False,)  # the reference then skips its dbias
        dx, dweight, _ = Linear.backward(ctx, dy)
        dbias = backend.sum_over_rows(dy.reshape(-1, dy.shape[-1])) if want_dbias else None  # (out,)
        return dx, dweight, dbias
