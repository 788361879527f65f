"""lora_linear with its products through ``backend.matmul``: h (..., d) = x W0^T + b + s (x A^T) B^T.

The reference (minilora/lora/function.py) with every ``@`` handed to cuBLAS
directly, so that a CUDA graph can record it (minilora.fused.graph; CuPy
refuses its own cuBLAS calls while recording). The steps and their numbers
are the reference's; docs/lora.md derives them.
"""
from .. import backend
from ..lora.function import LoRALinearFunction


class CublasLoRALinear(LoRALinearFunction):
    """LoRALinearFunction's inputs and outputs; shapes in the paper's letters as there."""

    @staticmethod
    def forward(ctx, x, W0, b, A, B, scaling, dropout_mask=None):
        k = W0.shape[1]
        x_shape = x.shape
        x = x.reshape(-1, k)  # (N, k)
        mask = None if dropout_mask is None else dropout_mask.reshape(-1, k)  # (N, k)
        x_lora = x if mask is None else x * mask  # (N, k)
        h = backend.matmul(x, W0.T)  # 1. the frozen path (N, d)
        z = backend.matmul(x_lora, A.T)  # 2. down to r (N, r),
        h += scaling * backend.matmul(z, B.T)  # and up to d
        if b is not None:  # 3. the bias
            h += b
        ctx.x, ctx.x_lora, ctx.z, ctx.W0, ctx.A, ctx.B = x, x_lora, z, W0, A, B
        ctx.scaling, ctx.mask, ctx.x_shape = scaling, mask, x_shape
        return h.reshape(x_shape[:-1] + (W0.shape[0],))  # (..., d)

    @staticmethod
    def backward(ctx, dh):
        need_x, need_W0, need_b, need_A, need_B = ctx.needs_input_grad[:5]
        s = ctx.scaling
        dh = dh.reshape(-1, dh.shape[-1])  # (N, d)
        db = backend.sum_over_rows(dh) if need_b else None  # 3. (d,)
        dz = s * backend.matmul(dh, ctx.B) if (need_x or need_A) else None  # 2. (N, r)
        dB = s * backend.matmul(dh.T, ctx.z) if need_B else None  # (d, r)
        dA = backend.matmul(dz.T, ctx.x_lora) if need_A else None  # (r, k)
        dW0 = backend.matmul(dh.T, ctx.x) if need_W0 else None  # 1. (d, k)
        dx = None
        if need_x:
            dx_lora = backend.matmul(dz, ctx.A)  # (N, k)
            if ctx.mask is not None:
                dx_lora = dx_lora * ctx.mask
            dx = (backend.matmul(dh, ctx.W0) + dx_lora).reshape(ctx.x_shape)
        return dx, dW0, db, dA, dB, None
