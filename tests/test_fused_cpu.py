"""The NumPy variants (minilora/fused/cpu.py) against their references: equal in float64, and gradient-checked."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minilora import Tensor, backend, reference_ops
from minilora.functional.attention import ScaledDotProductAttention
from minilora.functional.elementwise import GeluTanh
from minilora.fused import CPU
from minilora.testing import arrays, assert_gradcheck, maybe_non_contiguous, shapes


@st.composite
def gelu_inputs(draw):
    return [draw(maybe_non_contiguous(arrays(draw(shapes()), -4.0, 4.0)))], {}


@st.composite
def attention_inputs(draw):
    b, h, t, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = draw(st.integers(t, t + 2))
    q, k, v = draw(arrays((b, h, t, d))), draw(arrays((b, h, s, d))), draw(arrays((b, h, s, d)))
    allowed = None
    if draw(st.booleans()):  # a padding mask that leaves every query a key
        lengths = [draw(st.integers(s - t + 1, s)) for _ in range(b)]
        allowed = np.arange(s)[None, None, None, :] < np.array(lengths)[:, None, None, None]  # (B, 1, 1, S)
    return [q, k, v], {"allowed": allowed, "causal": draw(st.booleans())}


CASES = {
    "gelu_tanh": (GeluTanh, gelu_inputs(), lambda fn, x: fn.apply(x)),
    "attention": (ScaledDotProductAttention, attention_inputs(), lambda fn, q, k, v, allowed, causal: fn.apply(
        q, k, v, allowed, 1 / np.sqrt(q.shape[-1]), causal=causal)),
}


def test_every_numpy_variant_has_a_case():
    assert set(CPU) == {reference for reference, _, _ in CASES.values()}


def output_and_grads(call, function, arrays, consts):
    with backend.using_backend("numpy"), reference_ops():  # under the switch each class runs itself, the reference too
        tensors = [Tensor(a, requires_grad=True) for a in arrays]
        out = call(function, *tensors, **consts)
        out.backward(np.random.default_rng(0).standard_normal(out.shape))
    return out.numpy(), [t.numpy() if t.grad is None else backend.to_numpy(t.grad) for t in tensors]


@pytest.mark.parametrize("name", CASES)
def test_numpy_variant_equals_reference_in_float64(name):
    reference, strategy, call = CASES[name]

    @given(strategy)
    def check(drawn):
        arrays_, consts = drawn
        (out_f, grads_f), (out_r, grads_r) = (output_and_grads(call, fn, arrays_, consts) for fn in (CPU[reference], reference))
        np.testing.assert_allclose(out_f, out_r, rtol=1e-10, atol=1e-12)
        for g_f, g_r in zip(grads_f, grads_r):
            np.testing.assert_allclose(g_f, g_r, rtol=1e-10, atol=1e-12)
    check()


@pytest.mark.parametrize("name", CASES)
def test_numpy_variant_passes_gradcheck(name):
    reference, strategy, call = CASES[name]

    @given(strategy)
    def check(drawn):
        arrays_, consts = drawn
        with backend.using_backend("numpy"):
            assert_gradcheck(lambda *tensors: call(CPU[reference], *tensors, **consts), *arrays_)
    check()


def test_numpy_runs_the_variant_and_reference_ops_the_reference():
    import minilora.functional as F

    with backend.using_backend("numpy"):
        x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 3, 4)), requires_grad=True)
    with reference_ops(False):  # as without MINILORA_REFERENCE_OPS=1
        assert F.gelu(x, approximate="tanh")._fn is CPU[GeluTanh]
        assert F.scaled_dot_product_attention(x, x, x)._fn is CPU[ScaledDotProductAttention]
    with reference_ops():
        assert F.gelu(x, approximate="tanh")._fn is GeluTanh
        assert F.scaled_dot_product_attention(x, x, x)._fn is ScaledDotProductAttention
