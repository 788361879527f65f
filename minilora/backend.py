"""The one module that knows NumPy from CuPy.

Every other file asks this one for its array module (``xp()``), for host
transfers, for scatter-add and for random numbers. Switching the backend is the
only global choice in minilora besides the default dtype.

    minilora.set_backend("cupy")          # or MINILORA_BACKEND=cupy
    minilora.get_backend()                # -> "cupy"
"""
import contextlib
import os

import numpy as np

_BACKENDS = ("numpy", "cupy")
_state = {"name": "numpy", "xp": np, "default_dtype": np.dtype(np.float32)}


def _import_cupy():
    """Return the cupy module, or raise an error that says why it cannot run and how to fix it."""
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError(
            "the cupy backend needs CuPy, which is not installed "
            f"({error}). Fix: pip install 'minilora[gpu]' on a machine with an "
            "NVIDIA GPU and CUDA 12, or use set_backend('numpy')."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA raises its own error types when no driver is present
        raise RuntimeError(
            f"the cupy backend found no usable GPU ({type(error).__name__}: {error}). "
            "Fix: run on a machine with an NVIDIA GPU and driver, or use set_backend('numpy')."
        ) from None
    if count == 0:
        raise RuntimeError("the cupy backend found 0 GPUs. Fix: use set_backend('numpy').")
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


def get_backend():
    """Return the name of the current backend, "numpy" or "cupy"."""
    return _state["name"]


@contextlib.contextmanager
def using_backend(name):
    """Inside the block, new tensors go to backend ``name``; the previous backend comes back afterwards."""
    previous = _state["name"]
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def xp():
    """Return the array module of the current backend (numpy or cupy)."""
    return _state["xp"]


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
    module = _state["xp"] if like is None else array_module(like)
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
    goes through ``_deterministic_row_scatter_add`` instead.
    """
    if not is_cupy_array(target):
        np.add.at(target, indices, values)
    elif getattr(indices, "ndim", None) == 1 and indices.dtype.kind in "iu":
        _deterministic_row_scatter_add(array_module(target), target, indices, values)
    else:
        import cupyx
        cupyx.scatter_add(target, indices, values)
    return target


def _deterministic_row_scatter_add(xp, target, rows, values):
    """target[rows] += values for a 1-D ``rows`` (N,), in a fixed order: a one-hot matmul, no atomics.

    With U distinct rows, one_hot (U, N) says which of the N value rows go to
    each distinct row; one_hot @ values sums them (a GEMM: exact 0/1 products,
    a fixed summation order, no two threads writing one place).
    """
    rows = xp.asarray(rows)
    rows = xp.where(rows < 0, rows + target.shape[0], rows)  # -1 and n-1 are one row: count it once
    distinct, which = xp.unique(rows, return_inverse=True)  # (U,), (N,): rows == distinct[which]
    one_hot = (which.reshape(1, -1) == xp.arange(distinct.size).reshape(-1, 1)).astype(values.dtype)  # (U, N)
    sums = one_hot @ values.reshape(rows.size, -1)  # (U, prod of the trailing shape)
    target[distinct] += sums.reshape((distinct.size,) + target.shape[1:])


def peak_bytes_allocated(work):
    """The high-water mark of array memory that ``work()`` allocates on the current backend, in bytes."""
    if _state["name"] == "cupy":
        # CuPy keeps freed blocks in its pool, so the pool's growth over the work is its high-water mark.
        pool = _state["xp"].get_default_memory_pool()
        pool.free_all_blocks()
        before = pool.total_bytes()
        work()
        synchronize()
        return pool.total_bytes() - before
    import tracemalloc

    tracemalloc.start()  # NumPy reports every array buffer it allocates to tracemalloc
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def synchronize():
    """Wait for the GPU to finish queued work (a no-op on NumPy); call it before reading a timer."""
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


if os.environ.get("MINILORA_BACKEND"):
    set_backend(os.environ["MINILORA_BACKEND"])
