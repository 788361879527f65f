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
    """A Tensor that is a learnable weight of a Module (requires_grad=True by default).

    ``Parameter(t)`` of a Tensor shares t's array, as ``torch.nn.Parameter(t)``
    shares t's storage: the Parameter is a new leaf, cut from t's graph (see Tensor).
    """

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
                p.data = backend.asarray(state_dict[name], dtype=p.dtype, like=p.data).copy()  # beside p, on p's backend
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
        with backend.using_backend(backend_name):
            for p in self.parameters():
                p.data = backend.asarray(p.data)
                p.grad = None
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


# ---- Transformer layers -----------------------------------------------------
# Shapes below: B batch, T time (new positions), S all positions a query may see
# (T, plus any cached ones), C channels, H heads, D = C / H channels per head.


class MLP(Module):
    """The feed-forward half of a block: x (B, T, C) -> c_fc (B, T, 4C) -> gelu -> c_proj (B, T, C) -> dropout."""

    def __init__(self, n_embd, dropout=0.0, bias=True, rng=None):
        super().__init__()
        rng = _rng(rng)
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias, rng=rng)
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias, rng=rng)
        self.dropout = Dropout(dropout, rng=rng)

    def forward(self, x):
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C); GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))  # (B, T, C)


class KVCache:
    """The keys and values one attention layer has already computed, so generation feeds only new tokens.

    k, v: (B, H, len(cache), D) Tensors, or None before the first call (H counts the
    key/value heads: fewer than the query heads under grouped-query attention).
    """

    def __init__(self):
        self.k = self.v = None

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k, v):
        """Append this call's k, v (B, H, T, D); return all of them, (B, H, len(cache) + T, D)."""
        if self.k is not None:
            k = F.concatenate([self.k, k], axis=2)  # (B, H, len(cache) + T, D)
            v = F.concatenate([self.v, v], axis=2)  # (B, H, len(cache) + T, D)
        self.k, self.v = k, v
        return k, v


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with separate q, k, v and output (o) projections.

    x (B, T, C) -> (B, T, C). Separate projections (GPT-2 fuses q, k, v into
    one c_attn) let LoRA target "q" and "v" by name, as the paper does.
    """

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, rng=None):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}; each head needs n_embd / n_head channels")
        rng = _rng(rng)
        self.n_embd, self.n_head = n_embd, n_head
        self.q = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.k = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.v = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.o = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.dropout = Dropout(dropout, rng=rng)

    def _heads(self, x):
        B, T, C = x.shape
        return x.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x, attn_mask=None, kv_cache=None):
        """x (B, T, C) -> (B, T, C).

        attn_mask: optional boolean keep-mask broadcastable to (B, H, T, S), True
        where a query may look; it is combined with the causal mask.
        kv_cache: optional KVCache; this call's keys and values are appended to
        it and the queries attend over all S cached + new positions.
        """
        B, T, C = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))  # (B, H, T, D) each
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, H, S, D), S = len(cache) + T
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.dropout(self.o(y))  # (B, T, C)

    def extra_repr(self):
        return f"n_embd={self.n_embd}, n_head={self.n_head}"


class Block(Module):
    """One pre-LayerNorm Transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). x (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, eps=1e-5, rng=None):
        super().__init__()
        rng = _rng(rng)
        self.ln_1 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout=dropout, bias=bias, rng=rng)
        self.ln_2 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, dropout=dropout, bias=bias, rng=rng)

    def forward(self, x, attn_mask=None, kv_cache=None):
        """x (B, T, C) -> (B, T, C); attn_mask and kv_cache go to the attention (see CausalSelfAttention)."""
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, kv_cache=kv_cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)
