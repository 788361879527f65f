"""Put a model's frozen base into 4 bits, or back into float, and count what it weighs.

    model = quantize_base(Llama.from_gguf(path), "nf4")   # every Linear but the output head
    model = get_peft_model(model, LoraConfig(r=8))         # LoRA on the 4-bit base: QLoRA

Llama.from_gguf(path, quantized="q4_1") keeps the file's own Q4_1 blocks instead
(models/llama_gguf.py), with no float round trip.
"""
from ..nn import Linear, Parameter
from .linear import QuantizedLinear, check_format


def replace_module(model, name, module):
    """Put ``module`` in the place of ``model``'s submodule ``name`` (as LoraModel does)."""
    # Imported here: lora/layer.py imports this package, so lora/model.py may still be loading.
    from ..lora.model import _set_submodule

    _set_submodule(model, name, module)


def quantize_base(model, format="nf4"):
    """Replace every Linear of ``model`` (in place) by a frozen QuantizedLinear in ``format``; returns ``model``.

    Left in float, as QLoRA leaves them: the output head (``get_output_embeddings()``,
    often tied to the embedding) and every Embedding and norm. A Linear already
    inside a LoRALinear is quantized too (its A and B stay float32).
    """
    check_format(format, "quantize_base")
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    for name, m in list(model.named_modules()):
        if type(m) is Linear and m is not head:
            replace_module(model, name, QuantizedLinear.from_linear(m, format))
    return model


def dequantize_base(model):
    """Replace every QuantizedLinear (in place) by a frozen float Linear holding its dequantized W0; returns ``model``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantizedLinear):
            linear = Linear(m.in_features, m.out_features, bias=False)
            linear.weight = Parameter(m.dequantize(), requires_grad=False)
            linear.bias = m.bias
            replace_module(model, name, linear)
    return model


def base_memory(model):
    """{"float32_bytes", "quantized_bytes", "quantized_layers"}: the 4-bit layers' weights as stored, and as float32."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    return {
        "quantized_layers": len(layers),
        "float32_bytes": sum(4 * m.in_features * m.out_features for m in layers),
        "quantized_bytes": sum(m.nbytes() for m in layers),
    }
