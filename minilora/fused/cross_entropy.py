"""cross_entropy fused with its log-softmax: logits (N, V) or (B, T, V), targets of class ids -> loss.

The reference keeps the whole log-softmax, (N, V) floats, for the backward: for
GPT-2's vocabulary at B=8, T=512 that is 0.8 GB. Here a warp per row finds the
row's log-sum-exp, and only it, (N,) floats, is kept; the backward rebuilds
softmax = exp(logits - lse) in the one pass that writes the gradient.
"""
import numpy as np

from .. import backend
from ..functional.softmax import CrossEntropy
from ._cuda import acc_dtype, compiled_kernel, fusable, launch_rows

SOURCE = r"""
template <typename T>
__global__ void cross_entropy_forward(const T* logits, const long long* targets, acc_t<T>* losses, acc_t<T>* lse_out,
                                      int rows, int cols, long long ignore_index) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    logits += (long long)row * cols;
    A m = NEGATIVE_INFINITY;
    for (int c = lane; c < cols; c += 32) m = fmax(m, to_acc(logits[c]));
    m = warp_max(m);
    A s = 0;
    for (int c = lane; c < cols; c += 32) s += exp(to_acc(logits[c]) - m);
    A lse = m + log(warp_sum(s));  // log sum_c exp(logits[c]), shifted by the max so that exp cannot overflow
    if (lane == 0) {
        long long target = targets[row];
        lse_out[row] = lse;
        losses[row] = target == ignore_index ? (A)0 : lse - to_acc(logits[target]);  // -log softmax(logits)[target]
    }
}

// loss_n = lse_n - logits[n, t_n]  =>  dlogits[n, c] = (softmax(logits[n])[c] - [c == t_n]) dloss_n
template <typename T>
__global__ void cross_entropy_backward(const T* logits, const acc_t<T>* lse, const long long* targets,
                                       const acc_t<T>* dloss, T* dlogits, int rows, int cols) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long start = (long long)row * cols, target = targets[row];
    A row_lse = lse[row], row_dloss = dloss[row];
    for (int c = lane; c < cols; c += 32)
        dlogits[start + c] = from_acc<T>((exp(to_acc(logits[start + c]) - row_lse) - (A)(c == target)) * row_dloss);
}
"""


class FusedCrossEntropy(CrossEntropy):
    """CrossEntropy that keeps only the per-row log-sum-exp; other dtypes take the reference path."""

    @staticmethod
    def runs_fused(logits, targets, ignore_index=-100, reduction="mean"):
        return fusable(logits)

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        ctx.fused = FusedCrossEntropy.runs_fused(logits, targets, ignore_index, reduction)
        if not ctx.fused:
            return CrossEntropy.forward(ctx, logits, targets, ignore_index, reduction)
        cupy = backend.array_module(logits)
        classes = logits.shape[-1]
        logits2d = cupy.ascontiguousarray(logits).reshape(-1, classes)  # (N, V)
        targets1d = cupy.ascontiguousarray(targets.reshape(-1), dtype=cupy.int64)  # (N,)
        rows = logits2d.shape[0]
        # the per-row losses and log-sum-exps are float32 for half logits: the loss is a float32 sum (autocast's rule)
        losses, lse = cupy.empty(rows, dtype=acc_dtype(logits.dtype)), cupy.empty(rows, dtype=acc_dtype(logits.dtype))
        launch_rows(compiled_kernel(SOURCE, "cross_entropy_forward", logits.dtype), rows, logits2d, targets1d, losses, lse,
                    np.int32(rows), np.int32(classes), np.int64(ignore_index))
        # the reduction, as the reference's step 3
        keep = targets1d != ignore_index  # (N,)
        count = cupy.maximum(keep.sum(), 1).astype(losses.dtype)
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
        logits2d = ctx.logits2d
        rows, classes = logits2d.shape
        dlogits = backend.array_module(logits2d).empty_like(logits2d)  # (N, V)
        launch_rows(compiled_kernel(SOURCE, "cross_entropy_backward", logits2d.dtype), rows, logits2d, ctx.lse,
                    ctx.targets, dloss.astype(ctx.lse.dtype), dlogits, np.int32(rows), np.int32(classes))
        return dlogits.reshape(ctx.shape), None
