"""Llama: the decoder of Llama 2/3 and SmolLM2 (RMSNorm, RoPE, SwiGLU, grouped-query attention).

Dimension legend (used in every shape comment below):
    B batch, T time (new positions), S all positions a query sees (cached + new),
    C channels (hidden_size), H query heads, Hkv key/value heads, D = C / H channels per head,
    F intermediate_size (the MLP's width), V vocab

    idx (B, T) -> embed_tokens -> layers (pre-RMSNorm) -> norm -> lm_head -> logits (B, T, V)

What changes from the GPT (models/gpt.py):
- RMSNorm instead of LayerNorm: no mean, no bias.
- No learned positions: RoPE turns q and k by an angle that grows with the position.
- SwiGLU MLP: down(silu(gate(x)) * up(x)), three matrices, no bias.
- Grouped-query attention: H query heads share Hkv < H key/value heads, so the KV cache is H / Hkv times smaller.

Module and parameter names are transformers' (``model.layers.0.self_attn.q_proj.weight``),
so a state dict reads straight from a Hugging Face folder (``Llama.from_pretrained``,
llama_checkpoint.py), and LoRA's target_modules ("q_proj", "v_proj") are PEFT's.
``Llama.from_gguf`` reads a llama.cpp file (llama_gguf.py).
"""
import dataclasses

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Embedding, KVCache, Linear, Module, ModuleList, RMSNorm


@dataclasses.dataclass
class LlamaConfig:
    """The shape of a Llama, in transformers' names. The defaults are SmolLM2-135M."""

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    max_position_embeddings: int = 8192  # the longest sequence the model was trained on
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    tie_word_embeddings: bool = True  # lm_head reuses embed_tokens' matrix
    seed: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"LlamaConfig: hidden_size={self.hidden_size} must split into num_attention_heads={self.num_attention_heads} "
                "heads of an even size (RoPE turns pairs of channels)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; each key/value head serves a whole group of query heads"
            )

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def block_size(self):
        """The GPT's name for the context length (minilora.generate reads it)."""
        return self.max_position_embeddings


class LlamaAttention(Module):
    """Causal self-attention with RoPE and grouped-query heads. x (B, T, C) -> (B, T, C)."""

    def __init__(self, config, rng=None):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim, self.rope_theta = (
            c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rope_theta)
        self.q_proj = Linear(c.hidden_size, self.n_head * self.head_dim, bias=False, rng=rng)
        self.k_proj = Linear(c.hidden_size, self.n_kv_head * self.head_dim, bias=False, rng=rng)
        self.v_proj = Linear(c.hidden_size, self.n_kv_head * self.head_dim, bias=False, rng=rng)
        self.o_proj = Linear(self.n_head * self.head_dim, c.hidden_size, bias=False, rng=rng)

    def _heads(self, x, n):
        B, T, _ = x.shape
        return x.reshape(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def forward(self, x, kv_cache=None):
        """x (B, T, C) -> (B, T, C). kv_cache: a KVCache; the T new positions follow the cached ones."""
        B, T, _ = x.shape
        past = 0 if kv_cache is None else len(kv_cache)
        q = self._heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k = self._heads(self.k_proj(x), self.n_kv_head)  # (B, Hkv, T, D)
        v = self._heads(self.v_proj(x), self.n_kv_head)  # (B, Hkv, T, D)
        q = F.rope(q, self.rope_theta, offset=past)  # (B, H, T, D): turned by the angles of positions past .. past + T - 1
        k = F.rope(k, self.rope_theta, offset=past)  # (B, Hkv, T, D); the cache keeps keys already turned
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, Hkv, S, D)
        group = self.n_head // self.n_kv_head
        k = F.repeat_interleave(k, group, axis=1)  # (B, H, S, D): query head h reads key/value head h // group
        v = F.repeat_interleave(v, group, axis=1)  # (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H * D): heads side by side
        return self.o_proj(y)  # (B, T, C)

    def extra_repr(self):
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}"


class LlamaMLP(Module):
    """SwiGLU (Shazeer 2020): down_proj(silu(gate_proj(x)) * up_proj(x)). x (B, T, C) -> (B, T, C)."""

    def __init__(self, config, rng=None):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False, rng=rng)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False, rng=rng)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False, rng=rng)

    def forward(self, x):
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, F): the gate decides how much of each up channel passes
        return self.down_proj(h)  # (B, T, C)


