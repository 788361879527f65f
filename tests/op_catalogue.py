"""The one catalogue of differentiable ops: it feeds both the gradient checks and the PyTorch comparisons.

Each OpCase draws its inputs with hypothesis and says how to run the op in
minilora and in PyTorch. ``arrays`` are the differentiable float64 inputs;
``const`` holds everything else (axes, indices, masks), passed to both sides.
test_catalogue.py fails if a public op in minilora.functional has no case here.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import strategies as st

import minilora.functional as F
from minilora.testing import arrays, broadcastable_shapes, maybe_non_contiguous, positive_arrays, shapes


@dataclass
class OpCase:
    op: str  # the name in minilora.functional
    label: str  # a unique test id
    inputs: st.SearchStrategy  # draws (list of float64 arrays, dict of constants)
    minilora: Callable  # (*tensors, **const) -> Tensor
    torch: Callable  # (torch, *torch_tensors, **const) -> torch.Tensor
    atol: float = 1e-10  # forward and gradient tolerance against PyTorch
    gradcheck: dict = field(default_factory=dict)  # extra gradcheck tolerances


def unary(low=-2.0, high=2.0, avoid=(), min_dims=1):
    return shapes(min_dims=min_dims).flatmap(lambda s: maybe_non_contiguous(arrays(s, low, high, avoid=avoid))).map(lambda x: ([x], {}))


def binary(low_b=-2.0, high_b=2.0, away_from_zero=False):
    @st.composite
    def draw(draw):
        shape_a, shape_b = draw(broadcastable_shapes(2))
        a = draw(maybe_non_contiguous(arrays(shape_a)))
        b = draw(maybe_non_contiguous(arrays(shape_b, low_b, high_b)))
        if away_from_zero:
            b = np.where(b >= 0, b + 0.3, b - 0.3)
        return [a, b], {}
    return draw()


@st.composite
def with_axis(draw, low=-2.0, high=2.0, unique=False, allow_none=True):
    shape = draw(shapes(max_dims=3))
    x = draw(maybe_non_contiguous(arrays(shape, low, high, unique=unique)))
    ndim = len(shape)
    axis_choices = [st.integers(-ndim, ndim - 1), st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)]
    if allow_none:
        axis_choices.append(st.none())
    axis = draw(st.one_of(*axis_choices))
    return [x], {"axis": axis, "keepdims": draw(st.booleans())}


def torch_dim(axis):
    return axis if axis is not None else None


@st.composite
def matmul_inputs(draw):
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vector_a, vector_b = draw(st.booleans()), draw(st.booleans())
    shape_a = (k,) if vector_a else batch_a + (n, k)
    shape_b = (k,) if vector_b else batch_b + (k, m)
    return [draw(maybe_non_contiguous(arrays(shape_a))), draw(maybe_non_contiguous(arrays(shape_b)))], {}


@st.composite
def linear_inputs(draw):
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(maybe_non_contiguous(arrays(lead + (n_in,))))
    return [x, draw(arrays((n_out, n_in))), draw(arrays((n_out,)))], {}


@st.composite
def softmax_inputs(draw):
    shape = draw(shapes())
    return [draw(maybe_non_contiguous(arrays(shape, -4, 4)))], {"axis": draw(st.integers(-len(shape), len(shape) - 1))}


@st.composite
def cross_entropy_inputs(draw):
    lead = draw(st.sampled_from([(3,), (2, 3), (1, 4)]))
    classes = draw(st.integers(2, 5))
    logits = draw(arrays(lead + (classes,), -4, 4))
    targets = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=int(np.prod(lead)), max_size=int(np.prod(lead)))))
    targets = targets.reshape(lead)
    targets.reshape(-1)[0] = draw(st.sampled_from([targets.reshape(-1)[0], -100]))  # sometimes ignore one position
    return [logits], {"targets": targets, "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


@st.composite
def norm_inputs(draw, with_bias=True):
    c = draw(st.integers(2, 5))
    shape = draw(shapes(min_dims=0, max_dims=2)) + (c,)
    out = [draw(maybe_non_contiguous(arrays(shape))), draw(arrays((c,), 0.5, 1.5))]
    if with_bias:
        out.append(draw(arrays((c,))))
    return out, {}


@st.composite
def reshape_inputs(draw):
    shape = draw(shapes())
    size = int(np.prod(shape))
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = draw(st.sampled_from(divisors))
    return [draw(maybe_non_contiguous(arrays(shape)))], {"shape": (first, -1)}


@st.composite
def permute_inputs(draw):
    shape = draw(shapes())
    return [draw(maybe_non_contiguous(arrays(shape)))], {"axes": tuple(draw(st.permutations(range(len(shape)))))}


@st.composite
def transpose_inputs(draw):
    shape = draw(shapes(min_dims=2))
    n = len(shape)
    return [draw(maybe_non_contiguous(arrays(shape)))], {"axis0": draw(st.integers(0, n - 1)), "axis1": draw(st.integers(-n, -1))}


@st.composite
def slice_inputs(draw):
    shape = draw(shapes(min_dims=2))
    index = tuple(
        draw(st.one_of(st.integers(0, n - 1), st.builds(slice, st.integers(0, n - 1), st.integers(1, n), st.integers(1, 2))))
        for n in shape
    )
    return [draw(maybe_non_contiguous(arrays(shape)))], {"index": index}


@st.composite
def fancy_index_inputs(draw):
    shape = draw(shapes(min_dims=1, max_dims=2))
    rows = np.array(draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=6)))  # repeats allowed
    return [draw(arrays(shape))], {"index": rows}


@st.composite
def concatenate_inputs(draw):
    shape = draw(shapes(min_dims=1))
    axis = draw(st.integers(0, len(shape) - 1))
    count = draw(st.integers(1, 3))
    xs = []
    for _ in range(count):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        xs.append(draw(maybe_non_contiguous(arrays(tuple(s)))))
    return xs, {"axis": axis}


@st.composite
def split_inputs(draw):
    shape = draw(shapes(min_dims=1))
    axis = draw(st.integers(0, len(shape) - 1))
    return [draw(maybe_non_contiguous(arrays(shape)))], {"size": draw(st.integers(1, shape[axis])), "axis": axis}


@st.composite
def where_inputs(draw):
    shape_c, shape_a, shape_b = draw(broadcastable_shapes(3))
    condition = np.array(draw(arrays(shape_c)) > 0)
    return [draw(arrays(shape_a)), draw(arrays(shape_b))], {"condition": condition}


@st.composite
def masked_fill_inputs(draw):
    shape_x, shape_mask = draw(broadcastable_shapes(2))
    x = draw(arrays(np.broadcast_shapes(shape_x, shape_mask)))
    return [x], {"mask": np.array(draw(arrays(shape_mask)) > 0), "value": draw(st.floats(-3, 3))}


@st.composite
def embedding_inputs(draw):
    vocab, dim = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    ids = np.array(draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=8)))  # repeats accumulate
    return [draw(arrays((vocab, dim)))], {"ids": ids.reshape(draw(st.sampled_from([(-1,), (1, -1)])))}


@st.composite
def dropout_inputs(draw):
    shape = draw(shapes())
    return [draw(maybe_non_contiguous(arrays(shape)))], {"p": draw(st.sampled_from([0.1, 0.5])), "seed": draw(st.integers(0, 99))}


@st.composite
def attention_inputs(draw):
    b, h, t, d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = draw(st.integers(t, t + 2))
    q = draw(arrays((b, h, t, d)))
    k, v = draw(arrays((b, h, s, d))), draw(arrays((b, h, s, d)))
    mask = None
    if draw(st.booleans()):  # a padding mask: key positions past each sequence's length are hidden
        lengths = [draw(st.integers(s - t + 1, s)) for _ in range(b)]
        mask = np.arange(s)[None, None, None, :] < np.array(lengths)[:, None, None, None]  # (B, 1, 1, S)
    return [q, k, v], {"is_causal": draw(st.booleans()), "attn_mask": mask}


@st.composite
def rope_inputs(draw):
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=2))
    T, D = draw(st.integers(1, 4)), 2 * draw(st.integers(1, 3))
    x = draw(maybe_non_contiguous(arrays(lead + (T, D))))
    return [x], {"theta": draw(st.sampled_from([10000.0, 100000.0, 3.0])), "offset": draw(st.integers(0, 50))}


@st.composite
def repeat_interleave_inputs(draw):
    shape = draw(shapes(min_dims=1))
    return [draw(maybe_non_contiguous(arrays(shape)))], {
        "repeats": draw(st.integers(1, 3)), "axis": draw(st.integers(-len(shape), len(shape) - 1)),
    }


def _torch_rope(torch, x, theta, offset):
    """transformers' Llama formula (apply_rotary_pos_emb), with the angles in float64."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)[:, None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def _dropout_mask(shape, p, seed):
    return (np.random.default_rng(seed).random(shape) >= p).astype(np.float64)


