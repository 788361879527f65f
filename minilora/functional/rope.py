"""Rotary position embedding (RoPE, Su et al. 2021) in the rotate-half layout of transformers' Llama.

Shapes: x (..., T, D) -> (..., T, D), D even; position t of the T is ``offset + t``
(``offset`` = the number of positions already in a KV cache).

Each pair of channels (i, i + D/2) is a 2-d vector, turned by the angle
pos * theta^(-2i/D). A query and a key turned by their own positions then have
a dot product that depends only on the distance between them. Written as one
formula over the whole vector, with rotate_half(x) = (-x2, x1) for x = (x1, x2):

    y = x cos + rotate_half(x) sin

(llama.cpp pairs channels (2i, 2i + 1) instead; models/llama_gguf.py undoes that layout.)
"""
from .. import backend
from ..autograd import Function


def rope_angles(xp, T, D, theta, offset, dtype):
    """cos, sin (T, D) of the angles (offset + t) theta^(-2i/D), each frequency written twice (for x1 and x2)."""
    inv_freq = 1.0 / theta ** (xp.arange(0, D, 2, dtype=xp.float64) / D)  # (D/2,)
    angles = xp.arange(offset, offset + T, dtype=xp.float64)[:, None] * inv_freq  # (T, D/2)
    angles = xp.concatenate([angles, angles], axis=-1)  # (T, D)
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) over the last axis: a quarter turn of every pair (x1[i], x2[i])."""
    xp = backend.array_module(x)
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return xp.concatenate([-x2, x1], axis=-1)


class RoPE(Function):
    """y = x cos + rotate_half(x) sin.  x (..., T, D) -> y (..., T, D); ctx keeps cos, sin (T, D)."""

    @staticmethod
    def forward(ctx, x, theta, offset):
        xp = backend.array_module(x)
        cos, sin = rope_angles(xp, x.shape[-2], x.shape[-1], theta, offset, x.dtype)  # (T, D) each
        ctx.cos, ctx.sin = cos, sin
        return x * cos + rotate_half(x) * sin

    @staticmethod
    def backward(ctx, grad):
        # A rotation's transpose turns back by the same angle: dx = dy cos - rotate_half(dy sin)
        # (rotate_half^T = -rotate_half, and sin is the same on both halves).
        return grad * ctx.cos - rotate_half(grad * ctx.sin), None, None


def rope(x, theta=10000.0, offset=0):
    """Rotary position embedding of x (..., T, D) for positions offset .. offset + T - 1 (rotate-half layout)."""
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"rope: x must be (..., T, D) with an even D (channels pair up), got shape {tuple(x.shape)}")
    if offset < 0:
        raise ValueError(f"rope: offset must be >= 0 (the number of cached positions), got {offset}")
    return RoPE.apply(x, float(theta), int(offset))
