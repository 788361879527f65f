"""Column sums of a matrix on the GPU: a (N, C) -> (C,), the sum of its rows (bias and LayerNorm weight gradients).

CuPy's reduction over axis 0 and cuBLAS's ones @ a both took about 60 us for
GPT-2's (4096, 768), a fifth of the speed at which the GPU reads memory. Here
thread (chunk, c) adds column c over one chunk of rows, so neighbouring threads
read neighbouring addresses; a second pass adds the chunks' partial sums. The
order of the additions is fixed: the same input gives the same bits.
"""
import functools

import numpy as np

from .. import backend

ROWS_PER_CHUNK = 64


@functools.lru_cache(maxsize=None)
def _partial_sums_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "raw T a, int64 rows, int64 cols, int64 chunk", "T partial",
        """
        const long long c = i % cols, first = (i / cols) * chunk, last = min(rows, first + chunk);
        T sum = 0;
        for (long long r = first; r < last; ++r) sum += a[r * cols + c];
        partial = sum;
        """,
        "minilora_column_partial_sums")


def column_sums(a):
    """a (N, C) -> (C,), the sum over rows, in two passes of chunked column sums."""
    cupy = backend.array_module(a)
    a = cupy.ascontiguousarray(a)
    while a.shape[0] > 1:
        rows, cols = a.shape
        chunks = -(-rows // ROWS_PER_CHUNK)
        partial = cupy.empty((chunks, cols), dtype=a.dtype)  # (chunks, C)
        _partial_sums_kernel()(a, np.int64(rows), np.int64(cols), np.int64(ROWS_PER_CHUNK), partial)
        a = partial
    return a.reshape(-1) if a.shape[0] == 1 else cupy.zeros(a.shape[1], dtype=a.dtype)
