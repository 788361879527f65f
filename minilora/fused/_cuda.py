"""Compiling and launching the fused kernels: one warp (32 threads) per row, or one thread per element.

A row kernel sees its row as ``x[row * cols + c]`` for c = lane, lane + 32, ...;
the 32 lanes then combine their partial sums or maxima with ``warp_sum`` /
``warp_max`` (register shuffles: no shared memory, no block-wide barrier).
Kernels are C++ templates over the stored type T, compiled by NVRTC the first
time they are used (CuPy caches the binaries on disk), for float, double and
the 16-bit floats __half (float16) and __nv_bfloat16 (ml_dtypes' bfloat16).

The 16-bit types are only stored: a kernel reads them with ``to_acc``, does
its arithmetic in ``acc_t<T>`` (float for the 16-bit types, T itself for float
and double) and rounds once on the way out with ``from_acc<T>``. That is what
autocast promises for softmax, norms and the loss: fp32 sums and exponentials
on half-precision inputs, without an fp32 copy of the array in memory.
"""
import functools

import numpy as np

PRELUDE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
template <typename T> struct Acc { using type = T; };       // float and double compute in themselves,
template <> struct Acc<__half> { using type = float; };     // the 16-bit floats in float
template <> struct Acc<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename Acc<T>::type;
__device__ float to_acc(float v) { return v; }
__device__ double to_acc(double v) { return v; }
__device__ float to_acc(__half v) { return __half2float(v); }
__device__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ T from_acc(acc_t<T> v) { return v; }
template <> __device__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename A> __device__ A warp_sum(A v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;  // every lane now holds the sum over the 32 lanes
}
template <typename A> __device__ A warp_max(A v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}
#define NEGATIVE_INFINITY __int_as_float(0xff800000)
"""

WARPS_PER_BLOCK = 8
THREADS_PER_BLOCK = 256


@functools.lru_cache(maxsize=None)
def _ctypes():
    """NumPy dtype -> the C++ type a kernel stores it as (bfloat16 only where ml_dtypes is installed)."""
    ctypes = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.float16): "__half"}
    try:
        import ml_dtypes
        ctypes[np.dtype(ml_dtypes.bfloat16)] = "__nv_bfloat16"
    except ImportError:
        pass
    return ctypes


def fusable(*arrays):
    """True if the fused kernels can take these arrays: CuPy, one float dtype (16, 32 or 64 bits) for all."""
    from .. import backend
    return all(backend.is_cupy_array(a) and a.dtype in _ctypes() and a.dtype == arrays[0].dtype for a in arrays)


def acc_dtype(dtype):
    """The dtype a kernel computes ``dtype`` in: float32 for the 16-bit floats, else ``dtype`` itself."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize == 2 else np.dtype(dtype)


def acc_scalar(dtype, value):
    """``value`` as the kernel's ``acc_t<T>`` argument for arrays of ``dtype``."""
    return acc_dtype(dtype).type(value)


@functools.lru_cache(maxsize=None)
def _module(source):
    import cupy

    names = [f"{name}<{ctype}>" for name in _kernel_names(source) for ctype in _ctypes().values()]
    return cupy.RawModule(code=PRELUDE + source, options=("--std=c++17",), name_expressions=names)


def _kernel_names(source):
    """The names of the templates defined in ``source`` (each is instantiated for every stored type)."""
    return [line.split("void ", 1)[1].split("(", 1)[0] for line in source.splitlines() if line.startswith("__global__ void ")]


def compiled_kernel(source, name, dtype):
    """The compiled ``name<T>`` from ``source`` for arrays of ``dtype``."""
    return _module(source).get_function(f"{name}<{_ctypes()[np.dtype(dtype)]}>")


def launch_rows(kernel, rows, *args):
    """Run ``kernel`` with one warp per row, ``rows`` rows in all."""
    if rows == 0:
        return
    blocks = (rows + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK
    kernel((blocks,), (32 * WARPS_PER_BLOCK,), args)


def launch_elements(kernel, n, *args):
    """Run ``kernel`` with one thread per element, ``n`` elements in all."""
    if n == 0:
        return
    kernel(((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK,), (THREADS_PER_BLOCK,), args)
