"""Semantics of the autograd engine: accumulation, no_grad, deep graphs, shared subexpressions, freeing."""
import weakref

import numpy as np
import pytest

import minilora
import minilora.functional as F
from minilora import Function, Tensor, no_grad, to_numpy


def leaf(values):
    return Tensor(np.array(values, dtype=np.float64), requires_grad=True)


def test_gradients_accumulate_over_two_backward_calls():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    (3 * x).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), 2 * np.array([1.0, 2.0, 3.0]) + 3)


def test_zero_grad_resets():
    x = leaf([1.0, 2.0])
    (x * 2).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 5).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [5.0, 5.0])


def test_no_grad_builds_no_graph():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = (x * x).exp().sum()
    assert not y.requires_grad and y.is_leaf and y._parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert minilora.is_grad_enabled()


def test_chain_of_ten_thousand_ops_backpropagates_without_recursion():
    x = leaf([0.5])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), [1.0001 ** 10_000], rtol=1e-9)


def test_shared_subexpression_gets_the_sum_of_both_paths():
    x = leaf([2.0])
    shared = x * x  # used twice below
    (shared * 3 + shared.exp()).sum().backward()
    # d/dx (3 x^2 + e^(x^2)) = 6x + 2x e^(x^2)
    np.testing.assert_allclose(to_numpy(x.grad), [6 * 2.0 + 2 * 2.0 * np.exp(4.0)], rtol=1e-12)


def test_same_tensor_on_both_sides_of_an_op():
    x = leaf([3.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), [6.0])


def test_inputs_without_requires_grad_get_no_gradient():
    x = leaf([1.0, 2.0])
    c = Tensor(np.array([4.0, 5.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(to_numpy(x.grad), [4.0, 5.0])


def test_broadcast_gradient_is_summed_back_to_the_input_shape():
    x = leaf(np.ones((3, 1)))
    b = leaf(np.arange(4.0))
    (x + b).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), np.full((3, 1), 4.0))
    np.testing.assert_array_equal(to_numpy(b.grad), np.full(4, 3.0))


def test_non_contiguous_leaf():
    base = np.arange(12.0).reshape(3, 4)
    x = Tensor(base.T, requires_grad=True)  # a transposed, non-contiguous view
    assert not x.data.flags.c_contiguous
    (x * x).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), 2 * base.T)


def test_graph_is_freed_after_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    assert y._parents == () and y._ctx is None
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


class KeepsACopy(Function):
    """y = 2 x, keeping a copy of x as its saved activation; its backward notes which saved copies still exist."""

    @staticmethod
    def forward(ctx, x, name, notes):
        ctx.saved, ctx.name, ctx.notes = x.copy(), name, notes
        notes["saved"][name] = weakref.ref(ctx.saved)
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        ctx.notes["alive"][ctx.name] = sorted(n for n, ref in ctx.notes["saved"].items() if ref() is not None)
        return 2 * grad, None, None


@pytest.mark.parametrize("retain_graph", [False, True])
def test_activations_are_freed_as_soon_as_their_backward_has_run(retain_graph):
    notes = {"saved": {}, "alive": {}}
    with minilora.backend.using_backend("numpy"):
        h = leaf([1.0, 2.0])
        for name in ("first", "second", "third"):
            h = KeepsACopy.apply(h, name, notes)
        h.sum().backward(retain_graph=retain_graph)
    if retain_graph:
        assert notes["alive"]["first"] == ["first", "second", "third"]
    else:  # backward runs third, second, first; each one's activation is gone before the next runs
        assert notes["alive"] == {"third": ["first", "second", "third"], "second": ["first", "second"], "first": ["first"]}


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(to_numpy(x.grad), 2 * 2 * np.array([1.0, 2.0]))


def test_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    y = (x * x).detach() * x
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [1.0, 4.0])


def test_python_operators():
    a, b = leaf([[1.0, 2.0]]), leaf([[3.0], [4.0]])
    out = ((a @ b) ** 2 - (-a).sum() / 2 + 1 - a[0, 1]).sum()  # (1, 1)
    out.backward()
    # out = (a0 b0 + a1 b1)^2 + (a0 + a1)/2 + 1 - a1;  with s = a.b = 11
    np.testing.assert_allclose(out.item(), 121 + 1.5 + 1 - 2.0)
    np.testing.assert_allclose(to_numpy(a.grad), [[2 * 11 * 3 + 0.5, 2 * 11 * 4 + 0.5 - 1]])
    np.testing.assert_allclose(to_numpy(b.grad), [[2 * 11 * 1], [2 * 11 * 2]])


