"""The one module that knows NumPy from CuPy.

Every other file asks this one for its array module (``xp()``), for host
transfers, for scatter-add and for random numbers. Switching the backend is the
only global choice in minilora besides the default dtype.

    minilora.set_backend("cupy")          # or MINILORA_BACKEND=cupy
    minilora.get_backend()                # -> "cupy"
"""
import contextlib
import functools
import os

import numpy as np

_BACKENDS = ("numpy", "cupy")
_state = {"name": "numpy", "xp": np, "default_dtype": np.dtype(np.float32)}
_environment_error = []  # the error of an unusable $MINILORA_BACKEND, until set_backend() replaces that choice
_pending_environment = []  # $MINILORA_BACKEND, applied on first use: a command that chooses NumPy itself never imports CuPy


def _import_cupy():
    """Return the cupy module, or raise an error that says why it cannot run and how to fix it."""
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError(
            "the cupy backend needs CuPy, which is not installed "
            f"({error}). Fix: pip install 'minilora[gpu]' on a machine with an "
            "NVIDIA GPU and CUDA 12, or use the numpy backend (set_backend('numpy'); on the command line, --backend numpy)."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA raises its own error types when no driver is present
        raise RuntimeError(
            f"the cupy backend found no usable GPU ({type(error).__name__}: {error}). "
            "Fix: run on a machine with an NVIDIA GPU and driver, or use the numpy backend "
            "(set_backend('numpy'); on the command line, --backend numpy)."
        ) from None
    if count == 0:
        raise RuntimeError("the cupy backend found 0 GPUs. Fix: use the numpy backend (set_backend('numpy'); on the command line, --backend numpy).")
    return cupy


def cupy_unavailable_reason():
    """Why the cupy backend cannot run on this machine, or None if it can (tests skip GPU-only checks on this)."""
    try:
        _import_cupy()
    except RuntimeError as error:
        return str(error)
    return None


def set_backend(name):
    """Choose where new tensors live: "numpy" (CPU) or "cupy" (NVIDIA GPU)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {_BACKENDS}")
    _state["xp"] = _import_cupy() if name == "cupy" else np
    _state["name"] = name
    _environment_error.clear()
    _pending_environment.clear()


def _raise_environment_error():
    if _pending_environment:
        _use_environment(_pending_environment.pop())
    if _environment_error:
        error_type, message = _environment_error[0]
        raise error_type(message)


def get_backend():
    """Return the name of the current backend, "numpy" or "cupy"."""
    _raise_environment_error()
    return _state["name"]


@contextlib.contextmanager
def using_backend(name):
    """Inside the block, new tensors go to backend ``name``; the previous backend comes back afterwards.

    A $MINILORA_BACKEND not yet applied stays unapplied (``using_backend("numpy")`` never imports CuPy)."""
    previous, error, pending = _state["name"], list(_environment_error), list(_pending_environment)
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
        _environment_error[:], _pending_environment[:] = error, pending


def xp():
    """Return the array module of the current backend (numpy or cupy)."""
    _raise_environment_error()
    return _state["xp"]


def is_floating(dtype):
    """True for float16/32/64 and for ml_dtypes' bfloat16 (which NumPy files under kind "V", not "f")."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def set_default_dtype(dtype):
    """Set the dtype given to tensors made from Python numbers and lists (float32 unless changed)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"the default dtype must be a float type, got {dtype}")
    _state["default_dtype"] = dtype


def get_default_dtype():
    return _state["default_dtype"]


@contextlib.contextmanager
def using_default_dtype(dtype):
    """Inside the block, tensors made from Python numbers get ``dtype`` (float64 for gradient checks)."""
    previous = _state["default_dtype"]
    set_default_dtype(dtype)
    try:
        yield
    finally:
        _state["default_dtype"] = previous


def is_cupy_array(x):
    return type(x).__module__.split(".")[0] == "cupy"


def backend_of(x):
    """Name the backend that owns array ``x``."""
    return "cupy" if is_cupy_array(x) else "numpy"


def array_module(x):
    """The module (numpy or cupy) whose functions apply to array ``x``."""
    if is_cupy_array(x):
        import cupy
        return cupy
    return np


def check_same_backend(op_name, arrays):
    """Raise TypeError if ``arrays`` mix NumPy and CuPy: a silent host copy would hide a bug."""
    names = {backend_of(a) for a in arrays}
    if len(names) > 1:
        shapes = ", ".join(f"{backend_of(a)} array of shape {tuple(a.shape)}" for a in arrays)
        raise TypeError(
            f"{op_name}: inputs live on different backends ({shapes}). "
            "Fix: move them to one backend first, e.g. model.to('cupy') or Tensor(x) after set_backend."
        )


def to_numpy(x):
    """Copy an array of either backend to a NumPy array on the host (a NumPy array is returned as is)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def asarray(data, dtype=None, like=None):
    """Put ``data`` (a list, a number, or an array of either backend) on the current backend.

    ``like``: an array; put ``data`` on *its* backend instead (as ``numpy.asarray(..., like=)``),
    e.g. a loaded weight beside the parameter it replaces, wherever the model lives.
    """
    module = xp() if like is None else array_module(like)
    if is_cupy_array(data) and module is np:
        data = data.get()
    if dtype is None and not hasattr(data, "dtype"):
        as_host = np.asarray(data)
        dtype = _state["default_dtype"] if as_host.dtype.kind in "fc" or as_host.dtype == object else None
        if as_host.dtype.kind in "iub" and as_host.dtype != np.bool_:
            dtype = np.int64
    return module.asarray(data, dtype=dtype)


def scatter_add(target, indices, values):
    """target[indices] += values, where repeated indices accumulate (plain ``+=`` would drop them).

    On the GPU, ``cupyx.scatter_add`` adds with atomics, in whatever order the
    threads arrive: float sums then change in the last bit from run to run, and a
    resumed training run no longer repeats the uninterrupted one bit for bit. So
    the common case, rows picked by a 1-D integer array (the Embedding backward),
    goes through ``scatter_add_rows`` instead: a fixed order, and no
    data-dependent sizes that would make the host wait for the GPU.
    """
    if not is_cupy_array(target):
        np.add.at(target, indices, values)
    elif getattr(indices, "ndim", None) == 1 and indices.dtype.kind in "iu" and target.flags.c_contiguous:
        rows = array_module(target).asarray(indices)
        scatter_add_rows(target, rows % target.shape[0], values)  # -1 and n-1 are one row
    else:
        import cupyx
        cupyx.scatter_add(target, indices, values)
    return target


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
    """target[rows] += values on the GPU for 1-D integer ``rows`` in [0, R), in a fixed order; target C-contiguous.

    rows (N,), values (N, W), target (R, W). The picks are sorted by row, ties by
    position; then, for each column, the first pick of every run of equal rows
    adds the whole run, in order.
    """
    cupy = array_module(target)
    n = rows.size
    width = target.size // target.shape[0] if target.shape[0] else 0
    if n == 0 or width == 0:
        return target
    rows = rows.astype(cupy.int64, copy=False)
    order = cupy.argsort(rows * n + cupy.arange(n))  # unique keys: by row, then by position
    values = cupy.ascontiguousarray(values, dtype=target.dtype).reshape(n, width)
    _run_sum_kernel()(rows[order], order, values, np.int64(n), np.int64(width), target, size=n * width)
    return target


def sum_over_rows(a):
    """a (N, C) -> (C,): the sum of the rows, as bias and LayerNorm weight gradients need.

    On the GPU this is a matrix-vector product, ones (N,) @ a, which cuBLAS does
    reading the rows in order. CuPy's reduction over axis 0 instead made GPT-2's
    full fine-tuning step 9 ms slower (99.6 against 90.7 ms of GPU time,
    bench/profile_gpu_step.py --mode full).
    """
    if is_cupy_array(a):
        return array_module(a).ones(a.shape[0], dtype=a.dtype) @ a
    return a.sum(axis=0)


def matmul(a, b):
    """a @ b, for a (..., M, K) and b (..., K, N) with broadcast leading axes -> (..., M, N).

    CuPy multiplies bfloat16 matrices only two axes at a time (a batch of them
    fails: CuPy takes ml_dtypes' bfloat16 for an integer type there), so a
    batched bf16 product goes to cuBLAS's strided batched GEMM here, with
    float32 accumulation as for fp16. Everything else is plain ``a @ b``.
    """
    if not (is_cupy_array(a) and a.dtype.name == "bfloat16" == b.dtype.name and max(a.ndim, b.ndim) > 2):
        return a @ b
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align. Fix: a (..., M, K) @ b (..., K, N)")
    cupy = array_module(a)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = cupy.empty(batch + (M, N), dtype=a.dtype)
    count = int(np.prod(batch))
    if out.size == 0 or K == 0:
        out.fill(0)
        return out
    # Row-major C = A B is column-major C^T = B^T A^T: cuBLAS gets b first, then a.
    (b_op, b_ld, b_stride, b), (a_op, a_ld, a_stride, a) = _gemm_operand(b, batch), _gemm_operand(a, batch)
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    bf16, compute_f32, default_algorithm = 14, 68, -1  # CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT
    cublas.gemmStridedBatchedEx(handle, b_op, a_op, N, M, K, one.ctypes.data, b.data.ptr, bf16, b_ld, b_stride,
                                a.data.ptr, bf16, a_ld, a_stride, zero.ctypes.data, out.data.ptr, bf16, N, M * N,
                                count, compute_f32, default_algorithm)
    return out


def _gemm_operand(x, batch):
    """(cuBLAS op, leading dimension, batch stride, array) for a row-major (..., R, C) operand broadcast to ``batch``.

    A C-contiguous matrix is column-major transposed (op N); the transpose of
    one (a swapaxes view, as k^T) is column-major itself (op T). A matrix
    broadcast over the batch has stride 0. Anything else, or leading axes that
    do not step evenly, is copied first.
    """
    xp = array_module(x)
    stacked = xp.broadcast_to(x, batch + x.shape[-2:])
    for make in (lambda: stacked, lambda: xp.ascontiguousarray(stacked)):  # the copy only if the view will not do
        attempt = make()
        rows, cols = attempt.shape[-2:]
        row_step, col_step = (s // attempt.itemsize for s in attempt.strides[-2:])
        if col_step == 1 and row_step >= max(cols, 1):
            op, ld = 0, row_step  # CUBLAS_OP_N
        elif row_step == 1 and col_step >= max(rows, 1):
            op, ld = 1, col_step  # CUBLAS_OP_T
        else:
            continue
        steps = [s // attempt.itemsize for s in attempt.strides[:-2]]
        if all(step == 0 for step in steps):
            return op, ld, 0, attempt
        if all(steps[i] == steps[i + 1] * attempt.shape[i + 1] for i in range(len(steps) - 1)):
            return op, ld, steps[-1], attempt
    raise AssertionError(f"matmul: no cuBLAS layout for strides {x.strides}")  # a contiguous copy always has one


def peak_bytes_allocated(work):
    """The high-water mark of array memory that ``work()`` allocates on the current backend, in bytes."""
    _raise_environment_error()
    if _state["name"] == "cupy":
        return _cupy_peak_bytes(_state["xp"], work)
    import tracemalloc

    tracemalloc.start()  # NumPy reports every array buffer it allocates to tracemalloc
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cupy_peak_bytes(cupy, work):
    """Count the bytes CuPy's pool hands out and takes back during ``work()``; return the most in use at once.

    The pool's own size would overstate this: it keeps freed blocks, and a
    block freed by one array and split for two smaller ones is counted once.
    """
    class PeakHook(cupy.cuda.MemoryHook):
        name = "minilora_peak_bytes"

        def __init__(self):
            self.in_use = self.peak = 0

        def malloc_postprocess(self, **info):
            self.in_use += info["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **info):
            self.in_use -= info["mem_size"]

    with PeakHook() as hook:
        work()
        synchronize()
    return hook.peak


def retain_host_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    Each training step frees its activations and allocates them again in the
    next one. By default glibc gives large freed blocks back to the kernel (it
    unmaps them and trims the heap), so every step the kernel must map and zero
    them again, page by page, on first touch: on a 2-core CPU that was a third
    of the classroom GPT's step (docs/performance.md). A GPU needs nothing like
    this: CuPy's memory pool keeps its blocks already.

    Process-wide, like ``torch.set_num_threads``; the memory kept is at most the
    process's peak. ``train.fit`` calls it. Returns True where it took effect
    (glibc), False elsewhere, where nothing changes.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc: no mallopt to call
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    kept_mapped = mallopt(m_mmap_threshold, 32 << 20)  # blocks up to 32 MB (glibc's limit) come from the heap
    kept_heap = mallopt(m_trim_threshold, 1 << 30)  # and the heap shrinks only past 1 GB of free space
    return bool(kept_mapped and kept_heap)


def synchronize():
    """Wait for the GPU to finish queued work (a no-op on NumPy); call it before reading a timer."""
    _raise_environment_error()
    if _state["name"] == "cupy":
        _state["xp"].cuda.get_current_stream().synchronize()


def default_rng(seed=None):
    """A seeded host-side generator. Draw on the host and move, so one seed gives one model everywhere."""
    return np.random.default_rng(seed)


def randn(shape, rng, dtype=None):
    """Standard normal numbers of ``shape`` from generator ``rng``, on the current backend."""
    return asarray(rng.standard_normal(shape), dtype=dtype or _state["default_dtype"])


def uniform(shape, low, high, rng, dtype=None):
    """Uniform numbers in [low, high) of ``shape`` from generator ``rng``, on the current backend."""
    return asarray(rng.uniform(low, high, size=shape), dtype=dtype or _state["default_dtype"])


def _use_environment(name):
    """Apply $MINILORA_BACKEND. If it cannot be used, ``import minilora`` still works (so ``minilora --help``
    does, and the command line can report the problem in one line): get_backend() and xp() raise the error
    until set_backend() makes another choice."""
    try:
        set_backend(name)
    except ValueError as error:  # an unknown name
        _environment_error[:] = [(ValueError, f"MINILORA_BACKEND={name!r}: {error}. Fix: set MINILORA_BACKEND to numpy or cupy, or unset it.")]
    except RuntimeError as error:  # cupy that cannot run here; the message says why and how to fix it
        _environment_error[:] = [(RuntimeError, f"MINILORA_BACKEND={name!r}: {error}")]


if os.environ.get("MINILORA_BACKEND"):
    _pending_environment.append(os.environ["MINILORA_BACKEND"])
