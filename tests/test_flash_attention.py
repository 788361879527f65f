"""The flash attention kernels (minilora.fused.flash_attention) against the reference attention, on the GPU.

The reference is functional/attention.py's ScaledDotProductAttention run in
float64 on the same half-precision inputs (rounded once, then widened), so the
only differences are the kernels' own roundings. Tolerances, with u the unit
roundoff of the dtype (bf16 keeps 8 significant bits: u = 2^-8; fp16 11: u = 2^-11):

- out: P is rounded to the input dtype before P v (each weight off by at most
  u of itself, so the sum by at most u max|v|), and out is rounded once more:
  |out - ref| <= 2 u max|v|.
- dq, dk, dv: each is a sum of products one factor of which (P or dS) was
  rounded (u), then the sum is rounded (u), and D = rowsum(dout * out) uses the
  rounded out. A NumPy emulation of exactly these roundings on these shapes
  stays below 1.4 u max|ref|; the bound 3 u max|ref| leaves room for float32
  sums taken in another order. The 1e-4 floor is for gradients that are 0 in
  exact arithmetic (one visible key: softmax's gradient vanishes), where
  float32 leaves dP - D at about 1e-6.
- lse: float32 sums over at most 513 keys and __expf (2 ulp): 1e-4.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import backend
from minilora.autograd import Context
from minilora.functional.attention import ScaledDotProductAttention, causal_mask

pytestmark = pytest.mark.gpu
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def half_dtype(name):
    if name == "float16":
        return np.dtype(np.float16)
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def random_inputs(shape_q, shape_kv, dtype_name, seed):
    """q, k, v, dout as host arrays rounded to the dtype, and as CuPy arrays of that dtype."""
    import cupy
    rng = np.random.default_rng(seed)
    dtype = half_dtype(dtype_name)
    host = [rng.standard_normal(shape).astype(dtype) for shape in (shape_q, shape_kv, shape_kv, shape_q)]
    return host, [cupy.asarray(a) for a in host]


def reference(q, k, v, dout, scale, causal):
    """out, lse, dq, dk, dv in float64: the reference Function, and log-sum-exp of the masked scores."""
    q, k, v, dout = (a.astype(np.float64) for a in (q, k, v, dout))
    ctx = Context((True, True, True, False, False, False))
    out = ScaledDotProductAttention.forward(ctx, q, k, v, None, scale, causal)
    dq, dk, dv = ScaledDotProductAttention.backward(ctx, dout)[:3]
    scores = scale * (q @ k.swapaxes(-1, -2))  # (B, H, T, S)
    if causal:
        scores = np.where(causal_mask(np, q.shape[-2], k.shape[-2]), scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(scores - m).sum(axis=-1, keepdims=True)))[..., 0]  # (B, H, T)
    return out, lse, dq, dk, dv


def as_float64(array):
    import cupy
    return cupy.asnumpy(array).astype(np.float64)


def check_against_reference(B, H, T, S, D, dtype_name, causal, seed=0):
    from minilora.fused.flash_attention import flash_attention_backward, flash_attention_forward
    (q, k, v, dout), (q_gpu, k_gpu, v_gpu, dout_gpu) = random_inputs((B, H, T, D), (B, H, S, D), dtype_name, seed)
    scale = D**-0.5
    out, lse = flash_attention_forward(q_gpu, k_gpu, v_gpu, scale, causal)
    dq, dk, dv = flash_attention_backward(q_gpu, k_gpu, v_gpu, out, lse, dout_gpu, scale, causal)
    assert out.dtype == q.dtype and out.shape == (B, H, T, D) and lse.dtype == np.float32 and lse.shape == (B, H, T)
    assert (dq.shape, dk.shape, dv.shape) == ((B, H, T, D), (B, H, S, D), (B, H, S, D))
    assert dq.dtype == dk.dtype == dv.dtype == q.dtype
    expected = reference(q, k, v, dout, scale, causal)
    u = UNIT_ROUNDOFF[dtype_name]
    np.testing.assert_allclose(as_float64(out), expected[0], rtol=0, atol=2 * u * np.abs(v.astype(np.float64)).max())
    np.testing.assert_allclose(as_float64(lse), expected[1], rtol=0, atol=1e-4)
    for name, got, want in zip(["dq", "dk", "dv"], (dq, dk, dv), expected[2:]):
        np.testing.assert_allclose(as_float64(got), want, rtol=0, atol=3 * u * np.abs(want).max() + 1e-4, err_msg=name)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T, S", [(1, 1), (17, 17), (100, 100), (513, 513), (17, 100), (100, 513)])
def test_forward_and_backward_match_the_reference(T, S, causal, dtype_name):
    # T < S is a KV cache's shape (the queries are the last T positions); 1, 17, 100, 513 leave ragged tiles of 64.
    check_against_reference(2, 3, T, S, 64, dtype_name, causal)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("D", [32, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_other_head_dimensions(D, causal, dtype_name):
    check_against_reference(1, 2, 100, 130, D, dtype_name, causal)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_fewer_keys_than_queries_without_the_mask(dtype_name):
    check_against_reference(1, 2, 100, 17, 64, dtype_name, causal=False)


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 150), extra_keys=st.integers(0, 100),
       D=st.sampled_from([32, 64, 128]), dtype_name=st.sampled_from(["bfloat16", "float16"]), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_shapes_match_the_reference(B, H, T, extra_keys, D, dtype_name, causal, seed):
    # Shapes are drawn here and the values from a seeded generator: minilora.testing's strategies draw float64
    # arrays element by element, too slow at these sizes, and the kernels take only half precision.
    check_against_reference(B, H, T, T + extra_keys, D, dtype_name, causal, seed)


def test_non_contiguous_inputs_as_the_model_makes_them():
    import cupy
    from minilora.fused.flash_attention import flash_attention_forward
    (q, k, v, _), gpu = random_inputs((2, 70, 3, 64), (2, 70, 3, 64), "bfloat16", 1)  # (B, T, H, D) before the split
    q_gpu, k_gpu, v_gpu = (a.swapaxes(1, 2) for a in gpu[:3])  # (B, H, T, D) views
    out, _ = flash_attention_forward(q_gpu, k_gpu, v_gpu, 0.125, True)
    expected = reference(*(a.swapaxes(1, 2) for a in (q, k, v, q)), 0.125, True)[0]
    assert not q_gpu.flags.c_contiguous
    np.testing.assert_allclose(as_float64(out), expected, rtol=0, atol=2 * 2.0**-8 * np.abs(v.astype(np.float64)).max())
    assert isinstance(out, cupy.ndarray)


def test_unsupported_head_dimension_raises():
    import cupy
    from minilora.fused.flash_attention import flash_attention_backward, flash_attention_forward
    q = cupy.zeros((1, 2, 8, 80), dtype=np.float16)
    with pytest.raises(ValueError, match=r"D=80 is not supported.*\(32, 64, 128\).*materialised"):
        flash_attention_forward(q, q, q, 0.1, False)
    with pytest.raises(ValueError, match="D=80"):
        flash_attention_backward(q, q, q, q, cupy.zeros((1, 2, 8), np.float32), q, 0.1, False)


def test_bad_inputs_raise():
    import cupy
    from minilora.fused.flash_attention import flash_attention_forward
    q = cupy.zeros((1, 2, 8, 64), dtype=np.float16)
    with pytest.raises(TypeError, match="float16 or all bfloat16.*float32"):
        flash_attention_forward(q.astype(np.float32), q, q, 0.1, False)
    with pytest.raises(ValueError, match="do not fit"):
        flash_attention_forward(q, q[:, :1], q, 0.1, False)
    with pytest.raises(ValueError, match="T=8, S=4"):
        flash_attention_forward(q, q[:, :, :4], q[:, :, :4], 0.1, True)


def test_no_array_of_the_scores_size_is_allocated():
    from minilora.fused.flash_attention import flash_attention_backward, flash_attention_forward
    B, H, T, D = 1, 4, 2048, 64
    _, (q, k, v, dout) = random_inputs((B, H, T, D), (B, H, T, D), "bfloat16", 2)
    flash_attention_backward(q, k, v, *flash_attention_forward(q, k, v, 0.125, True), dout, 0.125, True)  # compile

    def forward_and_backward():
        out, lse = flash_attention_forward(q, k, v, 0.125, True)
        flash_attention_backward(q, k, v, out, lse, dout, 0.125, True)
    with backend.using_backend("cupy"):
        peak = backend.peak_bytes_allocated(forward_and_backward)
    # What may be allocated is O(T D): out, lse, D, dq, dk, dv and dq's float32 accumulator, about 6 times q.
    # One (B, H, T, S) array in bf16 would be 32 MiB here, 32 times q.
    scores_bytes = B * H * T * T * 2
    assert peak <= 8 * q.nbytes <= scores_bytes / 4, (peak, q.nbytes, scores_bytes)
