"""A QuantizedLinear from one weight of a GGUF file (Llama.from_gguf(path, quantized=...), models/llama_gguf.py).

Asked for "q4_1", a Q4_1 tensor keeps the file's own blocks: no float round
trip, so the 4-bit model computes with exactly the numbers the float model
dequantizes. Any other pair (a Q4_1 tensor into "nf4", or an F16 / Q8_0 tensor)
is dequantized to float32 and quantized again into the format asked for.
"""
import numpy as np

from .. import backend
from ..models.llama_gguf import dequantize, unpermute_rope_rows
from . import q4_1
from .linear import QuantizedLinear, check_format


def linear_from_gguf(tensor, format, path, rope_heads=None, dtype=None):
    """A frozen QuantizedLinear holding GGUF ``tensor`` (out, in) in ``format``, on the current backend.

    rope_heads: the number of heads of a q or k projection, whose rows the file
    stores permuted (unpermute_rope_rows); a row of Q4_1 blocks moves as a whole.
    """
    module = check_format(format, f"{path}: Llama.from_gguf(quantized=...)")
    rows, cols = (int(n) for n in reversed(tensor.shape))
    if format == "q4_1" and tensor.tensor_type.name == "Q4_1":
        raw = np.asarray(tensor.data).reshape(rows, -1)  # (out, in // 32 * 20): each row's blocks
        if rope_heads:
            raw = unpermute_rope_rows(raw, rope_heads)
        blocks = q4_1.from_gguf_bytes(raw, (rows, cols), tensor.name)
    else:
        w = dequantize(tensor, path)  # (out, in) float32
        if rope_heads:
            w = unpermute_rope_rows(w, rope_heads)
        blocks = module.quantize(w)
    codes, scales, *mins = (backend.asarray(a) for a in blocks)
    return QuantizedLinear(format, codes, scales, mins[0] if mins else None, dtype=dtype)
