"""The fused lora_linear op: against generic autograd ops, central differences, and PyTorch."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minilora.functional as F
from minilora import Tensor, backend, to_numpy
from minilora.lora import lora_linear
from minilora.testing import as_tensor, assert_gradcheck


@st.composite
def lora_problems(draw):
    """Random x (..., k), W0 (d, k), b (d,) or None, A (r, k), B (d, r), and a scaling, float64."""
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    k, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    r = draw(st.integers(1, min(k, d)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    arrays = {
        "x": rng.standard_normal((*lead, k)), "W0": rng.standard_normal((d, k)),
        "b": rng.standard_normal(d) if draw(st.booleans()) else None,
        "A": rng.standard_normal((r, k)), "B": rng.standard_normal((d, r)),
    }
    return arrays, draw(st.floats(0.1, 4.0))


def generic(x, W0, b, A, B, s):
    """The same h, built from generic Linear and elementwise ops: the reference the fused op must equal."""
    return F.linear(x, W0, b) + F.linear(F.linear(x, A), B) * s


def tensors(arrays, frozen=()):
    return {n: None if a is None else as_tensor(a, requires_grad=n not in frozen) for n, a in arrays.items()}


@given(lora_problems())
def test_fused_equals_generic_ops(problem):
    arrays, s = problem
    outs = []
    for fn in (lora_linear, generic):
        t = tensors(arrays, frozen=("W0",))
        h = fn(t["x"], t["W0"], t["b"], t["A"], t["B"], s)
        h.backward(np.cos(np.arange(h.size)).reshape(h.shape))
        outs.append((h.numpy(), t))
    (h1, t1), (h2, t2) = outs
    np.testing.assert_allclose(h1, h2, rtol=1e-12, atol=1e-12)
    for name in ("x", "b", "A", "B"):
        if t1[name] is not None:
            np.testing.assert_allclose(to_numpy(t1[name].grad), to_numpy(t2[name].grad), rtol=1e-12, atol=1e-12, err_msg=name)
    assert t1["W0"].grad is None  # frozen: no dW0 is formed


@given(lora_problems())
def test_gradcheck(problem):
    arrays, s = problem
    inputs = [a for a in arrays.values() if a is not None]
    if arrays["b"] is None:
        assert_gradcheck(lambda x, W0, A, B: lora_linear(x, W0, None, A, B, s), *inputs)
    else:
        assert_gradcheck(lambda x, W0, b, A, B: lora_linear(x, W0, b, A, B, s), *inputs)


def test_gradcheck_with_a_fixed_dropout_mask():
    rng = np.random.default_rng(0)
    x, W0, A, B = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((2, 4)), rng.standard_normal((5, 2))
    mask = backend.asarray((rng.random((3, 4)) > 0.3) / 0.7)  # a raw array handed to the op: put it on the backend
    assert_gradcheck(lambda x, A, B: lora_linear(x, Tensor(W0), None, A, B, 1.5, dropout_mask=mask), x, A, B)

    # The mask acts on the low-rank path only: with B = 0 the output ignores it.
    h = lora_linear(Tensor(x), Tensor(W0), None, Tensor(A), Tensor(np.zeros((5, 2))), 1.5, dropout_mask=mask)
    np.testing.assert_allclose(h.numpy(), x @ W0.T)


@pytest.mark.oracle
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only sets float64
@given(lora_problems())
def test_matches_pytorch(torch, problem):
    arrays, s = problem
    t = tensors(arrays, frozen=("W0",))
    h = lora_linear(t["x"], t["W0"], t["b"], t["A"], t["B"], s)
    g = np.sin(np.arange(h.size)).reshape(h.shape)
    h.backward(g)

    tt = {n: None if a is None else torch.tensor(a, requires_grad=n != "W0") for n, a in arrays.items()}
    ht = tt["x"] @ tt["W0"].T + s * (tt["x"] @ tt["A"].T) @ tt["B"].T
    if tt["b"] is not None:
        ht = ht + tt["b"]
    ht.backward(torch.tensor(g))
    np.testing.assert_allclose(h.numpy(), ht.detach().numpy(), rtol=1e-12, atol=1e-12)
    for name in ("x", "b", "A", "B"):
        if tt[name] is not None:
            np.testing.assert_allclose(to_numpy(t[name].grad), tt[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_misshapen_factors_are_named():
    x, W0 = Tensor(np.ones((2, 4))), Tensor(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"A \(2, 5\)"):
        lora_linear(x, W0, None, Tensor(np.ones((2, 5))), Tensor(np.ones((3, 2))), 1.0)
    with pytest.raises(ValueError, match=r"B \(3, 1\)"):
        lora_linear(x, W0, None, Tensor(np.ones((2, 4))), Tensor(np.ones((3, 1))), 1.0)
