"""Read a llama.cpp GGUF file into a Llama, and its tokenizer and chat template. Needs the ``llm`` extra (gguf, jinja2).

A GGUF file holds metadata (key -> value: the shape of the model, the tokenizer)
and tensors, each quantized in its own type (F32, Q4_1, Q8_0, ...).
``gguf.quants.dequantize`` turns each into float32. The names map one to one:

    token_embd.weight          model.embed_tokens.weight   (and lm_head, when there is no output.weight)
    blk.{i}.attn_norm.weight   model.layers.{i}.input_layernorm.weight
    blk.{i}.attn_q.weight      model.layers.{i}.self_attn.q_proj.weight   rows permuted, see unpermute_rope_rows
    blk.{i}.attn_k.weight      model.layers.{i}.self_attn.k_proj.weight   rows permuted, see unpermute_rope_rows
    blk.{i}.attn_v.weight      model.layers.{i}.self_attn.v_proj.weight
    blk.{i}.attn_output.weight model.layers.{i}.self_attn.o_proj.weight
    blk.{i}.ffn_norm.weight    model.layers.{i}.post_attention_layernorm.weight
    blk.{i}.ffn_gate/up/down   model.layers.{i}.mlp.gate_proj / up_proj / down_proj
    output_norm.weight         model.norm.weight
    output.weight              lm_head.weight (absent when tied)

GGUF writes a shape innermost first ([in, out] for a weight); numpy's is (out, in).
"""
import os

import numpy as np

from .. import backend

LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
CONFIG_KEYS = {  # LlamaConfig field: GGUF metadata key (after "llama.")
    "num_hidden_layers": "block_count", "hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
    "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
    "max_position_embeddings": "context_length", "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
}


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package. Fix: pip install 'minilora[llm]'") from None
    return gguf


def open_gguf(path):
    """A gguf.GGUFReader for ``path``, or a ValueError that names the file and what is wrong with it."""
    gguf = _import_gguf()
    path = os.fspath(path)
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError with its name
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'). Fix: pass a llama.cpp .gguf file.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, EOFError) as error:
        raise ValueError(
            f"{path}: cannot read this GGUF file ({os.path.getsize(path)} bytes): {error}. It is probably truncated "
            "(an interrupted download or copy). Fix: fetch the file again and compare its size and checksum."
        ) from None


def metadata(reader):
    """Every metadata key -> its Python value, except the long tokenizer arrays (read by ``load_tokenizer``)."""
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
    return {key: field.contents() for key, field in reader.fields.items() if key not in skip}


