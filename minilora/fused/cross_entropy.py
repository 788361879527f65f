"""cross_entropy fused with its log-softmax: logits (N, V) or (B, T, V), targets of class ids -> loss.

The reference keeps the whole log-softmax, (N, V) floats, for the backward: for
GPT-2's vocabulary at B=8, T=512 that is 0.8 GB. Here a warp per row finds the
row's log-sum-exp, and only it, (N,) floats, is kept; the backward rebuilds
softmax = exp(logits - lse) in the one pass that writes the gradient.
"""
import functools

import numpy as np

from .. import backend
from ..functional.softmax import CrossEntropy
from ._cuda import fusable, launch_rows, row_kernel

SOURCE = r"""
template <typename T>
__global__ void cross_entropy_forward(const T* logits, const long long* targets, T* losses, T* lse_out,
                                      int rows, int cols, long long ignore_index) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    logits += (long long)row * cols;
    T m = NEGATIVE_INFINITY;
    for (int c = lane; c < cols; c += 32) m = fmax(m, logits[c]);
    m = warp_max(m);
    T s = 0;
    for (int c = lane; c < cols; c += 32) s += exp(logits[c] - m);
    T lse = m + log(warp_sum(s));  // log sum_c exp(logits[c]), shifted by the max so that exp cannot overflow
    if (lane == 0) {
        long long target = targets[row];
        lse_out[row] = lse;
        losses[row] = target == ignore_index ? (T)0 : lse - logits[target];  // -log softmax(logits)[target]
    }
}
"""


@functools.lru_cache(maxsize=None)
def _backward_kernel():
    import cupy

    # loss_n = lse_n - logits[n, t_n]  =>  dlogits[n, c] = (softmax(logits[n])[c] - [c == t_n]) dloss_n
    return cupy.ElementwiseKernel(
        "T logit, T lse, int64 target, T dloss, int64 classes", "T dlogit",
        "dlogit = (exp(logit - lse) - (T)(i % classes == target)) * dloss",
        "minilora_cross_entropy_backward")


class FusedCrossEntropy(CrossEntropy):
    """CrossEntropy that keeps only the per-row log-sum-exp; other dtypes take the reference path."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        ctx.fused = fusable(logits)
        if not ctx.fused:
            return CrossEntropy.forward(ctx, logits, targets, ignore_index, reduction)
        cupy = backend.array_module(logits)
        classes = logits.shape[-1]
        logits2d = cupy.ascontiguousarray(logits).reshape(-1, classes)  # (N, V)
        targets1d = cupy.ascontiguousarray(targets.reshape(-1), dtype=cupy.int64)  # (N,)
        rows = logits2d.shape[0]
        losses, lse = cupy.empty(rows, dtype=logits.dtype), cupy.empty(rows, dtype=logits.dtype)  # (N,) each
        launch_rows(row_kernel(SOURCE, "cross_entropy_forward", logits.dtype), rows, logits2d, targets1d, losses, lse,
                    np.int32(rows), np.int32(classes), np.int64(ignore_index))
        # the reduction, as the reference's step 3
        keep = targets1d != ignore_index  # (N,)
        count = cupy.maximum(keep.sum(), 1).astype(logits.dtype)
        ctx.logits2d, ctx.lse, ctx.targets, ctx.keep, ctx.count = logits2d, lse, targets1d, keep, count
        ctx.reduction, ctx.shape = reduction, logits.shape
        if reduction == "none":
            return losses.reshape(targets.shape)
        return losses.sum() / count if reduction == "mean" else losses.sum()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return CrossEntropy.backward(ctx, grad)
        if ctx.reduction == "mean":  # the reference's step 3: each row's share of the loss, none for ignored rows
            dloss = grad / ctx.count * ctx.keep  # (N,)
        elif ctx.reduction == "sum":
            dloss = grad * ctx.keep
        else:
            dloss = grad.reshape(-1) * ctx.keep
        classes = ctx.shape[-1]
        dlogits = _backward_kernel()(
            ctx.logits2d, ctx.lse[:, None], ctx.targets[:, None], dloss.astype(ctx.lse.dtype)[:, None], np.int64(classes))
        return dlogits.reshape(ctx.shape), None
