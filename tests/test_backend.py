"""The backend switch: clear errors where CuPy cannot run, scatter-add, host random numbers."""
import sys

import numpy as np
import pytest

import minilora
from minilora import backend


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"unknown backend 'jax'"):
        minilora.set_backend("jax")


def _cupy_runs():
    try:
        backend._import_cupy()
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(_cupy_runs(), reason="this machine has a usable GPU, so there is no error to see")
def test_cupy_without_a_gpu_says_why_and_how_to_fix():
    with pytest.raises(RuntimeError, match=r"cupy backend .*Fix:"):
        minilora.set_backend("cupy")
    assert minilora.get_backend() == "numpy"


def test_the_environment_backend_waits_for_its_first_use(monkeypatch):
    """$MINILORA_BACKEND is applied when a tensor first needs a backend: code that chooses NumPy itself (the
    assignments) never imports CuPy, which under a memory limit can fail to load its libraries."""
    monkeypatch.setattr(backend, "_pending_environment", ["cupy"])  # what `import minilora` leaves for MINILORA_BACKEND=cupy
    monkeypatch.setattr(backend, "_environment_error", [])
    monkeypatch.setattr(backend, "_state", dict(backend._state, name="numpy", xp=np))
    monkeypatch.setitem(sys.modules, "cupy", None)  # any import of CuPy from here on fails
    with backend.using_backend("numpy"):
        assert minilora.Tensor([1.0, 2.0]).numpy().tolist() == [1.0, 2.0]
    assert backend._pending_environment == ["cupy"]
    with pytest.raises(RuntimeError, match=r"MINILORA_BACKEND='cupy': the cupy backend needs CuPy"):
        minilora.get_backend()
    minilora.set_backend("numpy")  # another choice replaces the environment's
    assert minilora.get_backend() == "numpy" and backend._pending_environment == []


def test_mixing_backends_names_both():
    class FakeCupyArray:  # stands in for a cupy.ndarray: the check reads only the type's module
        __module__ = "cupy._core.core"
        shape = (3,)

    with pytest.raises(TypeError, match=r"numpy array of shape \(3,\), cupy array of shape \(3,\)"):
        backend.check_same_backend("add", [np.ones(3), FakeCupyArray()])


def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros(4)
    backend.scatter_add(target, np.array([1, 1, 3, 1]), np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(target, [0.0, 7.0, 0.0, 3.0])


def test_same_seed_same_numbers():
    a = backend.randn((3, 2), backend.default_rng(7))
    b = backend.randn((3, 2), backend.default_rng(7))
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    assert a.dtype == np.float32


def test_to_numpy_returns_host_arrays():
    assert isinstance(minilora.to_numpy(minilora.Tensor([1.0, 2.0]).data), np.ndarray)


def test_scopes_restore_the_previous_setting_even_after_an_error():
    outer = minilora.get_backend()  # numpy, or cupy when the suite runs with MINILORA_BACKEND=cupy
    with pytest.raises(RuntimeError, match="inside"):
        with backend.using_default_dtype("float64"):
            assert minilora.Tensor([1.0]).dtype == np.float64
            raise RuntimeError("inside")
    assert minilora.get_default_dtype() == np.float32
    with backend.using_backend("numpy"):
        assert minilora.get_backend() == "numpy"
    with pytest.raises(ValueError, match="unknown backend"):
        with backend.using_backend("jax"):
            pass
    assert minilora.get_backend() == outer


def test_peak_bytes_allocated_sees_a_temporary_array():
    peak = backend.peak_bytes_allocated(lambda: backend.xp().ones(1_000_000, dtype=np.float32).sum())
    assert 4_000_000 <= peak < 5_000_000


def test_retain_host_memory_takes_effect_exactly_where_glibc_runs():
    import platform

    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert backend.retain_host_memory() is on_glibc
    assert backend.retain_host_memory() is on_glibc  # calling it again changes nothing


def test_gemm_operands_keep_views_cublas_can_read_and_copy_the_rest():
    """backend.matmul's layout rules (what cuBLAS is told about each operand), checked on NumPy arrays."""
    from minilora.backend import _gemm_operand

    k = np.zeros((2, 3, 5, 4))  # (B, H, S, D), contiguous
    op, ld, stride, array = _gemm_operand(k, (2, 3))
    assert (op, ld, stride) == (0, 4, 20) and array.base is not None  # row-major: op N, a view of k
    op, ld, stride, array = _gemm_operand(k.swapaxes(-1, -2), (2, 3))  # k^T as attention takes it
    assert (op, ld, stride) == (1, 4, 20) and np.shares_memory(array, k)  # column-major: op T, still no copy
    op, ld, stride, array = _gemm_operand(np.zeros((5, 4)), (2, 3))
    assert (op, ld, stride) == (0, 4, 0)  # one matrix for the whole batch: stride 0
    op, ld, stride, array = _gemm_operand(k[:, :1], (2, 3))  # broadcast along H only: the batch does not step evenly
    assert (op, ld, stride) == (0, 4, 20) and array.shape == (2, 3, 5, 4) and array.flags.c_contiguous
    strided = np.zeros((2, 3, 5, 8))[..., ::2]  # neither rows nor columns contiguous
    op, ld, stride, array = _gemm_operand(strided, (2, 3))
    assert (op, ld, stride) == (0, 4, 20) and array.flags.c_contiguous
