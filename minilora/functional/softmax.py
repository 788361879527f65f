"""softmax, log_softmax and cross_entropy (which takes log_softmax inside).

Shapes: x (..., C) with the classes on ``axis`` (the last by default).
cross_entropy: logits (..., C), targets (...) of class ids.

The softmax backward is a formula of its own, ``softmax_backward``: attention
uses it too.
"""
from .. import backend
from ..autograd import Function
from .ids import check_class_ids, ids_array


def log_softmax_forward(x, axis):
    """log softmax(x) = x - log sum exp(x) along ``axis``, shifted by the max so that exp cannot overflow."""
    xp = backend.array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)  # the shift cancels
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_backward(y, dy, axis):
    """y = softmax(x) along ``axis``  =>  dx = y (dy - sum(dy y)) (docs/derivations.md#softmax-and-the-loss-functionalsoftmaxpy)."""
    # BEGIN SOLUTION 13 "Softmax and log-softmax backward"
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))
    # END SOLUTION 13


class Softmax(Function):
    """y = e^x / sum e^x along ``axis``. Input: x (...). Output: y (...). ctx keeps: y, axis.
    Backward: docs/derivations.md#softmax-and-the-loss-functionalsoftmaxpy."""

    @staticmethod
    def forward(ctx, x, axis=-1):
        y = backend.array_module(x).exp(log_softmax_forward(x, axis))
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, dy):
        return softmax_backward(ctx.y, dy, ctx.axis)


class LogSoftmax(Function):
    """y = x - log sum e^x along ``axis``. Input: x (...). Output: y (...). ctx keeps: y, axis.
    Backward: docs/derivations.md#softmax-and-the-loss-functionalsoftmaxpy."""

    @staticmethod
    def forward(ctx, x, axis=-1):
        y = log_softmax_forward(x, axis)
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, dy):  # y = x - logsumexp(x)  =>  dx = dy - softmax(x) sum(dy)
        # BEGIN SOLUTION 13 "Softmax and log-softmax backward"
        xp = backend.array_module(dy)
        return dy - xp.exp(ctx.y) * dy.sum(axis=ctx.axis, keepdims=True)
        # END SOLUTION 13


class CrossEntropy(Function):
    """loss_n = -log softmax(logits_n)[t_n] for each row n, then the mean over the rows not ignored (or sum, or none).

    Inputs: logits (..., C), targets (...) of class ids, where ``ignore_index`` marks rows that count for nothing.
    Output: the loss, () for "mean" and "sum", targets' shape for "none".
    ctx keeps: logp = log softmax(logits) (N, C), the targets (N,), keep (N,), count, reduction (N rows in all).
    Backward: docs/derivations.md#softmax-and-the-loss-functionalsoftmaxpy.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        xp = backend.array_module(logits)
        logits = logits.reshape(-1, logits.shape[-1])  # (N, C)
        keep = targets.reshape(-1) != ignore_index  # (N,)
        t = xp.where(keep, targets.reshape(-1), 0)  # (N,): an ignored row picks class 0, then counts 0
        rows = xp.arange(len(t))
        # 1. log-probabilities
        logp = log_softmax_forward(logits, axis=-1)  # (N, C)
        # 2. each row's loss: minus the log-probability of its target
        losses = -logp[rows, t] * keep  # (N,)
        # 3. reduce: the mean over kept rows (an int count would promote float32 to float64)
        count = xp.maximum(keep.sum(), 1).astype(logp.dtype)
        ctx.logp, ctx.t, ctx.keep, ctx.count, ctx.reduction, ctx.shape = logp, t, keep, count, reduction, targets.shape
        if reduction == "none":
            return losses.reshape(targets.shape)
        return losses.sum() / count if reduction == "mean" else losses.sum()

    @staticmethod
    def backward(ctx, dloss):
        # BEGIN SOLUTION 14 "Cross-entropy backward"
        xp = backend.array_module(dloss)
        logp, t, keep = ctx.logp, ctx.t, ctx.keep
        # 3. loss = sum_n loss_n / count  =>  dloss_n = dloss / count; ignored rows get nothing
        if ctx.reduction == "mean":
            dlosses = dloss / ctx.count * keep  # (N,)
        elif ctx.reduction == "sum":
            dlosses = dloss * keep
        else:
            dlosses = dloss.reshape(-1) * keep
        # 2.-1. loss_n = -logp[n, t_n]  =>  dlogits[n] = (softmax(logits_n) - onehot(t_n)) dloss_n
        probs_minus_onehot = xp.exp(logp)  # (N, C)
        probs_minus_onehot[xp.arange(len(t)), t] -= 1
        dlogits = probs_minus_onehot * dlosses[:, None]  # (N, C)
        return dlogits.reshape(ctx.shape + (logp.shape[-1],)), None
        # END SOLUTION 14


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Mean negative log-likelihood of ``targets`` under softmax(``logits``), skipping ``ignore_index``.

    logits (..., C), targets (...) of class ids in [0, C) or ``ignore_index``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    targets = ids_array(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits "
            f"{tuple(logits.shape)}; expected targets of shape {tuple(logits.shape[:-1])}"
        )
    check_class_ids("cross_entropy", targets, logits.shape[-1], ignore_index)
    return CrossEntropy.apply(logits, backend.asarray(targets, like=logits.data), ignore_index=ignore_index, reduction=reduction)
