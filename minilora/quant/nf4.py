"""NF4, QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, arXiv 2305.14314): w = absmax * CODE[q].

Per block of 64 values: absmax = max |w| as float32 (4 bytes) and 64 codes q in
0..15 (32 bytes): 36 bytes for 64 weights, 4.5 bits a weight. Quantizing divides
the block by absmax (into [-1, 1]) and picks the nearest of the 16 code values.

The code values are quantiles of N(0, 1), scaled into [-1, 1], with an exact 0:
pretrained weights are close to normal, so each code is used about equally often.
QLoRA's construction (bitsandbytes' create_normal_map) takes 8 quantiles for the
positive side and 7 for the negative one, at probabilities evenly spaced from
offset = 1 - (1/32 + 1/30) / 2 = 0.9677 down to 1/2 (1/2 itself is the 0), and
divides by the largest. tests/test_quant.py rebuilds them from that definition.

Left out: QLoRA's double quantization (absmax itself in 8 bits per block of 256,
0.127 bits a weight instead of 0.5). Here absmax stays float32.

    codes (rows, cols // 2) uint8, absmax (rows, cols // 64) float32
"""
import numpy as np

from .. import backend
from .blocks import check_blocks, pack_codes, unpack_codes

BLOCK = 64

# The 16 NF4 values, as float32, from bitsandbytes (csrc/kernels.cu, dDequantizeNF4; the same numbers
# are QLoRA's Appendix E table). They are the normalised N(0, 1) quantiles described above.
CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def quantize(w):
    """w (rows, cols) float -> (codes, absmax): each value divided by its block's absmax, then the nearest code."""
    check_blocks("nf4.quantize", w.shape, BLOCK)
    rows, cols = w.shape
    blocks = np.asarray(w, dtype=np.float32).reshape(rows, cols // BLOCK, BLOCK)  # (rows, n_blocks, 64)
    absmax = np.abs(blocks).max(axis=-1)  # (rows, n_blocks)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(absmax[..., None] > 0, blocks / absmax[..., None], 0)  # in [-1, 1]; an all-zero block stays 0
    midpoints = (CODE[1:] + CODE[:-1]) / 2  # (15,): code i wins between midpoints i - 1 and i
    q = np.searchsorted(midpoints, normalised)  # (rows, n_blocks, 64): the nearest code
    return pack_codes(q), absmax


def dequantize(codes, absmax):
    """(codes, absmax) -> w (rows, cols) float32: w = absmax * CODE[q]."""
    xp = backend.array_module(codes)
    rows = codes.shape[0]
    w = xp.take(xp.asarray(CODE), unpack_codes(codes, BLOCK))  # (rows, n_blocks, 64): CODE[q]
    w *= absmax[..., None]
    return w.reshape(rows, -1)
