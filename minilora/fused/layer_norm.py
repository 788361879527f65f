"""layer_norm over the last axis with one kernel each way: x (..., C), weight (C,), bias (C,) -> (..., C).

The forward keeps only the per-row mean and 1/std, (N,) each, besides x;
the backward recomputes xhat = (x - mean) rstd on the fly instead of storing it.
dweight and dbias are sums over rows: the backward kernel writes dy xhat, and
``backend.sum_over_rows`` (a matrix-vector product) adds up the rows.
"""
import numpy as np

from .. import backend
from ..functional.norm import LayerNorm
from ._cuda import acc_dtype, acc_scalar, compiled_kernel, fusable, launch_rows

SOURCE = r"""
template <typename T>
__global__ void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, acc_t<T>* mean_out,
                                   acc_t<T>* rstd_out, int rows, int cols, acc_t<T> eps, int has_weight, int has_bias) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    x += (long long)row * cols;
    y += (long long)row * cols;
    // 1. statistics over the row, in two passes as the reference: the variance of x - mean
    A sum = 0;
    for (int c = lane; c < cols; c += 32) sum += to_acc(x[c]);
    A mean = warp_sum(sum) / cols;
    A squares = 0;
    for (int c = lane; c < cols; c += 32) squares += (to_acc(x[c]) - mean) * (to_acc(x[c]) - mean);
    A rstd = 1 / sqrt(warp_sum(squares) / cols + eps);
    // 2. normalise, 3. scale and shift
    for (int c = lane; c < cols; c += 32) {
        A xhat = (to_acc(x[c]) - mean) * rstd;
        y[c] = from_acc<T>((has_weight ? xhat * to_acc(weight[c]) : xhat) + (has_bias ? to_acc(bias[c]) : (A)0));
    }
    if (lane == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

// y = xhat w + b, xhat = (x - mean) rstd  =>  dxhat = dy w, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
// dweight = sum over rows of dy xhat: written out per element (dy_xhat) when wanted, summed by a matmul
template <typename T>
__global__ void layer_norm_backward(const T* x, const T* weight, const acc_t<T>* mean_in, const acc_t<T>* rstd_in,
                                    const T* dy, T* dx, T* dy_xhat, int rows, int cols, int has_weight, int want_dy_xhat) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long start = (long long)row * cols;
    A mean = mean_in[row], rstd = rstd_in[row];
    A dxhat_sum = 0, dxhat_xhat_sum = 0;
    for (int c = lane; c < cols; c += 32) {
        A xhat = (to_acc(x[start + c]) - mean) * rstd;
        A dxhat = has_weight ? to_acc(dy[start + c]) * to_acc(weight[c]) : to_acc(dy[start + c]);
        dxhat_sum += dxhat;
        dxhat_xhat_sum += dxhat * xhat;
    }
    A dxhat_mean = warp_sum(dxhat_sum) / cols, dxhat_xhat_mean = warp_sum(dxhat_xhat_sum) / cols;
    for (int c = lane; c < cols; c += 32) {
        A xhat = (to_acc(x[start + c]) - mean) * rstd;
        A dxhat = has_weight ? to_acc(dy[start + c]) * to_acc(weight[c]) : to_acc(dy[start + c]);
        dx[start + c] = from_acc<T>(rstd * (dxhat - dxhat_mean - xhat * dxhat_xhat_mean));
        if (want_dy_xhat) dy_xhat[start + c] = from_acc<T>(to_acc(dy[start + c]) * xhat);
    }
}
"""


class FusedLayerNorm(LayerNorm):
    """LayerNorm with the kernels above; other dtypes take the reference path."""

    @staticmethod
    def runs_fused(x, weight, bias, eps=1e-5):
        return fusable(x, *(p for p in (weight, bias) if p is not None)) and x.ndim > 0

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        ctx.fused = FusedLayerNorm.runs_fused(x, weight, bias, eps)
        if not ctx.fused:
            return LayerNorm.forward(ctx, x, weight, bias, eps)
        cupy = backend.array_module(x)
        cols = x.shape[-1]
        x2 = cupy.ascontiguousarray(x).reshape(-1, cols)  # (N, C)
        rows = x2.shape[0]
        y = cupy.empty_like(x2)
        mean, rstd = cupy.empty(rows, dtype=acc_dtype(x.dtype)), cupy.empty(rows, dtype=acc_dtype(x.dtype))  # (N,) each
        kernel = compiled_kernel(SOURCE, "layer_norm_forward", x.dtype)
        launch_rows(kernel, rows, x2, x2 if weight is None else weight, x2 if bias is None else bias, y, mean, rstd,
                    np.int32(rows), np.int32(cols), acc_scalar(x.dtype, eps), np.int32(weight is not None), np.int32(bias is not None))
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
        kernel = compiled_kernel(SOURCE, "layer_norm_backward", x2.dtype)
        launch_rows(kernel, rows, x2, x2 if weight is None else weight, mean, rstd, dy, dx, dy_xhat,
                    np.int32(rows), np.int32(cols), np.int32(weight is not None), np.int32(want_dweight))
        dweight = backend.sum_over_rows(dy_xhat) if want_dweight else None
        return (dx.reshape(ctx.shape) if ctx.needs_input_grad[0] else None), dweight, dbias
