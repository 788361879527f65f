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

PiSSA. Its factors belong to the residual base W0 - s B0 A0, not to GPT-2's W0,
and PEFT's PiSSA on the fused c_attn takes other directions than ours on q, k
and v. So both ways cross as PEFT's own portable form, the one its
save_pretrained(path_initial_model_for_weight_conversion=...) writes: a plain
LoRA adapter on the original W0, A' = [A; A0], B' = [B, -B0] (rank 2r, the
same s), since W0 + s B' A' = (W0 - s B0 A0) + s B A.
  export  a layer that a PiSSA init changed exports LoRALinear.plain_factors.
  import  init_lora_weights="pissa" (PEFT re-runs the SVD on load): we run it
          on GPT-2's c_attn = [Wq; Wk; Wv] to get A0, B0, and convert.

Keys in PEFT's file: "base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight".
"""
import math
import os
import re

import numpy as np

from .. import backend
from ..io import load_json, load_safetensors, save_json, save_safetensors
from .config import LoraConfig, pattern_value
from .files import CONFIG_NAME, WEIGHTS_NAME
from .layer import LoRALinear
from .model import LoraModel, attach_adapter, lora_layers

PREFIX = "base_model.model.transformer."
QKV = ("q", "k", "v")
ONE_TO_ONE = {"attn.o": "attn.c_proj", "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}  # ours -> GPT-2's
# PEFT features this layout cannot express: each must be off (falsy) in an imported config.
# PEFT inits (besides True and False) that leave W0 alone, so the factors are a plain LoRA adapter on it. "pissa"
# is converted; the rest change W0 in ways not redone here (olora, corda, loftq, pissa_niter_k's random SVD, ...).
PLAIN_INITS = ("gaussian", "eva", "orthogonal")
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
            A, B = layer.plain_factors(adapter_name)  # PiSSA's residual folded in: a LoRA on GPT-2's own W0
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


def from_peft_gpt2(peft_config, tensors, source="PEFT adapter", model=None):
    """(LoraConfig, {our key: array}) from a PEFT GPT-2 adapter's config dict and tensors.

    A PiSSA adapter (init_lora_weights="pissa") needs ``model``, our GPT with
    GPT-2's weights, to redo PEFT's SVD; it comes back as the plain LoRA
    adapter of rank 2r that PEFT's conversion would write (see the top of this file).
    """
    problems = [f"{k}={peft_config[k]!r}" for k in UNSUPPORTED if peft_config.get(k)]
    if peft_config.get("peft_type") != "LORA":
        problems.append(f"peft_type={peft_config.get('peft_type')!r} (only 'LORA')")
    if peft_config.get("bias", "none") != "none":
        problems.append(f"bias={peft_config['bias']!r} (only 'none')")
    if problems:
        raise ValueError(f"{source}: PEFT features minilora cannot load: {', '.join(problems)}. Fix: train the adapter without them.")
    init = peft_config.get("init_lora_weights", True)
    if not (isinstance(init, bool) or init == "pissa" or init in PLAIN_INITS):
        raise ValueError(
            f"{source}: init_lora_weights={init!r} changes GPT-2's own weights in a way minilora cannot redo, so its "
            "factors do not fit the original model. Fix: in PEFT, save it with save_pretrained(path, "
            "path_initial_model_for_weight_conversion=<the adapter saved before training>), which writes a plain "
            "LoRA adapter."
        )
    if init == "pissa" and model is None:
        raise ValueError(
            f"{source}: a PiSSA adapter's factors belong to a residual of GPT-2's weights, so converting it needs "
            "them. Fix: load_peft_gpt2(model, path), or pass model= (our GPT with the adapter's base weights)."
        )
    factors = {}  # (block, GPT-2 module) -> {"A": (R, in), "B": (out, R)}
    for key, array in tensors.items():
        m = re.fullmatch(r"base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])\.weight", key)
        if m is None:
            raise ValueError(f"{source}: tensor {key!r} is not a LoRA factor of a GPT-2 block. Fix: export only GPT-2 attention/MLP adapters.")
        i, hf, which = m.groups()
        factors.setdefault((i, hf), {})[which] = array
    ours, ranks, alphas = {}, {}, {}
    for (i, hf), AB in factors.items():
        if len(AB) != 2:
            lacks = "B" if "A" in AB else "A"
            raise ValueError(f"{source}: transformer.h.{i}.{hf} has no lora_{lacks}.weight. Fix: save the adapter again.")
        names = [f"blocks.{i}.attn.{x}" for x in QKV] if hf == "attn.c_attn" else \
            [f"blocks.{i}.{next(o for o, h in ONE_TO_ONE.items() if h == hf)}"]
        alpha = pattern_value(peft_config.get("alpha_pattern") or {}, f"transformer.h.{i}.{hf}", peft_config["lora_alpha"])
        A, B = AB["A"], AB["B"]
        if init == "pissa":
            A, B = _pissa_as_lora(model, names, A, B, alpha, bool(peft_config.get("use_rslora")), source)
            alpha = alpha * 2 ** 0.5 if peft_config.get("use_rslora") else 2 * alpha  # the same s at rank 2R, as PEFT
        for name, part in zip(names, np.split(B, len(names))):  # A shared, B split by rows
            ours[f"{name}.lora_A.weight"], ours[f"{name}.lora_B.weight"] = np.ascontiguousarray(A), np.ascontiguousarray(part)
            ranks[name], alphas[name] = A.shape[0], alpha
    first = sorted(ranks)[0]
    config = LoraConfig(
        r=ranks[first], lora_alpha=alphas[first], lora_dropout=peft_config.get("lora_dropout", 0.0),
        target_modules=sorted(ranks), use_rslora=bool(peft_config.get("use_rslora", False)),
        rank_pattern={re.escape(n): v for n, v in ranks.items() if v != ranks[first]},
        alpha_pattern={re.escape(n): v for n, v in alphas.items() if v != alphas[first]},
    )
    return config, ours


def _pissa_as_lora(model, names, A, B, alpha, use_rslora, source):
    """PEFT's PiSSA factors A (R, in), B (out, R) on the GPT-2 module made of ``names`` -> (A', B') of rank 2R on its W0.

    PEFT's PiSSA init, redone: W0 = U S V^T, A0 = sqrt(S_R / s) V_R^T, B0 = U_R sqrt(S_R / s)
    (s B0 A0 does not depend on the signs the SVD picks). Then A' = [A; A0], B' = [B, -B0].
    """
    base = model.model if isinstance(model, LoraModel) else model
    try:
        W0 = np.concatenate([_original_weight(base.get_submodule(n)) for n in names])  # (out, in): c_attn = [Wq; Wk; Wv]
    except AttributeError as error:
        raise ValueError(f"{source}: the adapter does not fit this model: {error}") from None
    R = A.shape[0]
    if W0.shape != (B.shape[0], A.shape[1]) or B.shape[1] != R or R > min(W0.shape):
        raise ValueError(f"{source}: PiSSA factors A {A.shape}, B {B.shape} do not fit {names} (W0 {W0.shape}). "
                         "Fix: load it onto the model it was trained on.")
    s = alpha / math.sqrt(R) if use_rslora else alpha / R
    U, S, Vh = np.linalg.svd(W0, full_matrices=False)
    root = np.sqrt(S[:R] / s)  # (R,)
    A0, B0 = root[:, None] * Vh[:R], U[:, :R] * root[None, :]  # (R, in), (out, R)
    return np.concatenate([A, A0.astype(A.dtype)]), np.concatenate([B, -B0.astype(B.dtype)], axis=1)  # (2R, in), (out, 2R)


def _original_weight(layer):
    """A layer's W0 (out, in) on the host in float64, as GPT-2 holds it: without merges or our own PiSSA residuals."""
    if isinstance(layer, LoRALinear):
        if layer.merged_adapter is not None:
            raise ValueError("import of a PiSSA adapter: an adapter is merged into the model. Fix: unmerge_adapter() first.")
        W0 = backend.to_numpy(layer.base_layer.weight.data).astype(np.float64)
        return W0 + sum(s0 * (B0 @ A0) for s0, A0, B0 in layer.pissa_residual)
    return backend.to_numpy(layer.weight.data).astype(np.float64)


def load_peft_gpt2(model, path, adapter_name="default"):
    """Load a PEFT GPT-2 adapter folder onto our GPT (plain: returns a new LoraModel; a LoraModel: adds it)."""
    config_path = os.path.join(path, CONFIG_NAME)
    config, arrays = from_peft_gpt2(load_json(config_path), load_safetensors(os.path.join(path, WEIGHTS_NAME))[0], config_path,
                                    model=model)
    return attach_adapter(model, config, arrays, adapter_name, source=path)