class LlamaDecoderLayer(Module):
    """One pre-RMSNorm block: x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x))."""

    def __init__(self, config, rng=None):
        super().__init__()
        self.self_attn = LlamaAttention(config, rng=rng)
        self.mlp = LlamaMLP(config, rng=rng)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, kv_cache=None):
        """x (B, T, C) -> (B, T, C)."""
        x = x + self.self_attn(self.input_layernorm(x), kv_cache=kv_cache)  # (B, T, C)
        return x + self.mlp(self.post_attention_layernorm(x))  # (B, T, C)


class LlamaModel(Module):
    """The decoder without its head: idx (B, T) -> hidden states (B, T, C), transformers' LlamaModel."""

    def __init__(self, config, rng=None):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, rng=rng)
        self.layers = ModuleList(LlamaDecoderLayer(config, rng=rng) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, idx, kv_cache=None):
        x = self.embed_tokens(idx)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, kv_cache=None if kv_cache is None else kv_cache[i])  # (B, T, C)
        return self.norm(x)  # (B, T, C)


class Llama(Module):
    """A Llama language model, transformers' LlamaForCausalLM. ``Llama(config)(idx, targets)`` -> (logits (B, T, V), loss or None)."""

    config_class = LlamaConfig  # what the loaders build from a config.json or GGUF metadata (transformers' name)
    lora_target_modules = ("q_proj", "v_proj")  # LoraConfig(target_modules=None), as PEFT's default for llama

    def __init__(self, config, init_weights=True):
        """init_weights=False skips transformers' init (a loader that overwrites every weight saves its time)."""
        super().__init__()
        self.config = config
        rng = backend.default_rng(config.seed)
        self.model = LlamaModel(config, rng=rng)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, rng=rng)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter in two places: gradients from both add up
        if init_weights:
            self._init_weights(rng)

    def _init_weights(self, rng):
        """transformers' init: every matrix N(0, 0.02), every RMSNorm weight 1 (as built)."""
        for name, p in self.named_parameters():
            if not name.endswith("norm.weight"):
                p.data = backend.randn(p.shape, rng) * 0.02

    def get_output_embeddings(self):
        """The head that "all-linear" LoRA leaves alone, as PEFT."""
        return self.lm_head

    def new_kv_cache(self):
        """An empty KVCache per layer, for ``forward(..., kv_cache=...)`` during generation."""
        return [KVCache() for _ in self.model.layers]

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss).

        targets (B, T): the next token at each position, -100 to leave a position
        out of the loss; loss is None without targets. kv_cache: the list from
        ``new_kv_cache()``; the new positions continue after the cached ones.
        """
        idx = F.ids_array(idx)
        if idx.ndim != 2:
            raise ValueError(f"Llama: idx must be (B, T) token ids, got shape {tuple(idx.shape)}. Fix: idx[None] for one sequence.")
        past = 0 if kv_cache is None else len(kv_cache[0])
        if past + idx.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Llama: sequence of {past + idx.shape[1]} tokens ({past} cached + {idx.shape[1]} new) is longer than the "
                f"context, max_position_embeddings={self.config.max_position_embeddings}. "
                f"Fix: keep the prompt within the last {self.config.max_position_embeddings} tokens."
            )
        logits = self.lm_head(self.model(idx, kv_cache=kv_cache))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=-100)
        return logits, loss

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, greedy=False, rng=None, use_cache=True):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + max_new_tokens). See minilora.generate."""
        from ..generate import generate
        return generate(self, idx, max_new_tokens, temperature, top_k, greedy, rng, use_cache)

    @classmethod
    def from_gguf(cls, path, dtype=None, quantized=None):
        """Load a llama.cpp GGUF file (any quantization gguf can dequantize), in ``dtype`` (default: minilora's).

        quantized "q4_1" or "nf4" keeps the projections in 4 bits (a QLoRA base, minilora.quant; docs/llama.md).
        """
        from .llama_gguf import load_llama_gguf
        return load_llama_gguf(cls, path, dtype, quantized)

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """Load a Hugging Face Llama folder (config.json + model.safetensors, float32/16 or bfloat16)."""
        from .llama_checkpoint import load_llama
        return load_llama(cls, path, dtype)

    def num_parameters(self):
        return int(sum(np.prod(p.shape) for p in self.parameters()))

    def extra_repr(self):
        return ", ".join(f"{f.name}={getattr(self.config, f.name)}" for f in dataclasses.fields(self.config))
