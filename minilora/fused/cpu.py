"""NumPy variants that pay on a CPU: the same math as the references, computed in place.

On a CPU every fresh temporary the size of the activations costs an allocation
and page faults on first touch; a chain of them made GPT-2's tanh gelu slower
than all of the MLP's matmuls. These two ops, whose arrays are the step's
largest ((B, T, 4C) and (B, H, T, T)), are the ones where working in one or two
buffers saved at least 5 % of the classroom step (docs/performance.md); layer
norm and cross-entropy did not, so their references run on the CPU. Each is
tested equal to its reference in float64 and gradient-checked
(tests/test_fused_cpu.py).

    InPlaceGeluTanh                    x (...) -> y (...)
    InPlaceScaledDotProductAttention   q (B, H, T, D), k, v (B, H, S, D) -> (B, H, T, D)
"""
from .. import backend
from ..functional.attention import ScaledDotProductAttention, causal_mask
from ..functional.elementwise import _SQRT_2_OVER_PI, GeluTanh


class InPlaceGeluTanh(GeluTanh):
    """GeluTanh's forward and backward, each in one or two buffers (``*=``, ``out=``)."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.array_module(x)
        t = x * x
        t *= 0.044715
        t += 1
        t *= x
        t *= _SQRT_2_OVER_PI  # u = sqrt(2/pi) x (1 + 0.044715 x^2)
        xp.tanh(t, out=t)  # t = tanh(u)
        ctx.x, ctx.t = x, t
        y = t + 1
        y *= x
        y *= 0.5  # y = 0.5 x (1 + t)
        return y

    @staticmethod
    def backward(ctx, dy):
        xp = backend.array_module(dy)
        x, t = ctx.x, ctx.t
        du_dx = x * x
        du_dx *= 3 * 0.044715 * _SQRT_2_OVER_PI
        du_dx += _SQRT_2_OVER_PI  # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        dx = t * t
        xp.subtract(1, dx, out=dx)  # 1 - t^2
        dx *= x
        dx *= du_dx
        dx += 1
        dx += t
        dx *= 0.5  # dy/dx = 0.5 (1 + t + x (1 - t^2) du/dx)
        dx *= dy
        return dx


class InPlaceScaledDotProductAttention(ScaledDotProductAttention):
    """ScaledDotProductAttention with the (B, H, T, S) scores, probabilities and their gradients each in one buffer."""

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale, causal=False):
        xp = backend.array_module(q)
        # 1. scores = q k^T * scale
        scores = q @ k.swapaxes(-1, -2)  # (B, H, T, S)
        scores *= scale
        # 2. the mask, added in place (it is small: (T, S) or (B, 1, 1, S))
        if causal:
            past_and_self = causal_mask(xp, q.shape[-2], k.shape[-2])  # (T, S)
            allowed = past_and_self if allowed is None else allowed & past_and_self
        if allowed is not None:
            scores += xp.where(allowed, 0.0, -xp.inf).astype(scores.dtype)
        # 3. softmax over the keys, in the scores' buffer
        scores -= scores.max(axis=-1, keepdims=True)
        probs = xp.exp(scores, out=scores)
        probs /= probs.sum(axis=-1, keepdims=True)  # (B, H, T, S)
        # 4. weighted sum of values
        ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale = q, k, v, probs, scale
        return probs @ v  # (B, H, T, D)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, probs, scale = ctx.q, ctx.k, ctx.v, ctx.probs, ctx.scale
        # 4. dP = dout v^T, dv = P^T dout
        dprobs = dout @ v.swapaxes(-1, -2)  # (B, H, T, S)
        dv = probs.swapaxes(-1, -2) @ dout  # (B, H, S, D)
        # 3. dscores = P (dP - sum(dP P)), built in dP's buffer
        dprobs -= (dprobs * probs).sum(axis=-1, keepdims=True)
        dscores = dprobs
        dscores *= probs  # (B, H, T, S)
        # 1. dq = s dscores k, dk = s dscores^T q
        dq = dscores @ k
        dq *= scale
        dk = dscores.swapaxes(-1, -2) @ q
        dk *= scale
        return dq, dk, dv, None, None, None
