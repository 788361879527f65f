"""Reverse-mode automatic differentiation: ``Tensor``, ``Function`` and ``backward``.

A Tensor wraps an array (``.data``, NumPy or CuPy) and, if it needs a gradient,
remembers the Function that made it and that Function's inputs. ``backward()``
walks this graph from the output back to the leaves in reverse topological
order, calling each Function's hand-written ``backward`` once.

``.grad`` is a plain array of the same backend as ``.data`` (not a Tensor):
gradients are numbers, they do not need a graph of their own.

Two paths per op. Every Function in ``minilora.functional`` is the reference:
the formula, the code students read. A few ops also have a fast variant (a
CuPy kernel, or a NumPy version that saves memory traffic), a subclass in
``minilora/fused/`` that registers itself here with ``register_fast``.
``Function.apply`` runs the fast variant for arrays of its backend, unless
``reference_ops()`` (or ``MINILORA_REFERENCE_OPS=1``) asks for the references.
"""
import contextlib
import os

import numpy as np

from . import backend

_grad_enabled = [True]
_reference_only = [os.environ.get("MINILORA_REFERENCE_OPS", "0") not in ("", "0")]
_fast_variants = {}  # (reference, backend name) -> the fast variant that runs in its place
_with_variants = set()  # the references in _fast_variants, so that the others skip the lookup
_autocast = [None]  # inside minilora.amp.autocast(): its policy, which casts each op's inputs and output


@contextlib.contextmanager
def no_grad():
    """Inside this block, ops record no graph (for evaluation and optimizer updates)."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = False
    try:
        yield
    finally:
        _grad_enabled[0] = previous


def is_grad_enabled():
    return _grad_enabled[0]


@contextlib.contextmanager
def reference_ops(enabled=True):
    """Inside this block every op runs its reference forward and backward, on either backend, never a fast variant.

    For graders and for reading: what runs is the formula in minilora.functional.
    ``MINILORA_REFERENCE_OPS=1`` turns it on for the whole process.
    """
    previous = _reference_only[0]
    _reference_only[0] = enabled
    try:
        yield
    finally:
        _reference_only[0] = previous


def is_reference_ops():
    return _reference_only[0]


def set_autocast(policy):
    """Install minilora.amp's cast policy (None turns autocast off); returns the previous one."""
    previous = _autocast[0]
    _autocast[0] = policy
    return previous


def register_fast(reference, fast, backend_name):
    """Run ``fast`` in place of ``reference`` (a Function, or a plain function) for arrays of ``backend_name``."""
    _fast_variants[reference, backend_name] = fast
    _with_variants.add(reference)


def fast_or_reference(reference, array):
    """The variant of ``reference`` to run on ``array``: its registered fast one, unless reference_ops() is on."""
    if _reference_only[0] or reference not in _with_variants:
        return reference
    name = backend.backend_of(array)
    if name == "numpy" and array.dtype.itemsize == 2 and backend.is_floating(array.dtype):
        return reference  # the NumPy variants work in place in float32/64; the CuPy kernels take 16-bit floats too
    return _fast_variants.get((reference, name), reference)


class Context:
    """What a Function's forward leaves for its backward.

    Set any attribute you need (``ctx.x = x``). ``ctx.needs_input_grad[i]`` says
    whether the i-th input wants a gradient, so backward can skip work.
    """

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of size
    1, so its gradient is the sum over those axes.
    """
    # BEGIN SOLUTION 2 "unbroadcast"
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad
    # END SOLUTION 2


class Function:
    """A differentiable op: a ``forward`` on arrays and the ``backward`` that undoes it.

    Subclasses define two static methods::

        class Square(Function):
            @staticmethod
            def forward(ctx, x):          # x: array
                ctx.x = x
                return x * x
            @staticmethod
            def backward(ctx, grad):      # y = x^2  =>  dx = 2 x dy
                return 2 * ctx.x * grad

    and are called as ``Square.apply(tensor)``. ``backward`` returns one
    gradient per positional input of ``forward`` (None where there is none);
    a gradient may have the broadcast shape, the engine sums it back.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        autocast = _autocast[0]
        if autocast is not None:
            args = autocast.cast_inputs(cls, args, kwargs)
        tensors = [a for a in args if isinstance(a, Tensor)]
        backend.check_same_backend(cls.__name__, [t.data for t in tensors])
        if tensors:
            cls = fast_or_reference(cls, tensors[0].data)
        needs_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = _grad_enabled[0] and any(needs_grad)
        ctx = Context(needs_grad)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = Tensor._wrap(cls.forward(ctx, *raw, **kwargs))
        if record:
            out.requires_grad = True
            out._fn, out._ctx = cls, ctx
            out._parents = tuple(a if isinstance(a, Tensor) else None for a in args)
        return autocast.cast_output(cls, out) if autocast is not None else out


