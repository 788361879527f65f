"""A 4-bit frozen base (QLoRA): weights in Q4_1 or NF4 blocks, dequantized one layer at a time.

    q4_1.py    llama.cpp's Q4_1: blocks of 32, w = d q + m (the format of SmolLM2's GGUF file)
    nf4.py     QLoRA's NormalFloat: blocks of 64, w = absmax CODE[q]
    blocks.py  two 4-bit codes a byte, the layout both share
    linear.py  QuantizedLinear, and the Linear / lora_linear ops over a 4-bit W0
    model.py   quantize_base, dequantize_base, base_memory

The CuPy kernels that dequantize on the GPU are in fused/dequantize.py. See docs/llama.md#the-4-bit-base.
"""
from .linear import FORMATS, QuantizedLinear, quantized_lora_linear
from .model import base_memory, dequantize_base, quantize_base

__all__ = ["FORMATS", "QuantizedLinear", "quantized_lora_linear", "quantize_base", "dequantize_base", "base_memory"]