def _torch_split(torch, x, size, axis):
    return torch.cat([piece * (i + 1.0) for i, piece in enumerate(torch.split(x, size, dim=axis))], dim=axis)


def _minilora_split(x, size, axis):
    return F.concatenate([piece * (i + 1.0) for i, piece in enumerate(F.split(x, size, axis=axis))], axis=axis)


def _torch_attention(torch, q, k, v, is_causal, attn_mask):
    mask = None if attn_mask is None else torch.from_numpy(attn_mask)
    if is_causal:
        t, s = q.shape[-2], k.shape[-2]
        causal = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        mask = causal if mask is None else causal & mask
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _torch_reduce(fn):
    def run(torch, x, axis, keepdims):
        dims = tuple(range(x.ndim)) if axis is None else axis
        return fn(torch, x, dims, keepdims)
    return run


CATALOGUE = [
    OpCase("add", "add", binary(), F.add, lambda torch, a, b: a + b),
    OpCase("sub", "sub", binary(), F.sub, lambda torch, a, b: a - b),
    OpCase("mul", "mul", binary(), F.mul, lambda torch, a, b: a * b),
    OpCase("div", "div", binary(away_from_zero=True), F.div, lambda torch, a, b: a / b),
    OpCase("neg", "neg", unary(), F.neg, lambda torch, x: -x),
    OpCase(
        "pow", "pow",
        shapes().flatmap(lambda s: st.tuples(maybe_non_contiguous(positive_arrays(s)), st.sampled_from([2, 3, 0.5, -1.5]))).map(lambda d: ([d[0]], {"exponent": d[1]})),
        F.pow, lambda torch, x, exponent: x ** exponent,
    ),
    OpCase("exp", "exp", unary(), F.exp, lambda torch, x: torch.exp(x)),
    OpCase("log", "log", shapes().flatmap(lambda s: maybe_non_contiguous(positive_arrays(s))).map(lambda x: ([x], {})), F.log, lambda torch, x: torch.log(x)),
    OpCase("sqrt", "sqrt", shapes().flatmap(lambda s: maybe_non_contiguous(positive_arrays(s))).map(lambda x: ([x], {})), F.sqrt, lambda torch, x: torch.sqrt(x)),
    OpCase("tanh", "tanh", unary(), F.tanh, lambda torch, x: torch.tanh(x)),
    OpCase("sigmoid", "sigmoid", unary(-6, 6), F.sigmoid, lambda torch, x: torch.sigmoid(x)),
    OpCase("relu", "relu", unary(avoid=(0.0,)), F.relu, lambda torch, x: torch.relu(x)),
    OpCase("silu", "silu", unary(-4, 4), F.silu, lambda torch, x: torch.nn.functional.silu(x)),
    OpCase("gelu", "gelu_tanh", unary(-4, 4), lambda x: F.gelu(x, approximate="tanh"),
           lambda torch, x: torch.nn.functional.gelu(x, approximate="tanh")),
    OpCase("gelu", "gelu_erf", unary(-6, 6), F.gelu, lambda torch, x: torch.nn.functional.gelu(x), atol=1e-12),
    OpCase("matmul", "matmul", matmul_inputs(), F.matmul, lambda torch, a, b: a @ b),
    OpCase("linear", "linear", linear_inputs(), F.linear, lambda torch, x, w, b: torch.nn.functional.linear(x, w, b)),
    OpCase("sum", "sum", with_axis(), F.sum, _torch_reduce(lambda torch, x, d, k: torch.sum(x, dim=d, keepdim=k))),
    OpCase("mean", "mean", with_axis(), F.mean, _torch_reduce(lambda torch, x, d, k: torch.mean(x, dim=d, keepdim=k))),
    OpCase("max", "max", with_axis(unique=True), F.max, _torch_reduce(lambda torch, x, d, k: torch.amax(x, dim=d, keepdim=k))),
    OpCase("var", "var", with_axis(), F.var, _torch_reduce(lambda torch, x, d, k: torch.var(x, dim=d, keepdim=k, correction=0))),
    OpCase("reshape", "reshape", reshape_inputs(), lambda x, shape: F.reshape(x, shape), lambda torch, x, shape: x.reshape(shape)),
    OpCase("permute", "permute", permute_inputs(), lambda x, axes: F.permute(x, axes), lambda torch, x, axes: x.permute(axes)),
    OpCase("transpose", "transpose", transpose_inputs(), F.transpose, lambda torch, x, axis0, axis1: x.transpose(axis0, axis1)),
    # Tensor.T (every axis reversed, as NumPy) and Tensor.mT (the last two swapped) are permute and transpose.
    OpCase("permute", "tensor_T", unary(), lambda x: x.T, lambda torch, x: x.permute(*reversed(range(x.ndim)))),
    OpCase("transpose", "tensor_mT", unary(min_dims=2), lambda x: x.mT, lambda torch, x: x.mT),
    OpCase("getitem", "getitem_slices", slice_inputs(), F.getitem, lambda torch, x, index: x[index]),
    OpCase("getitem", "getitem_repeated_indices", fancy_index_inputs(), F.getitem, lambda torch, x, index: x[torch.from_numpy(index)]),
    OpCase("concatenate", "concatenate", concatenate_inputs(), lambda *xs, axis: F.concatenate(xs, axis=axis),
           lambda torch, *xs, axis: torch.cat(xs, dim=axis)),
    OpCase("split", "split", split_inputs(), _minilora_split, _torch_split),
    OpCase("where", "where", where_inputs(), lambda a, b, condition: F.where(condition, a, b),
           lambda torch, a, b, condition: torch.where(torch.from_numpy(condition), a, b)),
    OpCase("masked_fill", "masked_fill", masked_fill_inputs(), F.masked_fill,
           lambda torch, x, mask, value: x.masked_fill(torch.from_numpy(mask), value)),
    OpCase("softmax", "softmax", softmax_inputs(), F.softmax, lambda torch, x, axis: torch.softmax(x, dim=axis)),
    OpCase("log_softmax", "log_softmax", softmax_inputs(), F.log_softmax, lambda torch, x, axis: torch.log_softmax(x, dim=axis)),
    OpCase("cross_entropy", "cross_entropy", cross_entropy_inputs(), F.cross_entropy,
           lambda torch, x, targets, reduction: torch.nn.functional.cross_entropy(
               x.reshape(-1, x.shape[-1]), torch.from_numpy(targets).reshape(-1), reduction=reduction
           ).reshape(targets.shape if reduction == "none" else ())),
    OpCase("layer_norm", "layer_norm", norm_inputs(), F.layer_norm,
           lambda torch, x, w, b: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)),
    OpCase("rms_norm", "rms_norm", norm_inputs(with_bias=False), F.rms_norm,
           lambda torch, x, w: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps=1e-6)),
    OpCase("embedding", "embedding", embedding_inputs(), lambda w, ids: F.embedding(ids, w),
           lambda torch, w, ids: torch.nn.functional.embedding(torch.from_numpy(ids), w)),
    # PyTorch cannot be handed our mask, so its side applies the same host-drawn mask by hand.
    OpCase("dropout", "dropout", dropout_inputs(),
           lambda x, p, seed: F.dropout(x, p, training=True, rng=np.random.default_rng(seed)),
           lambda torch, x, p, seed: x * torch.from_numpy(_dropout_mask(tuple(x.shape), p, seed)) / (1 - p)),
    OpCase("dropout", "dropout_eval", dropout_inputs(),
           lambda x, p, seed: F.dropout(x, p, training=False) * 1.0,
           lambda torch, x, p, seed: torch.nn.functional.dropout(x, p, training=False) * 1.0),
    OpCase("scaled_dot_product_attention", "attention", attention_inputs(), F.scaled_dot_product_attention, _torch_attention),
    OpCase("rope", "rope", rope_inputs(), F.rope, _torch_rope),
    OpCase("repeat_interleave", "repeat_interleave", repeat_interleave_inputs(), F.repeat_interleave,
           lambda torch, x, repeats, axis: torch.repeat_interleave(x, repeats, dim=axis)),
]
