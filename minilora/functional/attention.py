"""Scaled dot-product attention, its backward built on softmax's.

Shapes: q (B, H, T, D), k and v (B, H, S, D) -> (B, H, T, D)
(any leading axes work; T queries attend over S keys).
attn_mask: boolean, broadcastable to (B, H, T, S), True where a query may look
(torch's convention), e.g. a padding mask of shape (B, 1, 1, S).
"""
import math

from .. import backend
from ..autograd import Function, Tensor
from .softmax import log_softmax_forward, softmax_backward


def causal_mask(xp, T, S):
    """(T, S) boolean: query t, at position S - T + t, may see keys 0 .. S - T + t (itself and the past)."""
    # BEGIN SOLUTION 16 "Attention with the causal mask"
    return xp.tril(xp.ones((T, S), dtype=bool), k=S - T)
    # END SOLUTION 16


class ScaledDotProductAttention(Function):
    """out = softmax(q k^T * scale + mask) v.

    Inputs: q (B, H, T, D), k and v (B, H, S, D), allowed (a boolean keep-mask broadcastable to (B, H, T, S),
    or None), scale (a number), causal (query t sees keys 0 .. S - T + t). Output: out (B, H, T, D).
    ctx keeps: q, k, v, probs (B, H, T, S), scale.
    Backward: docs/derivations.md#attention-functionalattentionpy.
    """

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale, causal=False):
        xp = backend.array_module(q)
        # 1. scores = q k^T * scale
        scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, T, S)
        # 2. masked positions get -inf, so softmax gives them exactly 0
        if causal:
            past_and_self = causal_mask(xp, q.shape[-2], k.shape[-2])  # (T, S)
            allowed = past_and_self if allowed is None else allowed & past_and_self
        if allowed is not None:
            scores = xp.where(allowed, scores, -xp.inf)  # (B, H, T, S)
        # 3. probabilities over the keys
        probs = xp.exp(log_softmax_forward(scores, axis=-1))  # (B, H, T, S)
        # 4. weighted sum of values
        ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale = q, k, v, probs, scale
        return probs @ v  # (B, H, T, D)

    @staticmethod
    def backward(ctx, dout):
        # BEGIN SOLUTION 16 "Attention with the causal mask"
        q, k, v, probs, scale = ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale
        # 4. out = P v  =>  dP = dout v^T, dv = P^T dout
        dprobs = dout @ v.swapaxes(-1, -2)  # (B, H, T, S)
        dv = probs.swapaxes(-1, -2) @ dout  # (B, H, S, D)
        # 3. P = softmax(scores)  =>  dscores = P (dP - sum(dP P)), softmax's own backward
        dscores = softmax_backward(probs, dprobs, axis=-1)  # (B, H, T, S)
        # 2. masked scores have P = 0, so dscores is already 0 there
        # 1. scores = q k^T s  =>  dq = s dscores k, dk = s dscores^T q
        dq = scale * (dscores @ k)  # (B, H, T, D)
        dk = scale * (dscores.swapaxes(-1, -2) @ q)  # (B, H, S, D)
        return dq, dk, dv, None, None, None
        # END SOLUTION 16


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
    return ScaledDotProductAttention.apply(q, k, v, allowed, scale, causal=is_causal)
