"""layer_norm over the last axis with one kernel each way: x (..., C), weight (C,), bias (C,) -> (..., C).

The forward keeps only the per-row mean and 1/std, (N,) each, besides x;
the backward recomputes xhat = (x - mean) rstd on the fly instead of storing it.
dweight and dbias are sums over rows: the backward kernel writes dy xhat, and
``backend.sum_over_rows`` (a matrix-vector product) adds up the rows.
"""
import numpy as np

from .. import backend
from ..functional.norm import LayerNorm
from ._cuda import fusable, launch_rows, row_kernel

SOURCE = r"""
template <typename T>
__global__ void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, T* mean_out, T* rstd_out,
                                   int rows, int cols, T eps, int has_weight, int has_bias) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    x += (long long)row * cols;
    y += (long long)row * cols;
    // 1. statistics over the row, in two passes as the reference: the variance of x - mean
    T sum = 0;
    for (int c = lane; c < cols; c += 32) sum += x[c];
    T mean = warp_sum(sum) / cols;
    T squares = 0;
    for (int c = lane; c < cols; c += 32) squares += (x[c] - mean) * (x[c] - mean);
    T rstd = 1 / sqrt(warp_sum(squares) / cols + eps);
    // 2. normalise, 3. scale and shift
    for (int c = lane; c < cols; c += 32) {
        T xhat = (x[c] - mean) * rstd;
        y[c] = (has_weight ? xhat * weight[c] : xhat) + (has_bias ? bias[c] : (T)0);
    }
    if (lane == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

// y = xhat w + b, xhat = (x - mean) rstd  =>  dxhat = dy w, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
// dweight = sum over rows of dy xhat: written out per element (dy_xhat) when wanted, summed by a matmul
template <typename T>
__global__ void layer_norm_backward(const T* x, const T* weight, const T* mean_in, const T* rstd_in, const T* dy,
                                    T* dx, T* dy_xhat, int rows, int cols, int has_weight, int want_dy_xhat) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long start = (long long)row * cols;
    T mean = mean_in[row], rstd = rstd_in[row];
    T dxhat_sum = 0, dxhat_xhat_sum = 0;
    for (int c = lane; c < cols; c += 32) {
        T xhat = (x[start + c] - mean) * rstd;
        T dxhat = has_weight ? dy[start + c] * weight[c] : dy[start + c];
        dxhat_sum += dxhat;
        dxhat_xhat_sum += dxhat * xhat;
    }
    T dxhat_mean = warp_sum(dxhat_sum) / cols, dxhat_xhat_mean = warp_sum(dxhat_xhat_sum) / cols;
    for (int c = lane; c < cols; c += 32) {
        T xhat = (x[start + c] - mean) * rstd;
        T dxhat = has_weight ? dy[start + c] * weight[c] : dy[start + c];
        dx[start + c] = rstd * (dxhat - dxhat_mean - xhat * dxhat_xhat_mean);
        if (want_dy_xhat) dy_xhat[start + c] = dy[start + c] * xhat;
    }
}
"""


class FusedLayerNorm(LayerNorm):
    """LayerNorm with the kernels above; other dtypes take the reference path."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        ctx.fused = fusable(x, *(p for p in (weight, bias) if p is not None)) and x.ndim > 0
        if not ctx.fused:
            return LayerNorm.forward(ctx, x, weight, bias, eps)
        cupy = backend.array_module(x)
        cols = x.shape[-1]
        x2 = cupy.ascontiguousarray(x).reshape(-1, cols)  # (N, C)
        rows = x2.shape[0]
        y = cupy.empty_like(x2)
        mean, rstd = cupy.empty(rows, dtype=x.dtype), cupy.empty(rows, dtype=x.dtype)  # (N,) each
        kernel = row_kernel(SOURCE, "layer_norm_forward", x.dtype)
        launch_rows(kernel, rows, x2, x2 if weight is None else weight, x2 if bias is None else bias, y, mean, rstd,
                    np.int32(rows), np.int32(cols), x.dtype.type(eps), np.int32(weight is not None), np.int32(bias is not None))
        ctx.x2, ctx.mean, ctx.rstd, ctx.weight, ctx.shape = x2, mean, rstd, weight, x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return LayerNorm.backward(ctx, grad)
        cupy = backend.array_module(grad)
        x2, mean, rstd, weight = ctx.x2, ctx.mean, ctx.rstd, ctx.weight
        rows, cols = x2.shape
        dy = cupy.ascontiguousarray(grad, dtype=x2.dtype).reshape(rows, cols)  # (N, C)
        dbias = backend.sum_over_rows(dy) if ctx.needs_input_grad[2] else None
        want_dweight = ctx.needs_input_grad[1]
        dx = cupy.empty_like(x2)  # (N, C), written even when x needs no gradient: the kernel also makes dy xhat
        dy_xhat = cupy.empty_like(x2) if want_dweight else dx  # (N, C)
        kernel = row_kernel(SOURCE, "layer_norm_backward", x2.dtype)
        launch_rows(kernel, rows, x2, x2 if weight is None else weight, mean, rstd, dy, dx, dy_xhat,
                    np.int32(rows), np.int32(cols), np.int32(weight is not None), np.int32(want_dweight))
        dweight = backend.sum_over_rows(dy_xhat) if want_dweight else None
        return (dx.reshape(ctx.shape) if ctx.needs_input_grad[0] else None), dweight, dbias
