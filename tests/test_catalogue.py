"""Every differentiable op: a property-based gradient check and a comparison with PyTorch autograd.

Both tests run over the same catalogue (tests/op_catalogue.py), and
test_every_op_is_catalogued fails when a public op is missing from it, so
coverage cannot silently lag behind the code.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora.functional as F
from minilora import Tensor, backend
from minilora.testing import as_tensor, assert_gradcheck

from conftest import require_oracle
from op_catalogue import CATALOGUE

NOT_OPS = {"erf"}  # a plain array function used inside gelu, not a differentiable op


def test_every_op_is_catalogued():
    public_ops = set(F.__all__) - NOT_OPS
    catalogued = {case.op for case in CATALOGUE}
    assert public_ops - catalogued == set(), f"ops without gradient check and PyTorch comparison: {public_ops - catalogued}"
    assert catalogued - public_ops == set(), f"catalogue names unknown ops: {catalogued - public_ops}"
    labels = [case.label for case in CATALOGUE]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.label)
@given(data=st.data())
def test_gradcheck(case, data):
    arrays, const = data.draw(case.inputs)
    assert_gradcheck(lambda *tensors: case.minilora(*tensors, **const), *arrays, **case.gradcheck)


@pytest.mark.oracle
@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.label)
@given(data=st.data())
def test_matches_pytorch(case, data):
    torch = require_oracle("torch")
    arrays, const = data.draw(case.inputs)
    ours = [as_tensor(a) for a in arrays]
    theirs = [torch.from_numpy(np.array(a)).requires_grad_(True) for a in arrays]

    out = case.minilora(*ours, **const)
    expected = case.torch(torch, *theirs, **const)
    assert out.shape == tuple(expected.shape), f"{case.label}: shape {out.shape} vs PyTorch {tuple(expected.shape)}"
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-9, atol=case.atol)

    cotangent = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(backend.asarray(cotangent, dtype=np.float64))
    expected.backward(torch.from_numpy(cotangent))
    for i, (mine, reference) in enumerate(zip(ours, theirs)):
        mine_grad = np.zeros(mine.shape) if mine.grad is None else backend.to_numpy(mine.grad)
        their_grad = np.zeros(mine.shape) if reference.grad is None else reference.grad.numpy()
        np.testing.assert_allclose(mine_grad, their_grad, rtol=1e-9, atol=case.atol, err_msg=f"{case.label}: gradient of input {i}")


@pytest.mark.oracle
def test_erf_matches_pytorch_to_float64_precision():
    torch = require_oracle("torch")
    x = np.concatenate([
        np.linspace(-7, 7, 20001),  # every branch of the approximation and the joins between them (0.46875, 4)
        [0.0, -0.0, 1e-300, 1e-20, 1e-8, 0.46875, np.nextafter(0.46875, 1), 4.0, np.nextafter(4.0, 5), 6.0, 27.0, 1e300],
        -np.logspace(-10, 1.5, 500), np.logspace(-10, 1.5, 500),
    ])
    expected = torch.special.erf(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.to_numpy(F.erf(backend.asarray(x))), expected, rtol=1e-14, atol=1e-16)
    # gelu(approximate="none") is built on erf: its values and its (exact) derivative agree to rounding
    # (1 + erf(x / sqrt 2) cancels for x < 0, in torch's formula too, so the tolerance there is absolute).
    ours, theirs = Tensor(backend.asarray(x[:20001]), requires_grad=True), torch.from_numpy(x[:20001]).requires_grad_(True)
    F.gelu(ours).sum().backward()
    torch.nn.functional.gelu(theirs).sum().backward()
    np.testing.assert_allclose(F.gelu(ours).numpy(), torch.nn.functional.gelu(theirs).detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(ours.grad), theirs.grad.numpy(), rtol=1e-13, atol=1e-15)
    special = F.erf(backend.asarray(np.array([np.inf, -np.inf, np.nan])))
    np.testing.assert_array_equal(backend.to_numpy(special), [1.0, -1.0, np.nan])


def test_erf_keeps_float32_float32():
    x = backend.asarray(np.linspace(-5, 5, 101, dtype=np.float32))
    assert F.erf(x).dtype == np.float32
    assert F.gelu(Tensor(x)).dtype == np.float32
