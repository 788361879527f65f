"""Compiling and launching the fused row kernels: one warp (32 threads) per row of the last axis.

A row kernel sees its row as ``x[row * cols + c]`` for c = lane, lane + 32, ...;
the 32 lanes then combine their partial sums or maxima with ``warp_sum`` /
``warp_max`` (register shuffles: no shared memory, no block-wide barrier).
Kernels are C++ templates over T = float or double, compiled by NVRTC the first
time they are used (CuPy caches the binaries on disk).
"""
import functools

import numpy as np

WARP_REDUCE = r"""
template <typename T> __device__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;  // every lane now holds the sum over the 32 lanes
}
template <typename T> __device__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}
#define NEGATIVE_INFINITY __int_as_float(0xff800000)
"""

WARPS_PER_BLOCK = 8
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def fusable(*arrays):
    """True if the fused kernels can take these arrays: CuPy, float32 or float64, one dtype."""
    from .. import backend
    return all(backend.is_cupy_array(a) and a.dtype in _CTYPES and a.dtype == arrays[0].dtype for a in arrays)


@functools.lru_cache(maxsize=None)
def _module(source):
    import cupy

    names = [f"{name}<{ctype}>" for name in _kernel_names(source) for ctype in _CTYPES.values()]
    return cupy.RawModule(code=WARP_REDUCE + source, options=("--std=c++17",), name_expressions=names)


def _kernel_names(source):
    """The names of the templates defined in ``source`` (each is instantiated for float and double)."""
    return [line.split("void ", 1)[1].split("(", 1)[0] for line in source.splitlines() if line.startswith("__global__ void ")]


def row_kernel(source, name, dtype):
    """The compiled ``name<T>`` from ``source`` for arrays of ``dtype``."""
    return _module(source).get_function(f"{name}<{_CTYPES[np.dtype(dtype)]}>")


def launch_rows(kernel, rows, *args):
    """Run ``kernel`` with one warp per row, ``rows`` rows in all."""
    if rows == 0:
        return
    blocks = (rows + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK
    kernel((blocks,), (32 * WARPS_PER_BLOCK,), args)
