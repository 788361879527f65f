"""Modules: objects that own Parameters and compute a forward pass, as in ``torch.nn``.

A Module finds its parameters by looking at its attributes: any Parameter or
Module assigned to ``self`` is registered under that name, so
``model.named_parameters()`` yields names like ``blocks.0.attn.q.weight``.
Those names are what LoRA's ``target_modules`` match.
"""
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable weight of a Module (requires_grad=True by default)."""

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("Tensor("):]


class Module:
    """The base class of every layer and model. Subclasses set attributes in ``__init__`` and define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- walking the tree -------------------------------------------------
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module and every module below it, depth first."""
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        """Yield (dotted name, Parameter); a Parameter shared by two modules appears once."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def get_submodule(self, target):
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} (looking for {target!r})")
            module = module._modules[part]
        return module

    # ---- state ------------------------------------------------------------
    def state_dict(self):
        """An ordered dict of dotted name -> array (the live arrays, not copies), as torch's."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters; every missing, unexpected or misshapen key is listed."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        misshapen = [
            f"{name}: checkpoint {tuple(np.shape(state_dict[name]))} vs model {p.shape}"
            for name, p in own.items() if name in state_dict and tuple(np.shape(state_dict[name])) != p.shape
        ]
        problems = []
        if misshapen:
            problems.append("shape mismatch: " + "; ".join(misshapen))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(
                f"load_state_dict into {type(self).__name__} failed, nothing was loaded. "
                + " | ".join(problems) + ". Fix: build the model with the checkpoint's config."
            )
        for name, p in own.items():
            if name in state_dict:
                p.data = backend.asarray(state_dict[name], dtype=p.dtype).copy()
        return missing, unexpected

    # ---- modes and housekeeping -------------------------------------------
    def train(self, mode=True):
        """Switch dropout on (mode=True) or off. Nothing else changes: no hidden merge, no copies."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def to(self, backend_name):
        """Move every parameter to "numpy" or "cupy" (gradients are dropped)."""
        previous = backend.get_backend()
        backend.set_backend(backend_name)
        try:
            for p in self.parameters():
                p.data = backend.asarray(p.data)
                p.grad = None
        finally:
            backend.set_backend(previous)
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        return "\n".join(lines) + ("\n)" if self._modules else ")")


class ModuleList(Module):
    """A list of Modules, registered under the names "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _rng(rng):
    return rng if rng is not None else backend.default_rng()


class Linear(Module):
    """y = x W^T + b.  x (..., in) -> y (..., out); weight (out, in), bias (out,), PyTorch's layout.

    Initialised as torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) for both.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = _rng(rng)
        bound = 1 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(backend.uniform((out_features, in_features), -bound, bound, rng))
        self.bias = Parameter(backend.uniform((out_features,), -bound, bound, rng)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """ids (...) -> vectors (..., C); weight (num_embeddings, C) ~ N(0, 1), as torch.nn.Embedding."""

    def __init__(self, num_embeddings, embedding_dim, rng=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(backend.randn((num_embeddings, embedding_dim), _rng(rng)))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale and shift. x (..., C) -> (..., C)."""

    def __init__(self, dim, eps=1e-5, bias=True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim), dtype=backend.get_default_dtype())
        self.bias = Parameter(np.zeros(dim), dtype=backend.get_default_dtype()) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    """Divide the last axis by its root mean square, then scale. x (..., C) -> (..., C)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim), dtype=backend.get_default_dtype())

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero values with probability p while training; the identity in eval mode. Owns its random stream."""

    def __init__(self, p=0.0, rng=None):
        super().__init__()
        self.p = p
        self.rng = _rng(rng)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"
