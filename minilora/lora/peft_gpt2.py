"""PEFT's file layout for GPT-2: adapters on the fused c_attn, read and written exactly.

Our GPT has separate q, k, v (C -> C each); GPT-2 (and so PEFT) has one
c_attn (C -> 3C) whose output is [q | k | v]. An adapter on c_attn of rank R is
A_c (R, C), B_c (3C, R). The map (docs/lora.md derives it):

  export  separate q, v (ranks r_q, r_v):   A_c = [A_q; A_v]                (r_q + r_v, C)
                                            B_c = [[B_q, 0], [0, 0], [0, B_v]]  (3C, r_q + r_v)
          so s_c B_c A_c x = [s_q B_q A_q x; 0; s_v B_v A_v x]: q's and v's updates,
          k untouched. PEFT's scale is alpha / R, so alpha = s R keeps s; a layer
          whose s differs folds s_x / s_c into its block of B.
  import  c_attn of rank R:  q, k, v each get A = A_c (a copy) and the matching
          C rows of B_c, with PEFT's r and alpha, so each gets the same s.

attn.c_proj, mlp.c_fc and mlp.c_proj map one to one onto attn.o, mlp.c_fc and
mlp.c_proj: lora_A/lora_B are (r, in)/(out, r) in both (PEFT's fan_in_fan_out
transposes only the Conv1D base weight, never A or B).

Keys in PEFT's file: "base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight".
"""
import os
import re

import numpy as np

from .. import backend
from ..io import load_json, load_safetensors, save_json, save_safetensors
from .config import LoraConfig
from .files import CONFIG_NAME, WEIGHTS_NAME, check_adapter_fits, copy_adapter_arrays
from .model import LoraModel, lora_layers

PREFIX = "base_model.model.transformer."
QKV = ("q", "k", "v")
ONE_TO_ONE = {"attn.o": "attn.c_proj", "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}  # ours -> GPT-2's
# PEFT features this layout cannot express: each must be off (falsy) in an imported config.
UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "layers_to_transform", "layer_replication",
               "target_parameters", "trainable_token_indices", "use_qalora", "alora_invocation_tokens")


def _hf_module(our_name):
    """'blocks.3.attn.q' -> ('h.3.attn.c_attn', 0); 'blocks.3.mlp.c_fc' -> ('h.3.mlp.c_fc', None)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(attn\.[qkvo]|mlp\.c_fc|mlp\.c_proj)", our_name)
    if m is None:
        raise ValueError(
            f"export to PEFT's GPT-2 layout: layer {our_name!r} has no GPT-2 counterpart; only blocks.i.attn.q/k/v/o "
            "and blocks.i.mlp.c_fc/c_proj do. Fix: leave it out of target_modules."
        )
    i, part = m.groups()
    if part in ("attn.q", "attn.k", "attn.v"):
        return f"h.{i}.attn.c_attn", QKV.index(part[-1])
    return f"h.{i}.{ONE_TO_ONE[part]}", None


def to_peft_gpt2(lora_model, adapter_name=None):
    """(PEFT adapter_config dict, {PEFT key: host array}) for one adapter of a LoRA'd GPT."""
    adapter_name = adapter_name or lora_model.active_adapter
    lora_model._require(adapter_name)
    config = lora_model.peft_config[adapter_name]
    if config.bias != "none":
        raise ValueError(f"export to PEFT: bias={config.bias!r} is not supported, only 'none'. Fix: train with bias='none'.")
    groups = {}  # GPT-2 module -> [(slot, A, B, s)]
    for name, layer in lora_layers(lora_model.model):
        if adapter_name in layer.lora_A:
            hf, slot = _hf_module(name)
            A, B = (backend.to_numpy(layer.lora_A[adapter_name].data), backend.to_numpy(layer.lora_B[adapter_name].data))
            groups.setdefault(hf, []).append((slot, A, B, layer.scaling[adapter_name]))
    tensors, ranks, alphas = {}, {}, {}
    for hf, parts in groups.items():
        parts.sort(key=lambda part: part[0] or 0)
        s_c = parts[0][3]
        A_c = np.concatenate([A for _, A, _, _ in parts])  # (R, C): the A's stacked
        if parts[0][0] is None:  # a one-to-one module
            B_c = parts[0][2]  # (out, R)
        else:
            C = parts[0][2].shape[0]
            B_c = np.zeros((3 * C, A_c.shape[0]), dtype=A_c.dtype)  # (3C, R): k rows stay zero unless k is adapted
            col = 0
            for slot, A, B, s in parts:
                B_c[slot * C:(slot + 1) * C, col:col + A.shape[0]] = B * (s / s_c) if s != s_c else B
                col += A.shape[0]
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = A_c
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = B_c
        ranks[f"transformer.{hf}"], alphas[f"transformer.{hf}"] = A_c.shape[0], s_c * A_c.shape[0]  # alpha / R = s_c
    first = next(iter(ranks))
    r, alpha = ranks[first], alphas[first]
    alphas = {m: int(a) if float(a).is_integer() else a for m, a in alphas.items()}  # PEFT's configs hold ints
    alpha = alphas[first]
    peft_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha, "lora_dropout": config.lora_dropout, "bias": "none", "use_rslora": False,
        "fan_in_fan_out": True, "init_lora_weights": True, "target_modules": sorted(ranks),
        "rank_pattern": {re.escape(m): v for m, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(m): v for m, v in alphas.items() if v != alpha},
    }
    return peft_config, tensors


