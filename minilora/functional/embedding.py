"""embedding (a table lookup) and dropout.

embedding: ids (...) of ints, weight (V, C) -> (..., C).
dropout:   x (...) -> x (...), each value zeroed with probability p, the rest scaled by 1/(1-p).
"""
from .. import backend
from ..autograd import Function
from .ids import check_class_ids, ids_array


class Embedding(Function):
    """y = W[ids], a row of the table per id. Inputs: ids (...) of ints, weight W (V, C). Output: y (..., C).
    ctx keeps: ids, W's shape. Backward: docs/derivations.md#lookups-and-noise-functionalembeddingpy."""

    @staticmethod
    def forward(ctx, ids, weight):
        ctx.ids, ctx.shape = ids, weight.shape
        return weight[ids]  # (..., C)

    @staticmethod
    def backward(ctx, grad):  # y = W[ids]  =>  dW[ids] += dy; a token seen twice gets both rows
        # BEGIN SOLUTION 12 "GetItem and Embedding backward"
        xp = backend.array_module(grad)
        dweight = xp.zeros(ctx.shape, dtype=grad.dtype)
        backend.scatter_add(dweight, ctx.ids.reshape(-1), grad.reshape(-1, ctx.shape[1]))
        return None, dweight
        # END SOLUTION 12


class Dropout(Function):
    """y = x m / (1 - p), m a 0/1 keep-mask drawn by the caller. Inputs: x (...), keep_mask (x's shape), scale = 1/(1-p).
    Output: y (...). ctx keeps: m / (1 - p). Backward: docs/derivations.md#lookups-and-noise-functionalembeddingpy."""

    @staticmethod
    def forward(ctx, x, keep_mask, scale):
        ctx.mask = keep_mask * scale
        return x * ctx.mask

    @staticmethod
    def backward(ctx, grad):  # y = x m / (1-p)  =>  dx = dy m / (1-p)
        return grad * ctx.mask, None, None


def embedding(ids, weight):
    """Rows of ``weight`` (V, C) picked by integer ``ids``; out-of-range ids raise IndexError."""
    ids = ids_array(ids)
    check_class_ids("embedding", ids, weight.shape[0])  # before the move: host ids are checked without a GPU wait
    return Embedding.apply(backend.asarray(ids, like=weight.data), weight)


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each value with probability ``p`` and scale the rest by 1/(1-p); identity when not training.

    ``rng`` is a numpy Generator (for example a Dropout module's own); the mask
    is drawn on the host so one seed gives one mask on every backend.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    rng = rng if rng is not None else backend.default_rng()
    keep = backend.asarray(rng.random(x.shape) >= p, like=x.data).astype(x.dtype)
    return Dropout.apply(x, keep, 1 / (1 - p))
