"""LoRA (Hu et al., 2021): frozen W0 plus a trainable low-rank update, h = W0 x + (alpha / r) B A x.

Read in this order:
    function.py  the fused lora_linear op and its hand-written backward
    layer.py     LoRALinear: a frozen Linear with named adapters, merge/unmerge
    config.py    LoraConfig: targets, rank, alpha, init
    model.py     get_peft_model / LoraModel: inject, train only A and B, merge, switch adapters
    files.py     adapter files (only A and B), loading with shape checks
    peft_gpt2.py the PEFT file layout for GPT-2's fused c_attn
    peft_llama.py the PEFT file layout for Llama (a key prefix)
"""
from .config import LoraConfig
from .files import adapter_size, load_adapter, read_adapter, save_adapter
from .function import LoRALinearFunction, lora_linear
from .layer import LoRALinear
from .model import LoraModel, count_parameters, from_pretrained, get_peft_model, lora_layers, mark_only_lora_as_trainable
from .peft_gpt2 import from_peft_gpt2, load_peft_gpt2, save_peft_gpt2, to_peft_gpt2
from .peft_llama import from_peft_llama, load_peft_llama, save_peft_llama, to_peft_llama

__all__ = [
    "LoraConfig", "LoRALinear", "LoRALinearFunction", "lora_linear", "LoraModel", "get_peft_model",
    "mark_only_lora_as_trainable", "count_parameters", "lora_layers", "save_adapter", "load_adapter",
    "from_pretrained", "read_adapter", "adapter_size", "save_peft_gpt2", "load_peft_gpt2", "to_peft_gpt2",
    "from_peft_gpt2", "save_peft_llama", "load_peft_llama", "to_peft_llama", "from_peft_llama",
]
