"""Adapter files: only what training changed, as PEFT writes them.

    path/adapter_model.safetensors   "<layer>.lora_A.weight" (r, in), "<layer>.lora_B.weight" (out, r)
                                     (+ "<module>.bias" for biases trained with bias="all"/"lora_only")
    path/adapter_config.json         the LoraConfig's fields

The adapter name is not in the keys (as PEFT), so a file can be loaded under
any name. Both files are written atomically (minilora.io).
"""
import os

import numpy as np

from .. import backend
from ..io import load_json, load_safetensors, save_json, save_safetensors
from .config import LoraConfig
from .targets import find_target_names, lora_layers

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def _plain(name):
    """A parameter's name as in the model without LoRA ("q.base_layer.bias" -> "q.bias")."""
    return name.replace(".base_layer.", ".")


def _trained_biases(model, config, targets):
    """Plain names of the biases that ``config.bias`` trains: none, all, or those of the adapted layers."""
    names = [_plain(n) for n, _ in model.named_parameters() if n.split(".")[-1] == "bias"]
    if config.bias == "lora_only":
        return [n for n in names if n.rpartition(".")[0] in targets]
    return names if config.bias == "all" else []


def adapter_state_dict(lora_model, adapter_name=None):
    """name -> array of everything an adapter file holds (A, B, and trained biases)."""
    adapter_name = adapter_name or lora_model.active_adapter
    lora_model._require(adapter_name)
    state = {}
    for name, layer in lora_layers(lora_model.model):
        if adapter_name in layer.lora_A:
            state[f"{name}.lora_A.weight"] = layer.lora_A[adapter_name].data
            state[f"{name}.lora_B.weight"] = layer.lora_B[adapter_name].data
    config = lora_model.peft_config[adapter_name]
    targets = {n.rpartition(".lora_A")[0] for n in state}
    params = {_plain(n): p for n, p in lora_model.model.named_parameters()}
    for name in _trained_biases(lora_model.model, config, targets):
        state[name] = params[name].data
    return state


def save_adapter(lora_model, path, adapter_name=None):
    """Write the adapter (default: the active one) to folder ``path``; returns the folder."""
    adapter_name = adapter_name or lora_model.active_adapter
    save_safetensors(os.path.join(path, WEIGHTS_NAME), adapter_state_dict(lora_model, adapter_name))
    save_json(os.path.join(path, CONFIG_NAME), lora_model.peft_config[adapter_name].to_dict())
    return path


def read_adapter(path):
    """(LoraConfig, dict of name -> NumPy array) from an adapter folder; unknown config fields are an error."""
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}. Fix: point to a folder written by save_pretrained().")
    config = LoraConfig.from_dict(load_json(config_path), source=config_path)
    arrays, _ = load_safetensors(os.path.join(path, WEIGHTS_NAME))
    return config, arrays


def expected_adapter_shapes(model, config):
    """name -> shape that an adapter file for ``config`` on ``model`` must hold."""
    targets = find_target_names(model, config)
    shapes = {}
    for name in targets:
        m = model.get_submodule(name)
        r, _ = config.rank_and_alpha(name)
        shapes[f"{name}.lora_A.weight"] = (r, m.in_features)
        shapes[f"{name}.lora_B.weight"] = (m.out_features, r)
    params = {_plain(n): p for n, p in model.named_parameters()}
    for name in _trained_biases(model, config, set(targets)):
        shapes[name] = params[name].shape
    return shapes


def check_adapter_fits(model, config, arrays, source):
    """Raise one ValueError listing every missing, unexpected and misshapen tensor."""
    try:
        expected = expected_adapter_shapes(model, config)
    except ValueError as error:
        raise ValueError(f"{source}: the adapter does not fit this model: {error}") from None
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    misshapen = [
        f"{n}: file {tuple(arrays[n].shape)} vs model {expected[n]}"
        for n in sorted(expected) if n in arrays and tuple(arrays[n].shape) != tuple(expected[n])
    ]
    problems = [f"{what}: {items}" for what, items in
                (("shape mismatches", misshapen), ("missing", missing), ("unexpected", unexpected)) if items]
    if problems:
        raise ValueError(
            f"{source}: the adapter does not fit this model ({'; '.join(problems)}). Nothing was loaded. "
            "Fix: load it onto the model it was trained on (same sizes and layer names)."
        )


def load_adapter(lora_model, path, adapter_name):
    """Add the adapter saved in ``path`` to ``lora_model`` as ``adapter_name`` (not activated, as PEFT)."""
    config, arrays = read_adapter(path)
    check_adapter_fits(lora_model.model, config, arrays, source=path)
    lora_model.add_adapter(adapter_name, config)
    copy_adapter_arrays(lora_model, adapter_name, arrays)
    return lora_model


def copy_adapter_arrays(lora_model, adapter_name, arrays):
    """Copy checked arrays (our keys) into the adapter's A and B and the trained biases."""
    layers = dict(lora_layers(lora_model.model))
    params = {_plain(n): p for n, p in lora_model.model.named_parameters()}
    for key, array in arrays.items():
        layer_name, is_factor, kind = key.rpartition(".lora_")  # "h.0.q.lora_A.weight" -> ("h.0.q", ".lora_", "A.weight")
        target = getattr(layers[layer_name], "lora_" + kind[0])[adapter_name] if is_factor else params[key]
        target.data = backend.array_module(target.data).asarray(array, dtype=target.dtype).copy()


def adapter_size(lora_model, adapter_name=None):
    """Bytes of the adapter next to bytes of a full checkpoint of the model (what each file must hold).

    Returns {"adapter_bytes", "full_bytes", "ratio"}: ratio = full / adapter,
    the paper's "35 MB instead of 350 GB" for GPT-3.
    """
    adapter = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in adapter_state_dict(lora_model, adapter_name).values())
    lora = {id(p) for _, layer in lora_layers(lora_model.model) for p in list(layer.lora_A.parameters()) + list(layer.lora_B.parameters())}
    full = sum(p.data.nbytes for p in lora_model.model.parameters() if id(p) not in lora)
    return {"adapter_bytes": adapter, "full_bytes": full, "ratio": full / adapter}
