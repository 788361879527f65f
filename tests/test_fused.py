"""The fused CuPy kernels (minilora.fused) against their references in minilora.functional, on the GPU.

Each fused Function must give its reference's output and gradients: in
float64 to 1e-10 on drawn inputs (rows longer and shorter than a warp's 32
lanes, strided views, every mask and reduction), in float32 at model sizes,
and it must pass a float64 gradient check of its own. The catalogue's PyTorch
comparisons also reach the fused kernels when the suite runs with
MINILORA_BACKEND=cupy, since the functional ops dispatch to them there.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora.functional as F
from minilora import Tensor, backend, reference_ops
from minilora.functional.attention import ScaledDotProductAttention
from minilora.functional.elementwise import GeluTanh
from minilora.functional.linalg import Linear, MatMul
from minilora.functional.norm import LayerNorm
from minilora.functional.softmax import CrossEntropy, Softmax
from minilora.testing import arrays, assert_gradcheck, maybe_non_contiguous, shapes

pytestmark = pytest.mark.gpu


def fused_version(reference):
    from minilora.fused import FUSED
    return FUSED[reference]


# Each case: a strategy drawing (float64 input arrays, constants), and how to call a Function class on Tensors.
@st.composite
def rows_inputs(draw, low=-4.0, high=4.0):
    lead = draw(shapes(min_dims=0, max_dims=2))
    cols = draw(st.sampled_from([1, 5, 32, 33, 70]))  # shorter than, equal to and longer than a warp
    return [draw(maybe_non_contiguous(arrays(lead + (cols,), low, high)))], {}


@st.composite
def softmax_inputs(draw):
    (x,), _ = draw(rows_inputs())
    return [x], {"axis": draw(st.sampled_from([-1, x.ndim - 1, 0]))}  # axis 0 of a 2-D x takes the reference path


@st.composite
def layer_norm_inputs(draw):
    (x,), _ = draw(rows_inputs(-2.0, 2.0))
    cols = x.shape[-1]
    return [x, draw(arrays((cols,), 0.5, 1.5)), draw(arrays((cols,)))], {}


@st.composite
def cross_entropy_inputs(draw):
    rows, classes = draw(st.integers(1, 6)), draw(st.sampled_from([2, 7, 40]))
    targets = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows)))
    targets[0] = draw(st.sampled_from([targets[0], -100]))  # sometimes an ignored position
    lead = draw(st.sampled_from([(rows,), (1, rows)]))
    return [draw(arrays(lead + (classes,), -4, 4))], {"targets": targets.reshape(lead),
                                                       "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


@st.composite
def attention_inputs(draw):
    b, h, t, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    s = draw(st.sampled_from([t, t + 3, t + 35]))  # S > T: queries after cached keys, rows longer than a warp
    q, k, v = draw(arrays((b, h, t, d))), draw(arrays((b, h, s, d))), draw(arrays((b, h, s, d)))
    return [q, k, v], {"causal": draw(st.booleans())}


@st.composite
def linear_inputs(draw):
    (x,), _ = draw(rows_inputs(-2.0, 2.0))
    n_out = draw(st.integers(1, 5))
    return [x, draw(arrays((n_out, x.shape[-1]))), draw(arrays((n_out,)))], {}


@st.composite
def matmul_inputs(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    lead_a, lead_b = draw(st.sampled_from([((), (2,)), ((2, 3), (3,)), ((2, 1), (1, 2)), ((2,), ())]))
    transpose_b = draw(st.booleans())  # b as the swapaxes view of a (..., m, k) array, as k^T in attention
    a = draw(maybe_non_contiguous(arrays(lead_a + (n, k))))
    b = draw(arrays(lead_b + ((m, k) if transpose_b else (k, m))))
    return [a, b], {"transpose_b": transpose_b}


CASES = {
    "softmax": (Softmax, softmax_inputs(), lambda fn, x, axis: fn.apply(x, axis=axis)),
    "layer_norm": (LayerNorm, layer_norm_inputs(), lambda fn, x, w, b: fn.apply(x, w, b, eps=1e-5)),
    "gelu_tanh": (GeluTanh, rows_inputs(), lambda fn, x: fn.apply(x)),
    "cross_entropy": (CrossEntropy, cross_entropy_inputs(), lambda fn, logits, targets, reduction: fn.apply(
        logits, backend.asarray(targets, like=logits.data), reduction=reduction)),
    "linear": (Linear, linear_inputs(), lambda fn, x, w, b: fn.apply(x, w, b)),
    "matmul": (MatMul, matmul_inputs(), lambda fn, a, b, transpose_b: fn.apply(a, b.transpose(-2, -1) if transpose_b else b)),
    "attention": (ScaledDotProductAttention, attention_inputs(), lambda fn, q, k, v, causal: fn.apply(
        q, k, v, None, 1 / np.sqrt(q.shape[-1]), causal=causal)),
}


def output_and_grads(call, function, arrays, consts, dtype=np.float64, cotangent_dtype=None):
    """Run ``function`` (a Function class) on GPU copies of ``arrays`` and back-propagate a fixed cotangent.

    The cotangent is drawn in float64 and rounded to ``cotangent_dtype`` (default: the output's dtype).
    """
    import cupy

    tensors = [Tensor._wrap(cupy.asarray(np.asarray(a).astype(dtype))).requires_grad_(True) for a in arrays]
    with reference_ops():  # Reference.apply would run the registered fast variant; under the switch each class runs itself
        out = call(function, *tensors, **consts)
    cotangent = np.random.default_rng(0).standard_normal(out.shape).astype(cotangent_dtype or out.dtype)
    out.backward(cupy.asarray(cotangent.astype(out.dtype)))
    return backend.to_numpy(out.data), [backend.to_numpy(t.grad) for t in tensors]


def assert_same(fused, reference, rtol, atol):
    (out_f, grads_f), (out_r, grads_r) = fused, reference
    np.testing.assert_allclose(out_f, out_r, rtol=rtol, atol=atol, err_msg="outputs differ")
    for i, (g_f, g_r) in enumerate(zip(grads_f, grads_r)):
        np.testing.assert_allclose(g_f, g_r, rtol=rtol, atol=atol, err_msg=f"gradients of input {i} differ")


@pytest.mark.parametrize("name", CASES)
def test_fused_equals_reference_in_float64(name):
    reference, strategy, call = CASES[name]

    @given(strategy)
    def check(drawn):
        arrays_, consts = drawn
        with backend.using_backend("cupy"):
            assert_same(output_and_grads(call, fused_version(reference), arrays_, consts),
                        output_and_grads(call, reference, arrays_, consts), rtol=1e-10, atol=1e-12)
    check()


@pytest.mark.parametrize("name", CASES)
def test_fused_passes_gradcheck(name):
    reference, strategy, call = CASES[name]

    @given(strategy)
    def check(drawn):
        arrays_, consts = drawn
        with backend.using_backend("cupy"):
            assert_gradcheck(lambda *tensors: call(fused_version(reference), *tensors, **consts), *arrays_)
    check()


MODEL_SIZES = {  # float32 at the sizes of a GPT-2 small step (fewer rows, to stay quick)
    "softmax": ([np.random.default_rng(1).standard_normal((64, 1000)) * 3], {"axis": -1}),
    "layer_norm": ([np.random.default_rng(2).standard_normal((2, 64, 768)), np.ones(768) * 1.1, np.zeros(768) + 0.1], {}),
    "gelu_tanh": ([np.random.default_rng(3).standard_normal((4, 64, 3072)) * 2], {}),
    "cross_entropy": ([np.random.default_rng(4).standard_normal((2, 16, 50257))],
                      {"targets": np.random.default_rng(5).integers(0, 50257, (2, 16)), "reduction": "mean"}),
    "linear": ([np.random.default_rng(7).standard_normal((512, 768)), np.random.default_rng(8).standard_normal((768, 768)),
                np.random.default_rng(9).standard_normal(768)], {}),
    "attention": ([np.random.default_rng(6).standard_normal((2, 12, 128, 64)) for _ in range(3)], {"causal": True}),
    "matmul": ([np.random.default_rng(10).standard_normal((2, 12, 128, 64)),
                np.random.default_rng(11).standard_normal((12, 128, 64))], {"transpose_b": True}),
}


@pytest.mark.parametrize("name", CASES)
def test_fused_equals_reference_in_float32_at_model_sizes(name):
    reference, _, call = CASES[name]
    arrays_, consts = MODEL_SIZES[name]
    with backend.using_backend("cupy"):
        fused = output_and_grads(call, fused_version(reference), arrays_, consts, dtype=np.float32)
        ref = output_and_grads(call, reference, arrays_, consts, dtype=np.float32)
    assert fused[0].dtype == np.float32
    assert_same(fused, ref, rtol=2e-4, atol=1e-5)  # float32 rounding; the float64 test above is the tight one


def half_dtypes():
    import ml_dtypes
    # a unit in the last place at 1: bf16 keeps 8 bits of mantissa, fp16 11
    return [(np.dtype(ml_dtypes.bfloat16), 2.0 ** -7), (np.dtype(np.float16), 2.0 ** -10)]


@pytest.mark.parametrize("half", [0, 1], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", CASES)
def test_fused_kernels_take_16_bit_floats_and_compute_in_float32(name, half):
    """Each kernel on bf16/fp16 inputs against the reference in float64 on the same rounded inputs.

    The kernels read the 16-bit values, compute in float32 and round once when
    they write; so each output and gradient is within a few units in the last
    place of the largest value (tolerance: 8 ulps of the 16-bit dtype, relative
    to the largest magnitude; a sum computed in the 16-bit type itself would
    miss it by far more at these sizes).
    """
    dtype, ulp = half_dtypes()[half]
    reference, _, call = CASES[name]
    arrays_, consts = MODEL_SIZES[name]
    rounded = [np.asarray(a).astype(dtype).astype(np.float64) for a in arrays_]
    with backend.using_backend("cupy"):
        fused = output_and_grads(call, fused_version(reference), rounded, consts, dtype=dtype)
        exact = output_and_grads(call, reference, rounded, consts, dtype=np.float64, cotangent_dtype=dtype)
    # the loss is a float32 sum whatever the logits' dtype (autocast's rule); everything else keeps the inputs' dtype
    assert fused[0].dtype == (np.float32 if name == "cross_entropy" else dtype)
    assert all(g.dtype == dtype for g in fused[1])
    for got, expected, what in [(fused[0], exact[0], "output")] + [
            (g, e, f"gradient {i}") for i, (g, e) in enumerate(zip(fused[1], exact[1]))]:
        error = np.abs(got.astype(np.float64) - expected).max()
        assert error <= 8 * ulp * np.abs(expected).max(), (name, what, error, np.abs(expected).max())


@pytest.mark.parametrize("half", [0, 1], ids=["bfloat16", "float16"])
def test_attention_in_16_bits_materialises_the_scores_where_flash_cannot_go(half):
    """Head dimension 48 is not one of the flash kernels': the row kernels run on the 16-bit scores instead."""
    from minilora.fused import FusedScaledDotProductAttention

    dtype, ulp = half_dtypes()[half]
    rng = np.random.default_rng(12)
    rounded = [rng.standard_normal((2, 3, 40, 48)).astype(dtype).astype(np.float64) for _ in range(3)]
    call = CASES["attention"][2]
    with backend.using_backend("cupy"):
        import cupy
        q = cupy.asarray(rounded[0].astype(dtype))
        assert not FusedScaledDotProductAttention.runs_flash(q, q, q, causal=True)
        fused = output_and_grads(call, FusedScaledDotProductAttention, rounded, {"causal": True}, dtype=dtype)
        exact = output_and_grads(call, ScaledDotProductAttention, rounded, {"causal": True}, cotangent_dtype=dtype)
    for got, expected in zip([fused[0]] + fused[1], [exact[0]] + exact[1]):
        assert got.dtype == dtype
        assert np.abs(got.astype(np.float64) - expected).max() <= 8 * ulp * np.abs(expected).max()


def test_the_functional_ops_pick_each_backends_variants_and_the_references_under_reference_ops():
    from minilora.fused import FusedCrossEntropy, FusedGeluTanh, FusedLayerNorm, FusedScaledDotProductAttention

    x = np.random.default_rng(0).standard_normal((2, 4, 8))
    from minilora.fused import InPlaceGeluTanh, InPlaceScaledDotProductAttention

    references = (LayerNorm, GeluTanh, CrossEntropy, ScaledDotProductAttention)
    for name, switch, expected in [
            ("numpy", False, (LayerNorm, InPlaceGeluTanh, CrossEntropy, InPlaceScaledDotProductAttention)),
            ("numpy", True, references), ("cupy", True, references),
            ("cupy", False, (FusedLayerNorm, FusedGeluTanh, FusedCrossEntropy, FusedScaledDotProductAttention))]:
        with backend.using_backend(name), reference_ops(switch):
            t = Tensor(x, requires_grad=True)
            q = t.reshape(2, 1, 4, 8)
            made = [F.layer_norm(t), F.gelu(t, approximate="tanh"), F.cross_entropy(t, np.zeros((2, 4), dtype=np.int64)),
                    F.scaled_dot_product_attention(q, q, q, is_causal=True)]
            assert tuple(out._fn for out in made) == expected, (name, switch)


def test_a_user_mask_takes_the_reference_attention_on_the_gpu():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 3, 4)) for _ in range(3))
    mask = np.arange(3)[None, None, None, :] < np.array([2, 3])[:, None, None, None]  # (B, 1, 1, S) padding
    results = {}
    for name in ("numpy", "cupy"):
        with backend.using_backend(name):
            out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=mask, is_causal=True)
            results[name] = out.numpy()
    np.testing.assert_allclose(results["cupy"], results["numpy"], rtol=1e-12)


