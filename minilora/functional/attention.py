"""Scaled dot-product attention with one fused backward.

Shapes: q (B, H, T, D), k and v (B, H, S, D) -> (B, H, T, D)
(any leading axes work; T queries attend over S keys).
attn_mask: boolean, broadcastable to (B, H, T, S), True where a query may look
(torch's convention), e.g. a padding mask of shape (B, 1, 1, S).
"""
import math

from .. import backend
from ..autograd import Function, Tensor


def causal_mask(xp, T, S):
    """(T, S) boolean: query t, at position S - T + t, may see keys 0 .. S - T + t (itself and the past)."""
    return xp.tril(xp.ones((T, S), dtype=bool), k=S - T)


class ScaledDotProductAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v, allowed, scale, causal=False):
        xp = backend.array_module(q)
        # 1. scores = q k^T * scale
        scores = q @ k.swapaxes(-1, -2)  # (B, H, T, S)
        scores *= scale
        # 2. masked positions get -inf, so softmax gives them exactly 0 (added in place: no new (B, H, T, S) array)
        if causal:
            past_and_self = causal_mask(xp, q.shape[-2], k.shape[-2])  # (T, S)
            allowed = past_and_self if allowed is None else allowed & past_and_self
        if allowed is not None:
            scores += xp.where(allowed, 0.0, -xp.inf).astype(scores.dtype)  # the mask is small: (T, S) or (B, 1, 1, S)
        # 3. probabilities over the keys: softmax, in place (this (B, H, T, S) array is the largest here)
        scores -= scores.max(axis=-1, keepdims=True)  # exp of a large score would overflow; the shift cancels
        probs = xp.exp(scores, out=scores)
        probs /= probs.sum(axis=-1, keepdims=True)  # (B, H, T, S)
        # 4. weighted sum of values
        ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale = q, k, v, probs, scale
        return probs @ v  # (B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs, scale = ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale
        # 4. out = P v  =>  dP = dout v^T, dv = P^T dout
        dprobs = grad @ v.swapaxes(-1, -2)  # (B, H, T, S)
        dv = probs.swapaxes(-1, -2) @ grad  # (B, H, S, D)
        # 3. P = softmax(scores)  =>  dscores = P * (dP - sum(dP * P, keys)), built in dP's buffer
        row_dot = (dprobs * probs).sum(axis=-1, keepdims=True)  # (B, H, T, 1)
        dprobs -= row_dot
        dscores = dprobs
        dscores *= probs  # (B, H, T, S)
        # 2. masked scores have P = 0, so dscores is already 0 there
        # 1. scores = q k^T s  =>  dq = dscores k s, dk = dscores^T q s
        dq = dscores @ k
        dq *= scale
        dk = dscores.swapaxes(-1, -2) @ q
        dk *= scale
        return dq, dk, dv, None, None, None


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """softmax(q k^T / sqrt(D) + mask) v, as torch.nn.functional.scaled_dot_product_attention.

    ``is_causal`` lets query t see keys 0..t (aligned at the end when S > T,
    as with a KV cache); ``attn_mask`` is a boolean keep-mask. A query row with
    no visible key would be 0/0, so it raises instead.
    """
    T, S = q.shape[-2], k.shape[-2]
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit (q, k share D; k, v share S)")
    allowed = None
    if attn_mask is not None:
        allowed = attn_mask.data if isinstance(attn_mask, Tensor) else backend.asarray(attn_mask, like=q.data)
        if allowed.dtype != bool:
            raise TypeError(f"attention: attn_mask must be boolean (True = may attend), got {allowed.dtype}")
        visible = allowed & causal_mask(backend.array_module(allowed), T, S) if is_causal else allowed
        if not bool(visible.any(axis=-1).all()):
            raise ValueError("attention: some query can see no key (a whole mask row is False). Fix: let every query see at least itself.")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    # On the GPU a fused kernel does steps 1-3 (minilora.fused); it is tested equal to this reference.
    attention = backend.fused_or_reference(ScaledDotProductAttention, q.data)
    return attention.apply(q, k, v, allowed, scale, causal=is_causal)
