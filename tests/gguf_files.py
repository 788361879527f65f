"""A Llama written as a GGUF file the way llama.cpp's converter (convert_hf_to_gguf.py) writes one, for the tests.

Names blk.{i}.attn_q..., shapes innermost first, and the q/k rows permuted for
llama.cpp's rope. The loader tests start from transformers' model, the chat and
finetune tests from a random minilora Llama with a tokenizer; both write here.
"""
import numpy as np

GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py, LlamaModel.permute: each head's rows from (i, i + D/2) pairs to (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(gguf, path, weights, shape, arch="llama", embedding_type=None, add_tokenizer=None):
    """Write ``weights`` (transformers' names -> float32 arrays; no "lm_head.weight" when tied) to ``path``.

    shape: layers, context, hidden, intermediate, heads, kv_heads, rope_theta, rms_eps, vocab.
    embedding_type: write the embedding as zero bytes labelled with that quantization type.
    add_tokenizer(writer): adds the tokenizer's keys, if any.
    """
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(shape["layers"])
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(shape["hidden"])
    writer.add_feed_forward_length(shape["intermediate"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_freq_base(shape["rope_theta"])
    writer.add_layer_norm_rms_eps(shape["rms_eps"])
    writer.add_vocab_size(shape["vocab"])
    if add_tokenizer is not None:
        add_tokenizer(writer)
    embedding = weights["model.embed_tokens.weight"]
    if embedding_type is None:
        writer.add_tensor("token_embd.weight", embedding)
    else:
        block, nbytes = gguf.GGML_QUANT_SIZES[embedding_type]
        rows, cols = embedding.shape
        writer.add_tensor("token_embd.weight", np.zeros((rows, cols // block * nbytes), np.uint8),
                          raw_dtype=embedding_type)
    for i in range(shape["layers"]):
        for ours, theirs in GGUF_NAMES.items():
            w = weights[f"model.layers.{i}.{ours}.weight"]
            if theirs in ("attn_q", "attn_k"):  # llama.cpp's row order, undone by the loader
                w = llama_cpp_permute(w, shape["heads"] if theirs == "attn_q" else shape["kv_heads"])
            writer.add_tensor(f"blk.{i}.{theirs}.weight", w)
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
