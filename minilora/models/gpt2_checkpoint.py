"""Read and write Hugging Face GPT-2 folders: config.json + model.safetensors.

Two differences between GPT-2's layout and ours, each undone once here:

1. GPT-2's linear layers are ``Conv1D``: y = x W + b with W stored (in, out).
   Our Linear stores (out, in) (y = x W^T + b), so every matrix is transposed.
2. GPT-2 fuses the query, key and value projections into one ``c_attn``
   (C, 3C) = [q | k | v] along the output axis. We keep q, k, v separate so
   LoRA can adapt q and v alone, so c_attn is split into three (C, C).

    Hugging Face key (``transformer.`` optional)    shape      minilora key                   shape
    wte.weight                                      (V, C)     wte.weight                     (V, C)
    wpe.weight                                      (P, C)     wpe.weight                     (P, C)
    h.{i}.ln_1.weight / .bias                       (C,)       blocks.{i}.ln_1.weight / .bias (C,)
    h.{i}.attn.c_attn.weight                        (C, 3C)    blocks.{i}.attn.q/k/v.weight   (C, C) each, transposed
    h.{i}.attn.c_attn.bias                          (3C,)      blocks.{i}.attn.q/k/v.bias     (C,) each
    h.{i}.attn.c_proj.weight / .bias                (C, C)     blocks.{i}.attn.o.weight       (C, C) transposed
    h.{i}.ln_2.weight / .bias                       (C,)       blocks.{i}.ln_2.weight / .bias (C,)
    h.{i}.mlp.c_fc.weight / .bias                   (C, 4C)    blocks.{i}.mlp.c_fc.weight     (4C, C) transposed
    h.{i}.mlp.c_proj.weight / .bias                 (4C, C)    blocks.{i}.mlp.c_proj.weight   (C, 4C) transposed
    ln_f.weight / .bias                             (C,)       ln_f.weight / .bias            (C,)
    lm_head.weight (only when untied)               (V, C)     lm_head.weight                 (V, C)

P is n_positions (our block_size). Old checkpoints also hold ``attn.bias`` and
``attn.masked_bias``: the causal mask as buffers, not weights, so they are skipped.
"""
import os

import numpy as np

from .. import backend, io
from .gpt import GPTConfig

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # the same function: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf, path="config.json"):
    """A GPTConfig from a GPT-2 config.json dict; every setting our GPT cannot compute is listed in one error."""
    fix = "Fix: restore it from the model's source (or save the model again with save_pretrained), or point to an intact copy."
    if not isinstance(hf, dict):
        raise ValueError(f"{path} is damaged: it holds a JSON {type(hf).__name__}, not an object. {fix}")
    sizes = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
    damage = [f"missing field {k}" for k in sizes if k not in hf]
    damage += [f"{k}={hf[k]!r} (must be a positive integer)" for k in sizes
               if k in hf and (type(hf[k]) is not int or hf[k] <= 0)]  # type(): True is an int too
    if damage:
        raise ValueError(f"{path} is damaged: {'; '.join(damage)}. {fix}")
    problems = []
    if hf.get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type={hf['model_type']!r} (only 'gpt2')")
    if hf.get("activation_function", "gelu_new") not in TANH_GELUS:
        problems.append(f"activation_function={hf['activation_function']!r} (only the tanh gelu: {' or '.join(TANH_GELUS)})")
    for flag, supported in [("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("reorder_and_upcast_attn", False), ("add_cross_attention", False)]:
        if hf.get(flag, supported) != supported:
            problems.append(f"{flag}={hf[flag]!r} (only {supported})")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        problems.append(f"n_inner={hf['n_inner']} (only 4 * n_embd = {4 * hf['n_embd']})")
    if problems:
        raise ValueError(
            f"{path}: this GPT-2 variant is not supported: " + "; ".join(problems)
            + ". minilora's GPT computes plain GPT-2 only. Fix: use a checkpoint with GPT-2's standard settings."
        )
    return GPTConfig(
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"], dropout=hf.get("resid_pdrop", 0.1), bias=True,
        tie_weights=hf.get("tie_word_embeddings", True), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


def config_to_hf(c, dtype):
    """The config.json that transformers.GPT2Config reads back into the same architecture."""
    eos = c.vocab_size - 1 if c.vocab_size == 50257 else None  # GPT-2's <|endoftext|>; a 50256 default would be out of range
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
        "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": None,
        "n_positions": c.block_size, "n_ctx": c.block_size, "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.layer_norm_epsilon, "tie_word_embeddings": c.tie_weights,
        # Our attention has no dropout on its probabilities, so attn_pdrop is 0 to match.
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02, "bos_token_id": eos, "eos_token_id": eos, "dtype": str(np.dtype(dtype)),
    }


def hf_shapes(c):
    """Every weight a GPT-2 checkpoint of config ``c`` must hold: HF name (no prefix) -> shape."""
    C = c.n_embd
    shapes = {"wte.weight": (c.vocab_size, C), "wpe.weight": (c.block_size, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(c.n_layer):
        for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                            ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
                            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
                            ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))]:
            shapes[f"h.{i}.{name}"] = shape
    if not c.tie_weights:
        shapes["lm_head.weight"] = (c.vocab_size, C)
    return shapes


def state_names(c):
    """Every name in the state dict of a GPT of config ``c`` (with biases): the keys hf_to_minilora makes."""
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"] + ([] if c.tie_weights else ["lm_head.weight"])
    for i in range(c.n_layer):
        for layer in ("ln_1", "ln_2", "attn.q", "attn.k", "attn.v", "attn.o", "mlp.c_fc", "mlp.c_proj"):
            names += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
    return names


def _first(names, n=4):
    """At most n names, then how many more: an error message stays readable for a 12-layer model."""
    return (", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")) if names else "none"


