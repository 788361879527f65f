"""Blocks of 4-bit codes, two to a byte: the layout shared by Q4_1 and NF4.

A weight W (rows, cols) is cut along each row into blocks of ``block`` values
(32 for Q4_1, 64 for NF4); each value becomes a 4-bit code q in 0..15, and each
block keeps its own scale (and, for Q4_1, its minimum). Byte j of a block holds
the codes of values j (low 4 bits) and j + block/2 (high 4 bits): llama.cpp's
Q4_1 layout, which minilora's NF4 shares so that one unpacking serves both.
(bitsandbytes packs NF4 codes of neighbours 2j, 2j + 1 instead; the code book and
the arithmetic are the same.)

    codes (rows, cols // 2) uint8  <->  q (rows, cols // block, block) uint8 in 0..15
"""
from .. import backend


def check_blocks(name, shape, block):
    """Raise a ValueError unless ``shape`` is a matrix whose rows split into whole blocks of ``block`` values."""
    if len(shape) != 2 or shape[1] % block:
        raise ValueError(
            f"{name}: a weight of shape {tuple(shape)} does not split into blocks of {block} values along its rows "
            f"(need a 2-D (out, in) weight with in % {block} == 0). Fix: leave this layer in float (skip it when quantizing)."
        )


def pack_codes(q):
    """q (rows, n_blocks, block) codes in 0..15 -> codes (rows, n_blocks * block // 2) uint8."""
    rows, n_blocks, block = q.shape
    halves = q.astype("uint8").reshape(rows, n_blocks, 2, block // 2)  # (rows, blocks, first/second half, block/2)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(rows, n_blocks * block // 2)


def unpack_codes(codes, block):
    """codes (rows, cols // 2) uint8 -> q (rows, cols // block, block) uint8 in 0..15."""
    xp = backend.array_module(codes)
    rows = codes.shape[0]
    halves = codes.reshape(rows, -1, 1, block // 2)  # (rows, blocks, 1, block/2)
    return xp.concatenate([halves & 15, halves >> 4], axis=2).reshape(rows, -1, block)  # low nibbles first