def test_reverse_operators_with_numbers_and_arrays():
    x = leaf([2.0])
    y = 1 - x + 3 * x + 8 / x + np.array([1.0]) * x
    y.sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), [-1 + 3 - 8 / 4 + 1])


def test_a_student_written_function():
    class Cube(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.x = x
            return x ** 3

        @staticmethod
        def backward(ctx, grad):  # y = x^3  =>  dx = 3 x^2 dy
            return 3 * ctx.x ** 2 * grad

    x = leaf([1.0, -2.0])
    assert minilora.gradcheck(Cube.apply, x)


def test_tensor_facts():
    x = Tensor([[1.0, 2.0], [3.0, 4.0]])
    assert x.shape == (2, 2) and x.ndim == 2 and x.dtype == np.float32 and len(x) == 2
    assert Tensor([1, 2]).dtype == np.int64
    assert isinstance(x.numpy(), np.ndarray)
    assert Tensor(5.0).item() == 5.0
    assert "requires_grad=True" in repr(leaf([1.0]))


def test_default_dtype_can_change():
    try:
        minilora.set_default_dtype("float64")
        assert Tensor([1.0]).dtype == np.float64
    finally:
        minilora.set_default_dtype("float32")
    with pytest.raises(TypeError, match="float"):
        minilora.set_default_dtype("int32")


def test_split_and_concatenate_round_trip():
    x = leaf(np.arange(10.0))
    pieces = F.split(x, [3, 7])
    assert [p.shape for p in pieces] == [(3,), (7,)]
    F.concatenate(pieces[::-1]).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), np.ones(10))


def test_pow_zero_has_zero_gradient_at_zero():
    x = leaf([0.0, 2.0])
    (x ** 0).sum().backward()  # x^0 = 1 everywhere, a constant, so its slope is 0 (even at x = 0, where 0 * 0^-1 is NaN)
    np.testing.assert_array_equal(to_numpy(x.grad), [0.0, 0.0])


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # 0 ** negative is inf, as in torch
@pytest.mark.parametrize("exponent", [0, 0.0, 1, 2, 3, 0.5, -1, -1.5, -2])
def test_pow_at_zero_matches_torch(torch, exponent):
    values = np.array([0.0, 0.5, 2.0])
    x = leaf(values)
    y = x ** exponent
    y.sum().backward()
    t = torch.tensor(values, requires_grad=True)
    (t ** exponent).sum().backward()
    np.testing.assert_allclose(y.numpy(), (t ** exponent).detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(to_numpy(x.grad), t.grad.numpy(), rtol=1e-15)  # inf where torch has inf


def test_tensor_of_a_tensor_unwraps_it():
    t = leaf([1.0, 2.0])
    u = Tensor(t * 3)  # a result with a graph: the new Tensor is a leaf beside it
    assert u.is_leaf and not u.requires_grad and u.dtype == np.float64
    np.testing.assert_array_equal(u.numpy(), [3.0, 6.0])
    shared = Tensor(t)
    assert shared.data is t.data and not shared.requires_grad  # the array is shared, requires_grad is the argument's
    copied = Tensor(t, dtype="float32", requires_grad=True)
    assert copied.dtype == np.float32 and copied.requires_grad and copied.data is not t.data
    (copied * copied).sum().backward()
    assert t.grad is None  # no path back to t
    with pytest.raises(TypeError, match="requires_grad needs a floating-point tensor"):
        Tensor(Tensor([1, 2]), requires_grad=True)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 3, 4), (2, 1, 3, 4)])
def test_T_reverses_every_axis_as_numpy_and_mT_swaps_the_last_two(shape):
    values = np.arange(float(np.prod(shape))).reshape(shape)
    x = leaf(values)
    np.testing.assert_array_equal(x.T.numpy(), values.T)
    if len(shape) >= 2:
        np.testing.assert_array_equal(x.mT.numpy(), np.swapaxes(values, -1, -2))
        cotangent = np.random.default_rng(0).standard_normal(values.T.shape)
        x.T.backward(cotangent)
        np.testing.assert_array_equal(to_numpy(x.grad), cotangent.T)


@pytest.mark.oracle
def test_T_and_mT_match_torch(torch):
    values = np.random.default_rng(1).standard_normal((2, 3, 4))
    x, t = leaf(values), torch.tensor(values, requires_grad=True)
    ours = (x.T * np.arange(24.0).reshape(4, 3, 2)).sum() + (x.mT ** 2).sum()
    theirs = (t.permute(2, 1, 0) * torch.arange(24.0).reshape(4, 3, 2)).sum() + (t.mT ** 2).sum()
    ours.backward()
    theirs.backward()
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), t.grad.numpy(), rtol=1e-12)