def check_hf_tensors(tensors, c, path):
    """Strip the ``transformer.`` prefix and check names and shapes; raise one ValueError listing every problem."""
    hf = {name.removeprefix("transformer."): a for name, a in tensors.items() if not name.endswith(BUFFER_SUFFIXES)}
    if c.tie_weights:
        hf.pop("lm_head.weight", None)  # tied: the output matrix is wte, a stored copy adds nothing
    expected = hf_shapes(c)
    problems = []
    missing = [n for n in expected if n not in hf]
    unexpected = sorted(set(hf) - set(expected))
    misshapen = [f"{n} {tuple(hf[n].shape)} (expected {s})" for n, s in expected.items() if n in hf and tuple(hf[n].shape) != s]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if misshapen:
        problems.append(f"wrong shapes: {'; '.join(misshapen)}")
    if problems:
        raise ValueError(
            f"{path} does not match its config.json (n_layer={c.n_layer}, n_embd={c.n_embd}, vocab_size={c.vocab_size}, "
            f"n_positions={c.block_size}): " + " | ".join(problems)
            + ". Fix: keep config.json and the weights from the same model, or point to an intact copy."
        )
    return hf


def hf_to_minilora(hf, c):
    """GPT-2 tensors (no prefix, checked) -> our state dict: Conv1D (in, out) transposed, c_attn split."""
    C = c.n_embd
    out = {name: hf[name] for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(c.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            out[b + name] = hf[h + name]
        weights = np.split(hf[h + "attn.c_attn.weight"], 3, axis=1)  # 3 x (C, C) = (in, out), [q | k | v]
        biases = np.split(hf[h + "attn.c_attn.bias"], 3)  # 3 x (C,)
        for name, w, bias in zip("qkv", weights, biases):
            assert w.shape == (C, C) and bias.shape == (C,), (w.shape, bias.shape)
            out[f"{b}attn.{name}.weight"], out[f"{b}attn.{name}.bias"] = w.T, bias  # (C, C) = (out, in)
        for ours, theirs in (("attn.o", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            out[b + ours + ".weight"] = hf[h + theirs + ".weight"].T  # (in, out) -> (out, in)
            out[b + ours + ".bias"] = hf[h + theirs + ".bias"]
    if not c.tie_weights:
        out["lm_head.weight"] = hf["lm_head.weight"]  # nn.Linear in HF too: already (out, in)
    return out


def minilora_to_hf(state, c):
    """Our state dict (host arrays) -> GPT-2 tensors with the ``transformer.`` prefix: the inverse of hf_to_minilora."""
    hf = {f"transformer.{name}": state[name] for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            hf[h + name] = state[b + name]
        hf[h + "attn.c_attn.weight"] = np.concatenate([state[f"{b}attn.{n}.weight"].T for n in "qkv"], axis=1)  # (C, 3C)
        hf[h + "attn.c_attn.bias"] = np.concatenate([state[f"{b}attn.{n}.bias"] for n in "qkv"])  # (3C,)
        for ours, theirs in (("attn.o", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            hf[h + theirs + ".weight"] = state[b + ours + ".weight"].T  # (out, in) -> (in, out)
            hf[h + theirs + ".bias"] = state[b + ours + ".bias"]
    if not c.tie_weights:
        hf["lm_head.weight"] = state["lm_head.weight"]
    return hf


def load_gpt2(cls, path, dtype=None):
    """Build ``cls(config)`` from a GPT-2 folder and fill in its weights; the model comes back in eval mode.

    Everything is read and checked before the model is built, so a bad folder
    raises (naming every problem) and leaves nothing half-loaded.
    """
    path = os.fspath(path)
    config_path, weights_path = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    for needed in (config_path, weights_path):
        if not os.path.isfile(needed):
            raise FileNotFoundError(
                f"{needed} does not exist. A GPT-2 folder needs {CONFIG_NAME} and a single {WEIGHTS_NAME} "
                "(sharded and pytorch_model.bin checkpoints are not read). Fix: save it with "
                "save_pretrained(path, safe_serialization=True)."
            )
    config = config_from_hf(io.load_json(config_path), config_path)
    tensors, _ = io.load_safetensors(weights_path)
    state = hf_to_minilora(check_hf_tensors(tensors, config, weights_path), config)
    model = cls(config)
    dtype = np.dtype(dtype or backend.get_default_dtype())
    for p in model.parameters():
        p.data = p.data.astype(dtype)  # load_state_dict converts to each parameter's dtype
    model.load_state_dict({name: np.ascontiguousarray(a) for name, a in state.items()})
    return model.eval()  # as transformers does: dropout stays off until train()


def save_gpt2(model, path):
    """Write ``model`` as a GPT-2 folder; each file is written atomically (a crash leaves the old one whole)."""
    c = model.config
    if not c.bias:
        raise ValueError("save_pretrained: GPT-2 checkpoints always have biases, this model has bias=False. Fix: build it with bias=True.")
    names, expected = set(model.state_dict()), set(state_names(c))
    unexpected, missing = sorted(names - expected), sorted(expected - names)
    if unexpected or missing:
        if any(".lora_" in name for name in unexpected):  # LoRALinear's factors (models/ does not import minilora.lora)
            fix = ("It holds LoRA layers. Fix: call merge_and_unload() on the LoraModel and save the GPT it returns, "
                   "or save the adapter alone with save_pretrained on the LoraModel.")
        else:
            fix = "Fix: save a GPT built by GPT(config), whose weights are GPT-2's."
        raise ValueError(f"save_pretrained: this model's weights are not plain GPT-2's: unexpected {_first(unexpected)}; "
                         f"missing {_first(missing)}. {fix}")
    state = {name: backend.to_numpy(a) for name, a in model.state_dict().items()}
    dtypes = {a.dtype for a in state.values()}
    if len(dtypes) != 1:
        raise ValueError(f"save_pretrained: parameters mix dtypes {sorted(map(str, dtypes))}; GPT-2's config records one. Fix: cast them to one.")
    path = os.fspath(path)
    io.save_safetensors(os.path.join(path, WEIGHTS_NAME), minilora_to_hf(state, c), metadata={"format": "pt"})
    io.save_json(os.path.join(path, CONFIG_NAME), config_to_hf(c, dtypes.pop()))
