"""4-bit blocks to float32 on the GPU: one thread per weight, one kernel per layer (quant/q4_1.py, quant/nf4.py).

The references unpack the codes into a (rows, blocks, block) array, widen it to
float32, then scale it: four passes over memory and three temporaries. A kernel
reads each code byte and its block's scale and writes w once.

Weight i (row-major over (rows, cols)) sits in block i / block, a block's byte
j holds values j and j + block/2 (quant/blocks.py), so its byte is
(i / block) * (block / 2) + (i % block) % (block / 2). Q4_1's d q + m is written
with __fmul_rn / __fadd_rn so the compiler cannot fuse it into one fma: the
product is rounded first, as NumPy (and gguf.quants) round it, bit for bit.
"""
import functools

import numpy as np

from ..quant import nf4

_BYTE = """
const long long blk = i / BLOCK, j = i % BLOCK;
const unsigned char byte = codes[blk * (BLOCK / 2) + j % (BLOCK / 2)];
const int q = j < BLOCK / 2 ? (byte & 15) : (byte >> 4);
"""


@functools.lru_cache(maxsize=None)
def _kernels():
    import cupy

    q4_1 = cupy.ElementwiseKernel(
        "raw uint8 codes, raw S d, raw S m", "float32 w",
        "#define BLOCK 32\n" + _BYTE +
        "w = __fadd_rn(__fmul_rn(static_cast<float>(d[blk]), (float)q), static_cast<float>(m[blk]));",
        "minilora_dequantize_q4_1")
    nf4_kernel = cupy.ElementwiseKernel(
        "raw uint8 codes, raw float32 absmax, raw float32 code", "float32 w",
        "#define BLOCK 64\n" + _BYTE + "w = __fmul_rn(code[q], absmax[blk]);",
        "minilora_dequantize_nf4")
    return q4_1, nf4_kernel


def _empty(codes):
    import cupy
    return cupy.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.float32)  # (rows, cols)


def fused_dequantize_q4_1(codes, d, m):
    """q4_1.dequantize in one kernel: (codes, d, m) -> w (rows, cols) float32."""
    import cupy
    w = _empty(codes)
    _kernels()[0](cupy.ascontiguousarray(codes), cupy.ascontiguousarray(d), cupy.ascontiguousarray(m), w)
    return w


def fused_dequantize_nf4(codes, absmax):
    """nf4.dequantize in one kernel: (codes, absmax) -> w (rows, cols) float32."""
    import cupy
    w = _empty(codes)
    code = cupy.asarray(nf4.CODE)  # 16 floats, copied each call: 64 bytes
    _kernels()[1](cupy.ascontiguousarray(codes), cupy.ascontiguousarray(absmax, dtype=np.float32), code, w)
    return w
