"""Text generation: greedy decoding, temperature and top-k sampling, with a KV cache.

Each step needs the logits of the last position only. Without a cache the
model re-reads the whole sequence every step (O(T^2) work for T tokens); with
one, each layer keeps the keys and values it has computed (k, v concatenated
along time, see nn.KVCache) and the model reads just the newest token at
position ``len(cache)``.

Shapes: B batch, T time, V vocab. Sampling draws on the host from a seeded
numpy Generator, so one seed gives one continuation on every backend.
"""
import numbers

import numpy as np

from . import backend
from .autograd import Tensor, no_grad


def _is_integer(n):
    """A Python or NumPy integer, not a bool (True is an int in Python, but never a count of tokens)."""
    return isinstance(n, numbers.Integral) and not isinstance(n, (bool, np.bool_))


def sample_next(logits, temperature=1.0, top_k=None, greedy=False, rng=None):
    """Pick one token per row of ``logits`` (B, V), a host array; returns ids (B,).

    greedy: the argmax. Otherwise softmax(logits / temperature) restricted to
    the ``top_k`` largest logits (all of them when None), sampled with ``rng``.
    """
    if greedy:
        return logits.argmax(axis=-1)  # (B,)
    logits = logits.astype(np.float64) / temperature  # (B, V)
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]  # (B, 1): the k-th largest logit
        logits = np.where(logits < kth, -np.inf, logits)  # (B, V); ties with the k-th all stay
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (B, V)
    cdf = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)  # (B, V)
    u = rng.random((len(cdf), 1))  # (B, 1): inverse-CDF sampling, one uniform number per row
    return np.minimum((cdf < u).sum(axis=-1), cdf.shape[-1] - 1)  # (B,); the min guards cdf[-1] rounding below u


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, greedy=False, rng=None, use_cache=True):
    """Append ``max_new_tokens`` tokens to ``idx`` (B, T); returns the whole (B, T + max_new_tokens) as a NumPy array.

    rng: a numpy Generator or an int seed (None: fresh entropy). The model runs
    under no_grad in eval mode (dropout off); its modes are restored afterwards.
    Once the sequence outgrows block_size, the model sees the last block_size
    tokens; positions then shift every step, so the cache is rebuilt each step.
    """
    idx = backend.to_numpy(idx.data if isinstance(idx, Tensor) else idx)
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"generate: idx must be (B, T) integer token ids with T >= 1, got shape {idx.shape}, dtype {idx.dtype}")
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    if not _is_integer(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}. "
                         "Fix: the number of tokens to append, e.g. 50.")
    if not greedy and not temperature > 0:  # also refuses NaN
        raise ValueError(f"generate: temperature must be > 0, got {temperature}. Fix: greedy=True for the argmax.")
    if top_k is not None and not (_is_integer(top_k) and 1 <= top_k <= vocab_size):
        raise ValueError(f"generate: top_k must be an integer in [1, vocab_size={vocab_size}], got {top_k!r}. "
                         "Fix: top_k=None to sample from every token.")
    rng = rng if isinstance(rng, np.random.Generator) else backend.default_rng(rng)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            cache, fed = None, 0  # fed: how many tokens of idx the cache already holds
            for _ in range(max_new_tokens):
                if not use_cache or cache is None or idx.shape[1] > block_size:
                    cache = model.new_kv_cache() if use_cache else None
                    window = idx[:, -block_size:]  # (B, T'): the model knows block_size positions only
                else:
                    window = idx[:, fed:]  # (B, 1): only the token the cache has not seen
                logits, _ = model(window, kv_cache=cache)  # (B, T', V)
                fed = idx.shape[1]
                last = backend.to_numpy(logits.data[:, -1, :])  # (B, V)
                next_ids = sample_next(last, temperature, top_k, greedy, rng)  # (B,)
                idx = np.concatenate([idx, next_ids[:, None].astype(idx.dtype)], axis=1)  # (B, T + 1)
    finally:
        for m, training in modes:
            m.training = training
    return idx