def save_peft_gpt2(lora_model, path, adapter_name=None):
    """Write an adapter folder that peft.PeftModel.from_pretrained(GPT2LMHeadModel, path) loads."""
    peft_config, tensors = to_peft_gpt2(lora_model, adapter_name)
    save_safetensors(os.path.join(path, WEIGHTS_NAME), tensors, metadata={"format": "pt"})
    save_json(os.path.join(path, CONFIG_NAME), peft_config)
    return path


def _pattern(pattern, name, default):
    """PEFT's per-module override: the first key whose regex matches the end of ``name``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def from_peft_gpt2(peft_config, tensors, source="PEFT adapter"):
    """(LoraConfig, {our key: array}) from a PEFT GPT-2 adapter's config dict and tensors."""
    problems = [f"{k}={peft_config[k]!r}" for k in UNSUPPORTED if peft_config.get(k)]
    if peft_config.get("peft_type") != "LORA":
        problems.append(f"peft_type={peft_config.get('peft_type')!r} (only 'LORA')")
    if peft_config.get("bias", "none") != "none":
        problems.append(f"bias={peft_config['bias']!r} (only 'none')")
    if problems:
        raise ValueError(f"{source}: PEFT features minilora cannot load: {', '.join(problems)}. Fix: train the adapter without them.")
    ours, ranks, alphas = {}, {}, {}
    for key, array in tensors.items():
        m = re.fullmatch(r"base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])\.weight", key)
        if m is None:
            raise ValueError(f"{source}: tensor {key!r} is not a LoRA factor of a GPT-2 block. Fix: export only GPT-2 attention/MLP adapters.")
        i, hf, which = m.groups()
        names = [f"blocks.{i}.attn.{x}" for x in QKV] if hf == "attn.c_attn" else \
            [f"blocks.{i}.{next(o for o, h in ONE_TO_ONE.items() if h == hf)}"]
        parts = [array] * len(names) if which == "A" else np.split(array, len(names))  # A shared, B split by rows
        for name, part in zip(names, parts):
            ours[f"{name}.lora_{which}.weight"] = np.ascontiguousarray(part)
            if which == "A":
                ranks[name] = array.shape[0]
                alphas[name] = _pattern(peft_config.get("alpha_pattern") or {}, f"transformer.h.{i}.{hf}", peft_config["lora_alpha"])
    first = sorted(ranks)[0]
    config = LoraConfig(
        r=ranks[first], lora_alpha=alphas[first], lora_dropout=peft_config.get("lora_dropout", 0.0),
        target_modules=sorted(ranks), use_rslora=bool(peft_config.get("use_rslora", False)),
        rank_pattern={re.escape(n): v for n, v in ranks.items() if v != ranks[first]},
        alpha_pattern={re.escape(n): v for n, v in alphas.items() if v != alphas[first]},
    )
    return config, ours


def load_peft_gpt2(model, path, adapter_name="default"):
    """Load a PEFT GPT-2 adapter folder onto our GPT (plain: returns a new LoraModel; a LoraModel: adds it)."""
    config_path = os.path.join(path, CONFIG_NAME)
    config, arrays = from_peft_gpt2(load_json(config_path), load_safetensors(os.path.join(path, WEIGHTS_NAME))[0], config_path)
    base = model.model if isinstance(model, LoraModel) else model
    check_adapter_fits(base, config, arrays, source=path)
    if isinstance(model, LoraModel):
        model.add_adapter(adapter_name, config)
    else:
        model = LoraModel(model, config, adapter_name)
    copy_adapter_arrays(model, adapter_name, arrays)
    return model
