"""Test helpers for minilora's own suite and for classroom graders: hypothesis strategies and assert_gradcheck.

    from hypothesis import given
    from minilora.testing import arrays, assert_gradcheck

    @given(arrays(shape=(3, 4)))
    def test_my_tanh(x):
        assert_gradcheck(my_tanh, x)

Every strategy draws float64 NumPy arrays of small shapes with bounded,
NaN-free values. ``assert_gradcheck`` wraps them into Tensors that require grad.
Importing this module needs hypothesis (the ``test`` extra).
"""
import numpy as np
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from . import backend
from .autograd import Tensor
from .gradcheck import gradcheck


def register_hypothesis_profiles():
    """Profiles "ci" (deadline off, few examples: ops are slow under central differences) and "dev"."""
    settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True, print_blob=True)
    settings.register_profile("dev", deadline=None, max_examples=50)
    settings.load_profile("ci")


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=4):
    """Small array shapes, e.g. (3,), (2, 4), (1, 3, 2)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4):
    """A tuple of ``num_shapes`` shapes that broadcast together, e.g. ((3, 1), (4,))."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda drawn: drawn.input_shapes)


def arrays(shape, low=-2.0, high=2.0, avoid=(), margin=0.05, unique=False):
    """float64 arrays of ``shape`` with values in [low, high].

    ``avoid``: kinks to stay ``margin`` away from (relu at 0, abs at 0), where
    central differences straddle a corner and disagree with any one-sided
    derivative. ``unique``: all values distinct (for max, whose ties are kinks).
    """
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, width=64)
    strategy = hnp.arrays(np.float64, shape, elements=elements, unique=unique)

    def away_from_kinks(x):
        for kink in avoid:
            x = np.where(np.abs(x - kink) < margin, kink + margin * np.where(x >= kink, 1, -1) * 2, x)
        return x

    def well_separated(x):
        flat = np.sort(x.reshape(-1))
        return flat.size < 2 or np.min(np.diff(flat)) > 1e-3

    strategy = strategy.map(away_from_kinks)
    return strategy.filter(well_separated) if unique else strategy


def positive_arrays(shape, low=0.2, high=3.0):
    """Values away from 0, for log, sqrt and division."""
    return arrays(shape, low=low, high=high)


@st.composite
def non_contiguous(draw, strategy):
    """The same values as ``strategy`` draws, as a strided view (every other element of a bigger array)."""
    x = draw(strategy)
    if x.ndim == 0:
        return x
    big = np.zeros(tuple(2 * n for n in x.shape[:-1]) + (2 * x.shape[-1],), dtype=x.dtype)
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view[...] = x
    assume(not view.flags.c_contiguous or view.size <= 1)
    return view


def maybe_non_contiguous(strategy):
    """Either the array as drawn or a strided view of it."""
    return st.one_of(strategy, non_contiguous(strategy))


def as_tensor(array, requires_grad=True):
    """A float64 Tensor on the current backend, keeping a view's strides where the backend allows."""
    return Tensor._wrap(backend.xp().asarray(array)).requires_grad_(requires_grad)


def assert_gradcheck(fn, *arrays_or_tensors, eps=1e-6, atol=1e-5, rtol=1e-3):
    """Gradient-check ``fn`` at the given inputs: float arrays become Tensors that require grad."""
    inputs = [
        as_tensor(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
        for x in arrays_or_tensors
    ]
    return gradcheck(fn, *inputs, eps=eps, atol=atol, rtol=rtol)
