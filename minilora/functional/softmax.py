"""softmax, log_softmax and cross_entropy (fused with log_softmax).

Shapes: x (..., C) with the classes on ``axis`` (the last by default).
cross_entropy: logits (N, C) or (B, T, C), targets (N,) or (B, T) of class ids.
"""
from .. import backend
from ..autograd import Function
from .ids import check_class_ids, ids_array


def _log_softmax(x, axis):
    xp = backend.array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)  # exp of a large logit would overflow; the shift cancels
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = backend.array_module(x)
        y = xp.exp(_log_softmax(x, axis))
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, grad):  # y = softmax(x)  =>  dx = y (dy - sum(dy y))
        y = ctx.y
        return y * (grad - (grad * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = _log_softmax(x, axis)
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, grad):  # y = x - logsumexp(x)  =>  dx = dy - softmax(x) sum(dy)
        xp = backend.array_module(grad)
        return grad - xp.exp(ctx.y) * grad.sum(axis=ctx.axis, keepdims=True)


def reduce_losses(ctx, losses, keep, reduction, shape):
    """Per-row losses (N,) -> the mean over kept rows, their sum, or all of them in ``shape``; ctx keeps what backward needs."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    ctx.keep, ctx.reduction = keep, reduction
    if reduction == "mean":
        xp = backend.array_module(losses)
        ctx.count = xp.maximum(keep.sum(), 1).astype(losses.dtype)  # an int count would promote float32 to float64
        return losses.sum() / ctx.count
    return losses.sum() if reduction == "sum" else losses.reshape(shape)


def loss_gradient_per_row(ctx, grad):
    """d(reduced loss)/d(loss_n) times the upstream ``grad``, for each row n: (N,), zero for ignored rows."""
    if ctx.reduction == "none":
        return grad.reshape(-1) * ctx.keep
    if ctx.reduction == "mean":
        return grad * ctx.keep / ctx.count
    return grad * ctx.keep


class CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        xp = backend.array_module(logits)
        num_classes = logits.shape[-1]
        if targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits "
                f"{tuple(logits.shape)}; expected targets of shape {tuple(logits.shape[:-1])}"
            )
        logits2d = logits.reshape(-1, num_classes)  # (N, C)
        targets1d = targets.reshape(-1)  # (N,)
        keep = targets1d != ignore_index  # (N,)
        safe_targets = xp.where(keep, targets1d, 0)
        logp = _log_softmax(logits2d, -1)  # (N, C)
        losses = -logp[xp.arange(len(targets1d)), safe_targets] * keep  # (N,)
        ctx.logp, ctx.targets, ctx.shape = logp, safe_targets, logits.shape
        return reduce_losses(ctx, losses, keep, reduction, targets.shape)

    @staticmethod
    def backward(ctx, grad):
        # loss_n = -logp[n, t_n]  =>  dlogits[n] = (softmax(logits[n]) - onehot(t_n)) dloss_n
        xp = backend.array_module(grad)
        dlogits = xp.exp(ctx.logp)  # (N, C)
        dlogits[xp.arange(len(ctx.targets)), ctx.targets] -= 1
        dlogits *= loss_gradient_per_row(ctx, grad)[:, None]
        return dlogits.reshape(ctx.shape), None


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Mean negative log-likelihood of ``targets`` under softmax(``logits``), skipping ``ignore_index``."""
    targets = ids_array(targets)
    check_class_ids("cross_entropy", targets, logits.shape[-1], ignore_index)
    return CrossEntropy.apply(logits, backend.asarray(targets, like=logits.data), ignore_index=ignore_index, reduction=reduction)

