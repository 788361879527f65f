"""Attention's softmax, scaled and causally masked in one kernel each way.

Shapes: q (B, H, T, D), k and v (B, H, S, D) -> (B, H, T, D); the scores and
probabilities are (B, H, T, S), the largest arrays of the step. The reference
scales them, adds the mask, subtracts the max, takes exp and divides: five
passes. Here one warp per (b, h, t) row does it in place, skipping the keys
that the causal mask hides, and the backward (softmax.py's kernel, with the
scale) writes scale * dscores over dP, so dq = dscores k needs no further pass.

In float16 and bfloat16 (autocast's attention) the flash kernels of
flash_attention.py take over where they can (head dimension 32, 64 or 128):
they keep no (B, H, T, S) array at all.
"""
import numpy as np

from .. import backend
from ..functional.attention import ScaledDotProductAttention
from ._cuda import acc_scalar, compiled_kernel, fusable, launch_rows
from .flash_attention import SUPPORTED_HEAD_DIMS, flash_attention_backward, flash_attention_forward
from .softmax import SOURCE as SOFTMAX_SOURCE

SOURCE = r"""
// scores (rows = B*H*T, cols = S) hold q k^T; in place they become P = softmax(scale * scores + causal mask).
// Query t = row % queries is position t + (cols - queries) (the keys end with the queries, as with a KV cache),
// so causally it sees keys 0 .. t + cols - queries.
template <typename T>
__global__ void attention_softmax_forward(T* scores, int rows, int cols, int queries, int causal, acc_t<T> scale) {
    using A = acc_t<T>;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    scores += (long long)row * cols;
    int last = causal ? row % queries + cols - queries : cols - 1;  // the last key this query may see
    A m = NEGATIVE_INFINITY;
    for (int c = lane; c <= last; c += 32) m = fmax(m, to_acc(scores[c]) * scale);
    m = warp_max(m);
    A s = 0;
    for (int c = lane; c <= last; c += 32) s += exp(to_acc(scores[c]) * scale - m);
    s = warp_sum(s);
    for (int c = lane; c < cols; c += 32) scores[c] = from_acc<T>(c <= last ? exp(to_acc(scores[c]) * scale - m) / s : (A)0);
}
"""


class FusedScaledDotProductAttention(ScaledDotProductAttention):
    """The reference's inputs. The kernels know only the causal mask: a user's mask (``allowed``) takes the reference path.

    float16 and bfloat16 with a head dimension of 32, 64 or 128 go to the flash
    kernels (flash_attention.py), which never materialise the (T, S) scores;
    other dtypes and shapes materialise them and run the row kernels below.
    """

    @staticmethod
    def runs_fused(q, k, v, allowed, scale, causal=False):
        return fusable(q, k, v) and allowed is None

    @staticmethod
    def runs_flash(q, k, v, causal):
        T, S = q.shape[-2], k.shape[-2]
        return (q.dtype.itemsize == 2 and q.shape[-1] in SUPPORTED_HEAD_DIMS and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
                and not (causal and S < T))

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale, causal=False):
        ctx.fused = FusedScaledDotProductAttention.runs_fused(q, k, v, allowed, scale, causal)
        if not ctx.fused:
            return ScaledDotProductAttention.forward(ctx, q, k, v, allowed, scale, causal)
        ctx.flash = FusedScaledDotProductAttention.runs_flash(q, k, v, causal)
        if ctx.flash:
            out, lse = flash_attention_forward(q, k, v, scale, causal)
            ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale, ctx.causal = q, k, v, out, lse, scale, causal
            return out
        T, S = q.shape[-2], k.shape[-2]
        # 1. scores = q k^T (cuBLAS writes a fresh contiguous array)
        scores = backend.matmul(q, k.swapaxes(-1, -2))  # (B, H, T, S)
        rows = scores.size // S if S else 0
        # 2.+3. scale, mask and softmax in place
        kernel = compiled_kernel(SOURCE, "attention_softmax_forward", q.dtype)
        launch_rows(kernel, rows, scores, np.int32(rows), np.int32(S), np.int32(T), np.int32(causal),
                    acc_scalar(q.dtype, scale))
        probs = scores
        ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale = q, k, v, probs, scale
        # 4. weighted sum of values
        return backend.matmul(probs, v)  # (B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return ScaledDotProductAttention.backward(ctx, grad)
        if ctx.flash:
            dq, dk, dv = flash_attention_backward(ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, grad, ctx.scale, ctx.causal)
            return dq, dk, dv, None, None, None
        cupy = backend.array_module(grad)
        q, k, v, probs = ctx.q, ctx.k, ctx.v, ctx.probs
        # 4. out = P v  =>  dP = dout v^T, dv = P^T dout. CuPy would copy a transposed (T, S) operand
        # first (as long as the product itself), so P^T dout is taken as (dout^T P)^T: only the small one moves.
        dprobs = cupy.ascontiguousarray(backend.matmul(grad, v.swapaxes(-1, -2)))  # (B, H, T, S)
        dv = backend.matmul(grad.swapaxes(-1, -2), probs).swapaxes(-1, -2)  # (B, H, S, D)
        # 3.+2. P = softmax(scale scores)  =>  dscores = scale P (dP - sum(dP P)), in dP's buffer.
        # Hidden keys have P = 0, so their dscores is 0 with no test.
        rows, S = probs.size // probs.shape[-1], probs.shape[-1]
        kernel = compiled_kernel(SOFTMAX_SOURCE, "softmax_backward", probs.dtype)
        launch_rows(kernel, rows, probs, dprobs, dprobs, np.int32(rows), np.int32(S), acc_scalar(probs.dtype, ctx.scale))
        dscores = dprobs
        # 1. scores = q k^T  =>  dq = dscores k, dk = dscores^T q = (q^T dscores)^T (the scale is already in dscores)
        dq, dk = backend.matmul(dscores, k), backend.matmul(q.swapaxes(-1, -2), dscores).swapaxes(-1, -2)
        return dq, dk, dv, None, None, None
