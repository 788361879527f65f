"""GPT: a decoder-only Transformer language model in the shape of GPT-2.

Dimension legend (used in every shape comment below):
    B batch, T time (sequence length), C channels (n_embd), H heads,
    D = C / H channels per head, V vocab, S keys attended (len(cache) + T);
    r the rank of a LoRA adapter (minilora/lora), R the rank of PEFT's stacked c_attn adapter

    idx (B, T) -> wte + wpe -> drop -> blocks (pre-LN) -> ln_f -> lm_head -> logits (B, T, V)

Weights are laid out as PyTorch's (Linear weight is (out, in)). GPT-2's own
checkpoints (Conv1D weights (in, out), fused q/k/v) are converted once by
``gpt2_checkpoint.py``; see docs/model.md for the map.
"""
import dataclasses
import math

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor
from ..nn import Block, Dropout, Embedding, KVCache, LayerNorm, Linear, Module, ModuleList


@dataclasses.dataclass
class GPTConfig:
    """The shape of a GPT. The defaults are GPT-2 small (124M parameters)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024  # the longest sequence: the number of learned positions
    vocab_size: int = 50257
    dropout: float = 0.0
    bias: bool = True  # biases in every Linear and LayerNorm, as GPT-2
    tie_weights: bool = True  # lm_head reuses wte's matrix, as GPT-2
    layer_norm_epsilon: float = 1e-5
    seed: int = 0  # one seed gives one model (weights and dropout masks)


class GPT(Module):
    """A GPT language model. ``GPT(config)(idx, targets)`` -> (logits (B, T, V), loss or None)."""

    config_class = GPTConfig  # what from_pretrained builds from a config.json (transformers' name)
    lora_target_modules = ("q", "v")  # LoraConfig(target_modules=None): Wq and Wv, the paper's choice

    def __init__(self, config):
        super().__init__()
        self.config = config
        rng = backend.default_rng(config.seed)  # the one random stream: init first, then dropout masks
        c = config
        self.wte = Embedding(c.vocab_size, c.n_embd, rng=rng)
        self.wpe = Embedding(c.block_size, c.n_embd, rng=rng)
        self.drop = Dropout(c.dropout, rng=rng)
        self.blocks = ModuleList(
            Block(c.n_embd, c.n_head, c.dropout, c.bias, c.layer_norm_epsilon, rng=rng) for _ in range(c.n_layer)
        )
        self.ln_f = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False, rng=rng)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight  # one Parameter in two places: gradients from both add up
        self._init_weights(rng)

    def _init_weights(self, rng):
        """GPT-2's init: N(0, 0.02) matrices, zero biases, and residual projections scaled by 1/sqrt(2 n_layer).

        Each block adds two outputs (attn.o, mlp.c_proj) to the residual stream,
        so its variance would grow with depth; the scale keeps it near constant.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data = backend.xp().zeros(p.shape, dtype=p.dtype)
            elif ".ln_" not in name and not name.startswith("ln_f."):  # LayerNorm weights stay 1
                std = residual_std if name.endswith(("attn.o.weight", "mlp.c_proj.weight")) else 0.02
                p.data = backend.randn(p.shape, rng) * std

    def new_kv_cache(self):
        """An empty KVCache per block, for ``forward(..., kv_cache=...)`` during generation."""
        return [KVCache() for _ in self.blocks]

    def forward(self, idx, targets=None, attention_mask=None, kv_cache=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss).

        targets (B, T): the next token at each position; -100 marks positions
        to leave out of the loss. loss is None without targets.
        attention_mask (B, S): 1 for real tokens, 0 for padding, over every
        position a query may see (cached ones first). A padded query still
        sees itself, so its softmax row is never empty; its output is junk and
        its target should be -100.
        kv_cache: the list from ``new_kv_cache()``; the new positions continue
        after the cached ones.
        """
        # idx stays where it is: the embedding checks host ids on the host, so a GPU step never waits for that.
        idx = F.ids_array(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (B, T) token ids, got shape {tuple(idx.shape)}. Fix: idx[None] for one sequence.")
        B, T = idx.shape
        if T == 0:
            raise ValueError(f"GPT: idx has shape {(B, T)}: a sequence needs at least one token. "
                             "Fix: start each sequence with a token, e.g. the tokenizer's first or end-of-text id.")
        past = 0 if kv_cache is None else len(kv_cache[0])
        if past + T > self.config.block_size:
            raise ValueError(
                f"GPT: sequence of {past + T} tokens ({past} cached + {T} new) is longer than "
                f"block_size={self.config.block_size}, the number of learned positions. "
                f"Fix: crop to the last {self.config.block_size} tokens or build a model with a larger block_size."
            )
        pos = np.arange(past, past + T)  # (T,), on the host like a batch of ids
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        mask = None if attention_mask is None else self._keep_mask(attention_mask, B, T, past + T, self.wte.weight.data)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask=mask, kv_cache=None if kv_cache is None else kv_cache[i])  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=-100)
        return logits, loss

    @staticmethod
    def _keep_mask(attention_mask, B, T, S, weight):
        """(B, S) 1/0 padding mask -> boolean keep-mask (B, 1, T, S), beside ``weight``, that lets each query see itself."""
        mask = backend.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask, like=weight)
        if tuple(mask.shape) != (B, S):
            raise ValueError(f"GPT: attention_mask has shape {tuple(mask.shape)}, expected (B, S) = {(B, S)} (cached + new positions)")
        xp = backend.array_module(mask)
        itself = xp.eye(T, S, k=S - T, dtype=bool)  # (T, S): query t is position S - T + t
        return mask.astype(bool)[:, None, None, :] | itself  # (B, 1, T, S)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, greedy=False, rng=None, use_cache=True):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + max_new_tokens). See minilora.generate."""
        from ..generate import generate
        return generate(self, idx, max_new_tokens, temperature, top_k, greedy, rng, use_cache)

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors). dtype defaults to minilora's default."""
        from .gpt2_checkpoint import load_gpt2
        return load_gpt2(cls, path, dtype)

    def save_pretrained(self, path):
        """Write a Hugging Face GPT-2 folder that transformers.GPT2LMHeadModel.from_pretrained can read."""
        from .gpt2_checkpoint import save_gpt2
        save_gpt2(self, path)

    def num_parameters(self):
        return int(sum(np.prod(p.shape) for p in self.parameters()))

    def extra_repr(self):
        return ", ".join(f"{f.name}={getattr(self.config, f.name)}" for f in dataclasses.fields(self.config))
