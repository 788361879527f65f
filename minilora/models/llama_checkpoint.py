"""Read a Hugging Face Llama folder (config.json + model.safetensors) into a Llama.

Our parameter names are transformers' (``model.layers.0.self_attn.q_proj.weight``),
so the tensors load by name, unchanged: no transpose, no permutation (that is a
GGUF matter, see llama_gguf.py). ``lm_head.weight`` is absent when it is tied.
Published Llama checkpoints are mostly bfloat16; io.load_safetensors widens them to float32 exactly.
"""
import os

from .. import backend, io
from .llama import LlamaConfig


def config_from_hf(hf, path="config.json"):
    """A LlamaConfig from a config.json dict; every setting our Llama cannot compute is listed in one error."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
    missing = [k for k in needed if k not in hf]
    problems = [f"missing field(s) {missing}"] if missing else []
    if hf.get("model_type") != "llama":
        problems.append(f"model_type={hf.get('model_type')!r} (only 'llama')")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu', SwiGLU)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            problems.append(f"{flag}=True (no biases)")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope type {rope.get('rope_type', rope.get('type'))!r} (only the default, unscaled RoPE)")
    if not missing and hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        problems.append(f"head_dim={hf['head_dim']} (only hidden_size / num_attention_heads)")
    if problems:
        raise ValueError(f"{path}: this Llama variant is not supported: " + "; ".join(problems)
                         + ". Fix: use a checkpoint with Llama's standard settings.")
    return LlamaConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def load_llama(cls, path, dtype=None):
    """A Llama from a Hugging Face folder: config.json and model.safetensors (or its shards + index)."""
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} does not exist. Fix: point to a Hugging Face model folder.")
    config = config_from_hf(io.load_json(config_path), config_path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(io.load_json(index)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors. Fix: save it with save_pretrained(path, safe_serialization=True).")
    state = {}
    for name in files:
        state.update(io.load_safetensors(os.path.join(path, name))[0])
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some tied checkpoints write the shared matrix twice
    with backend.using_default_dtype(dtype or backend.get_default_dtype()):
        model = cls(config, init_weights=False)
    model.load_state_dict(state)
    return model.eval()