def test_fused_cross_entropy_keeps_no_copy_of_the_logits():
    """The reference keeps log-softmax (N, V) for the backward; the fused one only (N,) log-sum-exps."""
    logits = np.random.default_rng(0).standard_normal((256, 4000)).astype(np.float32)
    targets = np.zeros(256, dtype=np.int64)
    kept = {}
    with backend.using_backend("cupy"):
        x = Tensor(logits, requires_grad=True)
        for function in (CrossEntropy, fused_version(CrossEntropy)):
            losses = []
            with reference_ops():
                kept[function] = backend.peak_bytes_allocated(
                    lambda: losses.append(function.apply(x, backend.asarray(targets, like=x.data))))
    assert kept[fused_version(CrossEntropy)] < 0.1 * logits.nbytes <= kept[CrossEntropy]


@given(st.integers(1, 50), st.integers(1, 9), st.integers(1, 70), st.integers(0, 99))
def test_scatter_add_rows_sums_repeats_like_numpy_add_at(picks, rows, width, seed):
    scatter_add_rows = backend.scatter_add_rows
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, rows, picks)  # repeats are likely
    values, target = rng.standard_normal((picks, width)), rng.standard_normal((rows, width))
    expected = target.copy()
    np.add.at(expected, indices, values)
    with backend.using_backend("cupy"):
        import cupy
        got = scatter_add_rows(cupy.asarray(target), cupy.asarray(indices), cupy.asarray(values))
    np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-12, atol=1e-12)