class Tensor:
    """An n-dimensional array that can remember how it was computed.

    Tensor(data, requires_grad=False, dtype=None): ``data`` is a number, a
    (nested) list, an array or a Tensor; it is placed on the current backend.
    Python floats become the default dtype (float32); arrays keep their dtype.

    An array of the right dtype and backend is shared, not copied (as
    ``torch.as_tensor``). A Tensor is unwrapped: ``Tensor(t)`` is a new leaf
    that shares t's array, on t's backend (as ``torch.nn.Parameter(t)`` shares
    t's storage), cut from t's graph. ``requires_grad`` is the argument's, not
    t's; a ``dtype`` other than t's makes a converted copy.
    """

    __array_priority__ = 1000  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            self.data = backend.asarray(data.data, dtype=dtype, like=data.data)
        else:
            self.data = backend.asarray(data, dtype=dtype)
        self.grad = None
        self._fn = self._ctx = None
        self._parents = ()
        self._freed = False
        self.requires_grad = False
        self.requires_grad_(requires_grad)

    @classmethod
    def _wrap(cls, array):
        """Make a Tensor around an array without copying or converting it."""
        t = cls.__new__(cls)
        t.data, t.grad, t.requires_grad = array, None, False
        t._fn = t._ctx = None
        t._parents = ()
        t._freed = False
        return t

    def requires_grad_(self, flag=True):
        if flag and not backend.is_floating(self.data.dtype):
            raise TypeError(
                f"requires_grad needs a floating-point tensor, got dtype {self.data.dtype}; "
                "only continuous values have gradients. Fix: Tensor(data, dtype='float32')."
            )
        self.requires_grad = bool(flag)
        return self

    # ---- array facts -------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._fn is None

    @property
    def T(self):
        """Every axis reversed, as NumPy's ``.T`` and torch's: (a, b, c) -> (c, b, a); 0-D and 1-D stay as they are."""
        return self.permute(tuple(reversed(range(self.ndim)))) if self.ndim >= 2 else self

    @property
    def mT(self):
        """The last two axes swapped, each matrix of a batch transposed, as torch's ``.mT``: (..., n, m) -> (..., m, n)."""
        if self.ndim < 2:
            raise ValueError(f"mT: needs at least 2 axes, got shape {self.shape}. Fix: x.reshape(1, -1).mT for a column.")
        return self.transpose(-2, -1)

    def __len__(self):
        return self.data.shape[0]

    def numpy(self):
        """The values as a NumPy array on the host (a copy if they live on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self):
        """A new Tensor sharing the data, cut from the graph."""
        return Tensor._wrap(self.data)

    def astype(self, dtype):
        """A copy with another dtype, cut from the graph (like ``x.detach().to(dtype)``)."""
        return Tensor._wrap(self.data.astype(dtype))

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        values = np.array2string(self.numpy(), precision=4, threshold=20, separator=", ")
        return f"Tensor({values}, dtype={self.dtype}{grad})"

    # ---- operators and methods: each one op of minilora.functional ---------
    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __pow__(self, exponent): return F.pow(self, exponent)
    def __neg__(self): return F.neg(self)
    def __getitem__(self, index): return F.getitem(self, index)

    def matmul(self, other): return F.matmul(self, other)
    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def sqrt(self): return F.sqrt(self)
    def tanh(self): return F.tanh(self)
    def sigmoid(self): return F.sigmoid(self)
    def relu(self): return F.relu(self)
    def sum(self, axis=None, keepdims=False): return F.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return F.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return F.max(self, axis, keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return F.var(self, axis, keepdims, ddof)
    def reshape(self, *shape): return F.reshape(self, *shape)
    def permute(self, *axes): return F.permute(self, *axes)
    def transpose(self, axis0=-2, axis1=-1): return F.transpose(self, axis0, axis1)
    def softmax(self, axis=-1): return F.softmax(self, axis)
    def log_softmax(self, axis=-1): return F.log_softmax(self, axis)
    def masked_fill(self, mask, value): return F.masked_fill(self, mask, value)

    # ---- the backward pass -----------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the upstream gradient, of self's shape; it may be left out
        only when self holds one number (a loss). The graph is freed afterwards
        unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require grad, so no graph leads to it. "
                "Fix: create the leaves with requires_grad=True, outside no_grad()."
            )
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() on a tensor of shape {self.shape} needs an explicit gradient of that "
                    "shape: only a single number (a loss) has an implied gradient of 1. "
                    "Fix: call loss.sum().backward() or backward(grad=...)."
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, the tensor has {self.shape}")

        # BEGIN SOLUTION 3 "The backward loop"
        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._fn is None:
                if node._freed:
                    raise RuntimeError(
                        "backward() reached a graph that an earlier backward() already freed. "
                        "Fix: pass retain_graph=True to the first backward(), or recompute the forward."
                    )
                if node.grad is None:
                    node.grad = g.astype(node.data.dtype, copy=True)  # a copy: g may also be another input's gradient
                else:
                    node.grad += g
                continue
            input_grads = node._fn.backward(node._ctx, g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for parent, parent_grad in zip(node._parents, input_grads):
                if parent is None or parent_grad is None or not parent.requires_grad:
                    continue
                parent_grad = unbroadcast(parent_grad, parent.shape)
                if parent_grad.dtype != parent.dtype:  # float32 + bfloat16 is float32: the bf16 input's gradient is bf16
                    parent_grad = parent_grad.astype(parent.dtype)
                key = id(parent)
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad
            if not retain_graph:
                node._fn = node._ctx = None
                node._parents = ()
                node._freed = True
        # END SOLUTION 3


def _topological_order(root):
    """Tensors reachable from ``root``, each after all of its inputs (iterative DFS, no recursion limit)."""
    # BEGIN SOLUTION 1 "Topological order"
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent is not None and parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order
    # END SOLUTION 1


from . import functional as F  # noqa: E402  last: the ops are Functions built on the classes above
