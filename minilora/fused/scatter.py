"""target[rows] += values on the GPU, with repeated rows summed in a fixed order and no wait for the host.

rows (N,) of ints, values (N, W), target (R, W); the Embedding backward's scatter.
Atomic adds (``cupyx.scatter_add``) sum repeats in whatever order the threads
arrive, so float sums differ in the last bit from run to run. Here the picks
are sorted by row, ties by position; then, for each column, the first pick of
every run of equal rows adds the whole run, in order.
"""
import functools

import numpy as np

from .. import backend


@functools.lru_cache(maxsize=None)
def _run_sum_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "raw int64 sorted_rows, raw int64 order, raw T values, int64 n, int64 width", "raw T target",
        """
        const long long pos = i / width, col = i % width;
        const long long row = sorted_rows[pos];
        if (pos == 0 || sorted_rows[pos - 1] != row) {  // the first pick of its run adds the run
            T total = 0;
            for (long long j = pos; j < n && sorted_rows[j] == row; ++j) total += values[order[j] * width + col];
            target[row * width + col] += total;
        }
        """,
        "minilora_scatter_add_rows")


def scatter_add_rows(target, rows, values):
    """target[rows] += values for 1-D integer ``rows`` in [0, R), deterministically; target must be C-contiguous."""
    cupy = backend.array_module(target)
    n = rows.size
    width = target.size // target.shape[0] if target.shape[0] else 0
    if n == 0 or width == 0:
        return target
    rows = rows.astype(cupy.int64, copy=False)
    order = cupy.argsort(rows * n + cupy.arange(n))  # unique keys: by row, then by position
    values = cupy.ascontiguousarray(values, dtype=target.dtype).reshape(n, width)
    _run_sum_kernel()(rows[order], order, values, np.int64(n), np.int64(width), target, size=n * width)
    return target
