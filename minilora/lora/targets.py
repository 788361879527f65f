"""Which layers of a model hold LoRA adapters, and which Linear layers a LoraConfig selects.

Shared by model.py (putting adapters in) and files.py (saving and checking them).
"""
from ..nn import Linear
from .layer import LoRALinear


def lora_layers(model):
    """(name, LoRALinear) for every adapted layer of ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _output_head(model):
    """The module that maps hidden states to the vocabulary, which "all-linear" leaves alone (as PEFT)."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def find_target_names(model, config):
    """Names of the Linear layers ``config`` selects; an empty selection is an error listing what exists."""
    config = config.for_model(model)
    head = _output_head(model)
    wrapped = {name for name, _ in lora_layers(model)}
    targets, linear, other = [], [], []
    for name, m in model.named_modules():
        if name.endswith(".base_layer") and name[: -len(".base_layer")] in wrapped:
            continue  # the Linear inside a LoRALinear is reached through the LoRALinear
        is_linear = isinstance(m, (Linear, LoRALinear))
        if is_linear:
            linear.append(name)
        if not name or not config.targets(name):
            continue
        if not is_linear:
            other.append(f"{name} ({type(m).__name__})")
        elif not (config.target_modules == "all-linear" and (m is head or name.split(".")[-1] == "lm_head")):
            targets.append(name)
    if not targets:
        extra = f" It matched only modules that are not Linear: {other}." if other else ""
        raise ValueError(
            f"target_modules={config.target_modules!r} (exclude_modules={config.exclude_modules!r}) matches no Linear "
            f"layer.{extra} The model's Linear layers are: {linear}. Fix: use suffixes of these names "
            "(e.g. ['q', 'v']), a regex matching whole names, or 'all-linear'."
        )
    return targets