def llama_config(reader, config_class, path):
    """The ``config_class`` (LlamaConfig) the metadata describes; a clear error for a file of another architecture."""
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{path}: general.architecture is {arch!r}, not 'llama'; minilora's Llama reads only llama files "
            "(Llama 2/3, SmolLM2, TinyLlama, ...). Fix: pass a GGUF of a llama-architecture model."
        )
    missing = [f"llama.{key}" for key in CONFIG_KEYS.values() if f"llama.{key}" not in meta and key != "rope.freq_base"]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}, needed for the model's shape. Fix: re-convert the model with llama.cpp.")
    values = {field: meta[f"llama.{key}"] for field, key in CONFIG_KEYS.items() if f"llama.{key}" in meta}
    values["rms_norm_eps"] = float(np.float32(values["rms_norm_eps"]))  # stored as float32: 1e-5 reads 9.9999997e-06
    values["vocab_size"] = meta.get("llama.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    values["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(f"{path}: this model scales its RoPE frequencies (rope_freqs, Llama 3.1 style), which minilora's rope does not do.")
    config = config_class(**values)
    rope_dims = meta.get("llama.rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise ValueError(f"{path}: RoPE turns {rope_dims} of {config.head_dim} channels per head; minilora's rope turns them all.")
    return config


def dequantize(tensor, path):
    """One GGUF tensor as a float32 array in numpy's (out, in) order."""
    gguf = _import_gguf()
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(
            f"{path}: tensor {tensor.name} is quantized as {tensor.tensor_type.name}, which gguf.quants cannot dequantize. "
            "Fix: re-quantize the file with llama.cpp to a common type (Q4_0, Q4_1, Q8_0, Q4_K, F16, F32)."
        ) from None
    return values.astype(np.float32, copy=False).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def unpermute_rope_rows(weight, n_head):
    """Undo llama.cpp's permutation of the q or k projection's rows, (n_head * D, C) -> (n_head * D, C).

    llama.cpp's rope turns adjacent channels (2i, 2i + 1) of a head; transformers' (and ours)
    turns (i, i + D/2). So its converter reorders each head's D output rows from
    (first halves, second halves) to interleaved pairs: row 2i + j came from row j D/2 + i.
    Putting them back lets the rotate-half rope see the pairs it expects.
    """
    rows, C = weight.shape
    D = rows // n_head
    pairs = weight.reshape(n_head, D // 2, 2, C)  # (head, i, j, C): row 2i + j of each head, as llama.cpp stores it
    return pairs.swapaxes(1, 2).reshape(rows, C)  # (head, j, i, C): row j D/2 + i, the rotate-half layout


def quantized_linear(tensor, format, path, rope_heads=None, dtype=None):
    """One GGUF weight as a frozen 4-bit QuantizedLinear (minilora.quant), on the current backend.

    Asked for "q4_1", a Q4_1 tensor keeps the file's own blocks: no float round trip, so
    the model computes with exactly the numbers the float model dequantizes. Anything
    else is dequantized to float32 and quantized into ``format``. rope_heads: the heads
    of a q or k projection, whose rows the file stores permuted (a row of blocks moves whole).
    """
    from ..quant import q4_1
    from ..quant.linear import QuantizedLinear

    rows, cols = (int(n) for n in reversed(tensor.shape))
    if format == "q4_1" and tensor.tensor_type.name == "Q4_1":
        raw = np.asarray(tensor.data).reshape(rows, -1)  # (out, in // 32 * 20): each row's blocks
        if rope_heads:
            raw = unpermute_rope_rows(raw, rope_heads)
        codes, d, m = (backend.asarray(a) for a in q4_1.from_gguf_bytes(raw, (rows, cols), tensor.name))
        return QuantizedLinear("q4_1", codes, d, m, dtype=dtype)
    weight = dequantize(tensor, path)  # (out, in) float32
    if rope_heads:
        weight = unpermute_rope_rows(weight, rope_heads)
    return QuantizedLinear.from_weight(backend.asarray(weight), format, dtype=dtype)


def load_llama_gguf(cls, path, dtype=None, quantized=None):
    """A Llama with the weights of the GGUF file at ``path``, in ``dtype``, in eval mode.

    quantized "q4_1" or "nf4": every layer's seven projections stay in 4-bit blocks
    (minilora.quant.QuantizedLinear, frozen); the embedding and the norms are float.
    """
    reader = open_gguf(path)
    config = llama_config(reader, cls.config_class, path)
    dtype = dtype or backend.get_default_dtype()
    with backend.using_default_dtype(dtype):
        model = cls(config, init_weights=False)
    if quantized is not None:
        from ..quant.linear import check_format
        from ..quant.model import replace_module
        check_format(quantized, f"{path}: Llama.from_gguf(quantized=...)")
    state = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = dequantize(tensor, path)
        elif name == "output_norm.weight":
            state["model.norm.weight"] = dequantize(tensor, path)
        elif name == "output.weight":
            state["lm_head.weight"] = dequantize(tensor, path)
        elif name.startswith("blk.") and name.count(".") == 3:
            _, layer, kind, _ = name.split(".")
            if kind not in LAYER_NAMES:
                raise ValueError(f"{path}: unexpected tensor {name}; minilora's Llama has no place for it.")
            if quantized is not None and kind not in ("attn_norm", "ffn_norm"):
                heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(kind)
                linear = quantized_linear(tensor, quantized, path, rope_heads=heads, dtype=dtype)
                target = f"model.layers.{layer}.{LAYER_NAMES[kind]}"
                replace_module(model, target, linear)  # in place of the float Linear
                state.update((f"{target}.{key}", blocks) for key, blocks in linear.state_dict().items())
                continue
            weight = dequantize(tensor, path)
            if kind == "attn_q":
                weight = unpermute_rope_rows(weight, config.num_attention_heads)
            elif kind == "attn_k":
                weight = unpermute_rope_rows(weight, config.num_key_value_heads)
            state[f"model.layers.{layer}.{LAYER_NAMES[kind]}.weight"] = weight
        else:
            raise ValueError(f"{path}: unexpected tensor {name}; minilora's Llama has no place for it.")
    model.load_state_dict(state)
    return model.eval()
