"""The fused LoRA linear op: h = x W0^T + b + s (x A^T) B^T, with its backward written out.

Shapes (PyTorch layout, the paper's letters):
    x  (..., k)   input            W0 (d, k)  frozen pretrained weight
    b  (d,)       bias or None     A  (r, k)  down-projection
    B  (d, r)     up-projection    s          scaling, alpha / r (or alpha / sqrt(r))
    h  (..., d)

Writing the low-rank path as (x A^T) B^T, never as x (B A)^T, is the point of
LoRA: the d x k update matrix is never formed, and the product costs
2 N r (k + d) FLOPs instead of 2 N d k.
"""
from .. import backend
from ..autograd import Function


class LoRALinearFunction(Function):
    """forward(ctx, x, W0, b, A, B, scaling, dropout_mask=None) -> h (..., d).

    ``dropout_mask`` (..., k), if given, is LoRA dropout: the low-rank path sees
    x * mask (the mask already holds the 1/(1-p) factor), the frozen path sees x.
    """

    @staticmethod
    def forward(ctx, x, W0, b, A, B, scaling, dropout_mask=None):
        k = W0.shape[1]
        if x.shape[-1] != k or A.ndim != 2 or A.shape[1] != k or B.shape != (W0.shape[0], A.shape[0]):
            raise ValueError(
                f"lora_linear: shapes do not fit h = x W0^T + s (x A^T) B^T: x {tuple(x.shape)}, "
                f"W0 {tuple(W0.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}. Need x (..., k), "
                "W0 (d, k), A (r, k), B (d, r)."
            )
        x2 = x.reshape(-1, k)  # (N, k), N = all leading axes
        xd = x2 if dropout_mask is None else x2 * dropout_mask.reshape(-1, k)  # (N, k)
        # 1. the frozen path
        h = x2 @ W0.T  # (N, d)
        # 2. the low-rank path, down then up; xa is kept for dB
        xa = xd @ A.T  # (N, r)
        h += scaling * (xa @ B.T)  # (N, d)
        # 3. the bias
        if b is not None:
            h += b
        ctx.x2, ctx.xd, ctx.xa, ctx.W0, ctx.A, ctx.B = x2, xd, xa, W0, A, B
        ctx.scaling, ctx.mask, ctx.x_shape = scaling, dropout_mask, x.shape
        return h.reshape(x.shape[:-1] + (W0.shape[0],))  # (..., d)

    @staticmethod
    def backward(ctx, grad):
        need_x, need_W0, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])  # (N, d)
        # Steps in reverse. 3. h = ... + b  =>  db = sum over rows of dh
        db = backend.sum_over_rows(g) if need_b else None
        # 2. h = ... + s xa B^T  =>  dB = s dh^T xa, d(xa) = s dh B;  xa = xd A^T  =>  dA = d(xa)^T xd
        gB = g @ ctx.B if (need_x or need_A) else None  # (N, r): dh B, shared by dx and dA
        dB = s * (g.T @ ctx.xa) if need_B else None  # (d, r)
        dA = s * (gB.T @ ctx.xd) if need_A else None  # (r, k)
        # 1. h = x W0^T  =>  dW0 = dh^T x; a frozen W0 never pays for this (d, k) product
        dW0 = g.T @ ctx.x2 if need_W0 else None  # (d, k)
        dx = None
        if need_x:
            low_rank = s * (gB @ ctx.A)  # (N, k): the gradient through the low-rank path
            if ctx.mask is not None:
                low_rank *= ctx.mask.reshape(low_rank.shape)
            dx = (g @ ctx.W0 + low_rank).reshape(ctx.x_shape)  # dx = dh W0 + s (dh B) A [* mask]
        return dx, dW0, db, dA, dB, None


def lora_linear(x, W0, b, A, B, scaling, dropout_mask=None):
    """h = x W0^T + b + scaling * (x A^T) B^T; see LoRALinearFunction for shapes."""
    return LoRALinearFunction.apply(x, W0, b, A, B, scaling, dropout_mask=dropout_mask)
