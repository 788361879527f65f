"""softmax over the last axis in one pass each way: x (..., C) -> y (..., C).

The reference (minilora.functional.softmax) makes a max, a shifted copy, an
exp, a sum and a quotient: five passes over x, four new arrays. Here one warp
reads its row three times (max, sum of exp, write) and writes it once.
"""
import numpy as np

from .. import backend
from ..functional.softmax import Softmax
from ._cuda import acc_scalar, compiled_kernel, fusable, launch_rows

SOURCE = r"""
template <typename T>
__global__ void softmax_forward(const T* x, T* y, int rows, int cols) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    x += (long long)row * cols;
    y += (long long)row * cols;
    // 1. the row's max: exp(x - max) cannot overflow, and the shift cancels in the quotient
    A m = NEGATIVE_INFINITY;
    for (int c = lane; c < cols; c += 32) m = fmax(m, to_acc(x[c]));
    m = warp_max(m);
    // 2. the denominator
    A s = 0;
    for (int c = lane; c < cols; c += 32) s += exp(to_acc(x[c]) - m);
    s = warp_sum(s);
    // 3. normalise
    for (int c = lane; c < cols; c += 32) y[c] = from_acc<T>(exp(to_acc(x[c]) - m) / s);
}

// y = softmax(scale x)  =>  dx = scale y (dy - sum(dy y)); dx may be dy's own buffer (each lane reads before it writes)
template <typename T>
__global__ void softmax_backward(const T* y, const T* dy, T* dx, int rows, int cols, acc_t<T> scale) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long start = (long long)row * cols;
    A dot = 0;
    for (int c = lane; c < cols; c += 32) dot += to_acc(dy[start + c]) * to_acc(y[start + c]);
    dot = warp_sum(dot);
    for (int c = lane; c < cols; c += 32)
        dx[start + c] = from_acc<T>(scale * to_acc(y[start + c]) * (to_acc(dy[start + c]) - dot));
}
"""


class FusedSoftmax(Softmax):
    """Softmax with the two fused kernels above; another axis or dtype takes the reference path."""

    @staticmethod
    def runs_fused(x, axis=-1):
        return fusable(x) and axis in (-1, x.ndim - 1) and x.ndim > 0

    @staticmethod
    def forward(ctx, x, axis=-1):
        ctx.fused = FusedSoftmax.runs_fused(x, axis)
        if not ctx.fused:
            return Softmax.forward(ctx, x, axis)
        cupy = backend.array_module(x)
        x = cupy.ascontiguousarray(x)
        y = cupy.empty_like(x)
        cols = x.shape[-1]
        rows = x.size // cols if cols else 0
        launch_rows(compiled_kernel(SOURCE, "softmax_forward", x.dtype), rows, x, y, np.int32(rows), np.int32(cols))
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return Softmax.backward(ctx, grad)
        cupy = backend.array_module(grad)
        y, grad = ctx.y, cupy.ascontiguousarray(grad, dtype=ctx.y.dtype)
        dx = cupy.empty_like(y)
        cols = y.shape[-1]
        rows = y.size // cols if cols else 0
        launch_rows(compiled_kernel(SOURCE, "softmax_backward", y.dtype), rows, y, grad, dx, np.int32(rows), np.int32(cols),
                    acc_scalar(y.dtype, 1))
        return dx