def test_scatter_add_rows_gives_the_same_bits_every_time():
    scatter_add_rows = backend.scatter_add_rows
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 10, 4096)  # about 400 repeats of each row
    values = rng.standard_normal((4096, 96)).astype(np.float32)
    with backend.using_backend("cupy"):
        import cupy
        runs = [backend.to_numpy(scatter_add_rows(cupy.zeros((10, 96), np.float32), cupy.asarray(indices), cupy.asarray(values)))
                for _ in range(3)]
    assert all(np.array_equal(runs[0], run) for run in runs[1:])


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_fused_adamw_update_equals_the_reference(dtype, rtol):
    from minilora.fused import fused_adamw_update
    from minilora.optim import adamw_update

    rng = np.random.default_rng(0)
    start = [rng.standard_normal((40, 33)).astype(dtype), rng.standard_normal((40, 33)).astype(dtype),
             np.abs(rng.standard_normal((40, 33))).astype(dtype)]  # p, m, v
    grads = [rng.standard_normal((40, 33)).astype(dtype) for _ in range(3)]
    results = []
    with backend.using_backend("cupy"):
        import cupy
        for update in (adamw_update, fused_adamw_update):
            p, m, v = (cupy.asarray(a) for a in start)
            for t, g in enumerate(grads, start=1):
                update(p, cupy.asarray(g), m, v, t, 1e-3, 0.9, 0.999, 1e-8, 0.01)
            results.append([backend.to_numpy(a) for a in (p, m, v)])
    for ours, reference in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol)
