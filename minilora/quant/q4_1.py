"""Q4_1, llama.cpp's 4-bit format with a scale and a minimum per block of 32: w = d q + m.

Per block of 32 values: d and m as float16 (2 + 2 bytes), 32 codes q in 0..15
(16 bytes): 20 bytes for 32 weights, 5 bits a weight. Quantizing a block maps its
range [min, max] onto 0..15: d = (max - min) / 15, m = min,
q = trunc((w - m) / d + 1/2) clipped to 0..15 (ggml's quantize_row_q4_1).

    codes (rows, cols // 2) uint8, d (rows, cols // 32) float16, m (rows, cols // 32) float16

A GGUF file stores each block as its 20 bytes: d, m, then the 16 bytes of codes
(``from_gguf_bytes``). ``dequantize`` computes d * q + m in float32, in that
order, as gguf.quants does, so both give the same bits.
"""
import numpy as np

from .blocks import check_blocks, pack_codes, unpack_codes

BLOCK = 32
BYTES_PER_BLOCK = 20


def quantize(w):
    """w (rows, cols) float -> (codes, d, m), each block of 32 mapped from [min, max] onto 0..15."""
    check_blocks("q4_1.quantize", w.shape, BLOCK)
    rows, cols = w.shape
    blocks = np.asarray(w, dtype=np.float32).reshape(rows, cols // BLOCK, BLOCK)  # (rows, n_blocks, 32)
    low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    d = (high - low) / 15
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, 0, 1 / d)  # a constant block: every q is 0, w = m
    q = np.trunc((blocks - low) * inverse + np.float32(0.5)).clip(0, 15)  # (rows, n_blocks, 32)
    return pack_codes(q), d[..., 0].astype(np.float16), low[..., 0].astype(np.float16)


def dequantize(codes, d, m):
    """(codes, d, m) -> w (rows, cols) float32: w = d q + m, the product rounded before the sum (as gguf.quants)."""
    rows = codes.shape[0]
    w = unpack_codes(codes, BLOCK).astype(np.float32)  # (rows, n_blocks, 32): q
    w *= d[..., None].astype(np.float32)  # d q
    w += m[..., None].astype(np.float32)  # d q + m
    return w.reshape(rows, -1)


def from_gguf_bytes(raw, shape, name="tensor"):
    """A GGUF Q4_1 tensor's bytes, raw (rows, cols // 32 * 20) uint8, -> (codes, d, m) for a weight of ``shape``."""
    rows, cols = shape
    check_blocks(f"q4_1.from_gguf_bytes ({name})", shape, BLOCK)
    if raw.dtype != np.uint8 or raw.size != rows * cols // BLOCK * BYTES_PER_BLOCK:
        raise ValueError(
            f"q4_1.from_gguf_bytes ({name}): expected {rows * cols // BLOCK * BYTES_PER_BLOCK} bytes of Q4_1 blocks "
            f"for a ({rows}, {cols}) weight, got {raw.size} values of {raw.dtype}. Fix: pass the tensor's raw data."
        )
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // BLOCK, BYTES_PER_BLOCK)  # (rows, n_blocks, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]  # (rows, n_blocks)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0]  # (rows, n_blocks)
    codes = blocks[..., 4:].reshape(rows, cols // 2).copy()  # (rows, cols // 2)
    return codes, d, m

