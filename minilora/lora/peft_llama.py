"""PEFT's file layout for Llama: the same layers and factors as ours, under PEFT's names.

Our Llama's module names are transformers' (models/llama.py), so the map is one prefix:

    ours  model.layers.3.self_attn.q_proj.lora_A.weight                    A (r, in), B (out, r)
    PEFT  base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight   the same arrays

("base_model" is PEFT's LoraModel, the next ".model" the LlamaForCausalLM it wraps.) Both
scale by alpha / r. adapter_config.json holds PEFT's fields: peft_type "LORA", task_type
"CAUSAL_LM", base_model_name_or_path, and target_modules as the short names PEFT matches
(["q_proj", "v_proj"]) when every layer of those names is adapted, else the full names.
An adapter in this layout loads with ``peft.PeftModel.from_pretrained(llama, path)`` onto
transformers' LlamaForCausalLM from the same GGUF file (tests/test_llama_peft.py).
"""
import os
import re

from ..io import load_json, load_safetensors, save_json, save_safetensors
from .config import LoraConfig, pattern_value
from .files import CONFIG_NAME, WEIGHTS_NAME
from .model import attach_adapter, lora_layers
from .peft_gpt2 import PLAIN_INITS, UNSUPPORTED

PREFIX = "base_model.model."
KEY = re.compile(r"base_model\.model\.(model\.layers\.\d+\.(?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight")


def to_peft_llama(lora_model, adapter_name=None, base_model_name_or_path=None):
    """(PEFT adapter_config dict, {PEFT key: host array}) for one adapter of a LoRA'd Llama."""
    adapter_name = adapter_name or lora_model.active_adapter
    lora_model._require(adapter_name)
    config = lora_model.peft_config[adapter_name]
    if config.bias != "none":
        raise ValueError(f"export to PEFT: bias={config.bias!r} is not supported, only 'none'. Fix: train with bias='none'.")
    tensors, ranks, alphas = {}, {}, {}
    for name, layer in lora_layers(lora_model.model):
        if adapter_name in layer.lora_A:
            if KEY.fullmatch(f"{PREFIX}{name}.lora_A.weight") is None:
                raise ValueError(f"export to PEFT's Llama layout: layer {name!r} is not a Llama attention or MLP "
                                 "projection (model.layers.N.self_attn/mlp.*). Fix: leave it out of target_modules.")
            A, B = layer.plain_factors(adapter_name)  # PiSSA's residual folded in: a LoRA on the file's own W0
            tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"] = A, B
            ranks[name], alphas[name] = A.shape[0], layer.scaling[adapter_name] * A.shape[0]  # PEFT's s = alpha / r
    first = next(iter(ranks))
    alphas = {n: int(a) if float(a).is_integer() else float(a) for n, a in alphas.items()}  # PEFT's configs hold ints
    r, alpha = ranks[first], alphas[first]
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True, "r": r, "lora_alpha": alpha, "lora_dropout": config.lora_dropout, "bias": "none",
        "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "target_modules": _peft_targets(lora_model.model, sorted(ranks)),
        "rank_pattern": {re.escape(n): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in alphas.items() if v != alpha},
    }
    return peft_config, tensors


def _peft_targets(model, adapted):
    """The short names (["q_proj", "v_proj"]) if they select exactly the adapted layers in PEFT, else the full names."""
    short = sorted({name.rpartition(".")[2] for name in adapted})
    selected = [name for name, _ in model.named_modules()
                if name.rpartition(".")[2] in short and KEY.fullmatch(f"{PREFIX}{name}.lora_A.weight")]
    return short if sorted(selected) == adapted else adapted


def save_peft_llama(lora_model, path, adapter_name=None, base_model_name_or_path=None):
    """Write an adapter folder that peft.PeftModel.from_pretrained(LlamaForCausalLM, path) loads."""
    peft_config, tensors = to_peft_llama(lora_model, adapter_name, base_model_name_or_path)
    save_safetensors(os.path.join(path, WEIGHTS_NAME), tensors, metadata={"format": "pt"})
    save_json(os.path.join(path, CONFIG_NAME), peft_config)
    return path


def from_peft_llama(peft_config, tensors, source="PEFT adapter"):
    """(LoraConfig, {our key: array}) from a PEFT Llama adapter's config dict and tensors."""
    problems = [f"{k}={peft_config[k]!r}" for k in UNSUPPORTED if peft_config.get(k)]
    if peft_config.get("peft_type") != "LORA":
        problems.append(f"peft_type={peft_config.get('peft_type')!r} (only 'LORA')")
    if peft_config.get("bias", "none") != "none":
        problems.append(f"bias={peft_config['bias']!r} (only 'none')")
    init = peft_config.get("init_lora_weights", True)
    if not (isinstance(init, bool) or init in PLAIN_INITS):
        problems.append(f"init_lora_weights={init!r} (it changes the base weights; PEFT's "
                        "save_pretrained(path_initial_model_for_weight_conversion=...) writes a plain adapter)")
    if problems:
        raise ValueError(f"{source}: PEFT features minilora cannot load: {', '.join(problems)}. Fix: train the adapter without them.")
    factors = {}  # our layer name -> {"A": (r, in), "B": (out, r)}
    for key, array in tensors.items():
        m = KEY.fullmatch(key)
        if m is None:
            hint = " (a GPT-2 adapter: load it with minilora.lora.load_peft_gpt2)" if ".h." in key else ""
            raise ValueError(f"{source}: tensor {key!r} is not a LoRA factor of a Llama layer "
                             f"(base_model.model.model.layers.N.self_attn/mlp.*){hint}. "
                             "Fix: load the adapter onto the architecture it was trained for.")
        factors.setdefault(m.group(1), {})[m.group(2)] = array
    if not factors:
        raise ValueError(f"{source}: the adapter holds no LoRA factors. Fix: save it again.")
    ours, ranks, alphas = {}, {}, {}
    for name, AB in sorted(factors.items()):
        if len(AB) != 2:
            raise ValueError(f"{source}: {name} has no lora_{'B' if 'A' in AB else 'A'}.weight. Fix: save the adapter again.")
        ours[f"{name}.lora_A.weight"], ours[f"{name}.lora_B.weight"] = AB["A"], AB["B"]
        ranks[name] = AB["A"].shape[0]
        alphas[name] = pattern_value(peft_config.get("alpha_pattern") or {}, name, peft_config["lora_alpha"])
    first = next(iter(ranks))
    config = LoraConfig(
        r=ranks[first], lora_alpha=alphas[first], lora_dropout=peft_config.get("lora_dropout", 0.0),
        target_modules=sorted(ranks), use_rslora=bool(peft_config.get("use_rslora", False)),
        rank_pattern={re.escape(n): v for n, v in ranks.items() if v != ranks[first]},
        alpha_pattern={re.escape(n): v for n, v in alphas.items() if v != alphas[first]},
    )
    return config, ours


def is_peft_adapter(path):
    """Was the adapter folder ``path`` written in PEFT's layout (its config has peft_type), not minilora's own?"""
    config_path = os.path.join(path, CONFIG_NAME)
    return os.path.isfile(config_path) and "peft_type" in load_json(config_path)


def load_peft_llama(model, path, adapter_name="default"):
    """Load a PEFT Llama adapter folder onto our Llama (plain: returns a new LoraModel; a LoraModel: adds it)."""
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}. Fix: point to a folder written by save_pretrained().")
    weights = load_safetensors(os.path.join(path, WEIGHTS_NAME))[0]
    config, arrays = from_peft_llama(load_json(config_path), weights, config_path)
    return attach_adapter(model, config, arrays, adapter_name, source=path)
