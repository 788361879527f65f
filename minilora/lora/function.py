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
from ..autograd import Function


class LoRALinearFunction(Function):
    """h = x W0^T + b + s (x A^T) B^T.

    Inputs: x (..., k), W0 (d, k), b (d,) or None, A (r, k), B (d, r), scaling s (a number),
    dropout_mask (..., k) or None: LoRA dropout, the low-rank path sees x * mask (the mask
    already holds the 1/(1-p) factor), the frozen path sees x. Output: h (..., d).
    ctx keeps: x (N, k), x_lora (N, k), z (N, r), W0, A, B, s, the mask (N = all leading axes).
    Backward: docs/lora.md#2-the-gradient-of-lora_linear-step-by-step.
    """

    @staticmethod
    def forward(ctx, x, W0, b, A, B, scaling, dropout_mask=None):
        k = W0.shape[1]
        x_shape = x.shape
        x = x.reshape(-1, k)  # (N, k)
        mask = None if dropout_mask is None else dropout_mask.reshape(-1, k)  # (N, k)
        x_lora = x if mask is None else x * mask  # (N, k): what the low-rank path sees
        # BEGIN SOLUTION 20 "lora_linear forward and backward"
        # 1. the frozen path
        h = x @ W0.T  # (N, d)
        # 2. the low-rank path: down to r, then up to d; z is kept for dB
        z = x_lora @ A.T  # (N, r)
        h += scaling * (z @ B.T)  # (N, d)
        # 3. the bias
        if b is not None:
            h += b
        # END SOLUTION 20
        ctx.x, ctx.x_lora, ctx.z, ctx.W0, ctx.A, ctx.B = x, x_lora, z, W0, A, B
        ctx.scaling, ctx.mask, ctx.x_shape = scaling, mask, x_shape
        return h.reshape(x_shape[:-1] + (W0.shape[0],))  # (..., d)

    @staticmethod
    def backward(ctx, dh):
        # BEGIN SOLUTION 20 "lora_linear forward and backward"
        need_x, need_W0, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        s = ctx.scaling
        dh = dh.reshape(-1, dh.shape[-1])  # (N, d)
        # Steps in reverse. 3. h = ... + b  =>  db = sum over rows of dh
        db = dh.sum(0) if need_b else None  # (d,)
        # 2. h = ... + s z B^T  =>  dB = s dh^T z, dz = s dh B;  z = x_lora A^T  =>  dA = dz^T x_lora, dx_lora = dz A
        dz = s * (dh @ ctx.B) if (need_x or need_A) else None  # (N, r)
        dB = s * (dh.T @ ctx.z) if need_B else None  # (d, r)
        dA = dz.T @ ctx.x_lora if need_A else None  # (r, k)
        # 1. h = x W0^T  =>  dW0 = dh^T x; a frozen W0 never pays for this (d, k) product
        dW0 = dh.T @ ctx.x if need_W0 else None  # (d, k)
        dx = None
        if need_x:
            dx_lora = dz @ ctx.A  # (N, k)
            if ctx.mask is not None:
                dx_lora = dx_lora * ctx.mask  # x_lora = x * mask
            dx = (dh @ ctx.W0 + dx_lora).reshape(ctx.x_shape)  # both paths start at x
        return dx, dW0, db, dA, dB, None
        # END SOLUTION 20


def lora_linear(x, W0, b, A, B, scaling, dropout_mask=None):
    """h = x W0^T + b + scaling * (x A^T) B^T; see LoRALinearFunction for shapes."""
    k = W0.shape[1]
    if x.shape[-1] != k or A.ndim != 2 or A.shape[1] != k or B.shape != (W0.shape[0], A.shape[0]):
        raise ValueError(
            f"lora_linear: shapes do not fit h = x W0^T + s (x A^T) B^T: x {tuple(x.shape)}, "
            f"W0 {tuple(W0.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}. Need x (..., k), "
            "W0 (d, k), A (r, k), B (d, r)."
        )
    return LoRALinearFunction.apply(x, W0, b, A, B, scaling, dropout_mask=dropout_mask)
