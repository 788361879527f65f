"""LoRALinear: a frozen Linear plus named low-rank adapters, h = W0 x + b + s B A x.

One layer can hold several adapters (say one per task) over one frozen W0; at
most one is active at a time. Merging folds the active adapter into W0 so that
inference costs one plain matmul; unmerging takes it out again.
"""
import math

import numpy as np

from .. import backend
from ..autograd import is_grad_enabled
from ..nn import Linear, Module, Parameter
from ..quant import linear as quant_linear  # the module, not its names: quant/linear.py imports lora/function.py
from .function import lora_linear


class AdapterDict(Module):
    """Parameters or Modules keyed by adapter name, registered so their names read ``lora_A.<adapter>``."""

    def __getitem__(self, name):
        return getattr(self, name)

    def __setitem__(self, name, value):
        setattr(self, name, value)

    def __delitem__(self, name):
        delattr(self, name)

    def __contains__(self, name):
        return name in self._parameters or name in self._modules

    def keys(self):
        return list(self._parameters) + list(self._modules)

    def extra_repr(self):
        return ", ".join(f"{name}: {p.shape}" for name, p in self._parameters.items())


def check_adapter_name(name):
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or hasattr(AdapterDict, name) \
            or name == "training":
        raise ValueError(
            f"adapter name {name!r} must be a Python identifier (letters, digits, '_') that is not a Module "
            "attribute, because it becomes part of parameter names like 'q.lora_A.<name>'. Fix: e.g. adapter_name='task_1'."
        )


class LoRALinear(Module):
    """Wraps a frozen ``Linear`` (``base_layer``); x (..., in) -> h (..., out).

    The base may be a 4-bit ``QuantizedLinear`` (QLoRA, minilora.quant): A and B
    stay float and train as usual; W0 is dequantized inside the op, and merging
    or a PiSSA init (which write into W0) are refused.

    Per adapter name: ``lora_A[name]`` (r, in), ``lora_B[name]`` (out, r),
    ``scaling[name]`` = s, ``lora_dropout[name]`` = p. ``active_adapter`` picks
    the one in use (None: the base layer alone); ``disable_adapters`` switches
    it off without forgetting it (LoraModel.disable_adapter). ``merged_adapter``
    names the adapter folded into ``base_layer.weight``, if any.
    ``pissa_residual`` lists what PiSSA inits took out of W0, as (s0, A0, B0)
    host arrays: W0 = base_layer.weight + sum of s0 B0 A0 (see ``_pissa_init``).
    """

    def __init__(self, base_layer, rng=None):
        super().__init__()
        if not isinstance(base_layer, Linear):  # a QuantizedLinear is one
            raise TypeError(f"LoRALinear wraps a minilora.nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = AdapterDict()
        self.lora_B = AdapterDict()
        self.r, self.lora_alpha, self.scaling, self.lora_dropout = {}, {}, {}, {}
        self.active_adapter = None
        self.disable_adapters = False
        self.merged_adapter = None
        self.pissa_residual = []
        self.rng = rng if rng is not None else backend.default_rng()

    # ---- adapters -----------------------------------------------------------
    def add_adapter(self, name, r, alpha, scaling, dropout=0.0, init=True, layer_name="this layer"):
        """Create A (r, in) and B (out, r) for adapter ``name`` (active if no other is).

        init True: A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform with a = sqrt(5), as loralib and
        PEFT), B = 0.  init "gaussian": A ~ N(0, (1/r)^2) (PEFT's std; the paper says only
        "Gaussian"), B = 0.  Either way B A = 0, so the model starts exactly where W0 left it.
        init False: A as for True and B ~ U(-1/sqrt(r), 1/sqrt(r)) (PEFT's: torch's default
        init of B as a Linear(r, out)), so B A != 0: the adapter changes the output from the
        start, which tests use to see that it is applied.  init "pissa": see ``_pissa_init``.
        """
        check_adapter_name(name)
        if name in self.lora_A:
            raise ValueError(f"{layer_name} already has an adapter {name!r}. Fix: pick a new name or delete_adapter first.")
        if r > min(self.in_features, self.out_features):
            raise ValueError(
                f"{layer_name}: rank r={r} exceeds min(in, out) = min({self.in_features}, {self.out_features}); "
                "B A would not be low-rank. Fix: lower r, or set rank_pattern={'<name>': smaller r} for this layer."
            )
        # Drawn on the host (one seed, one adapter on every backend), then put beside W0.
        if init is True or init is False:
            bound = 1 / math.sqrt(self.in_features)
            A = self.rng.uniform(-bound, bound, size=(r, self.in_features))
            bound = 1 / math.sqrt(r)
            B = np.zeros((self.out_features, r)) if init else self.rng.uniform(-bound, bound, size=(self.out_features, r))
        elif init == "gaussian":
            A = self.rng.normal(0.0, 1.0 / r, size=(r, self.in_features))
            B = np.zeros((self.out_features, r))
        elif init == "pissa":
            A, B = self._pissa_init(r, scaling)
        else:
            raise ValueError(f"unknown init_lora_weights={init!r}; choose True, False, 'gaussian' or 'pissa'")
        self.lora_A[name], self.lora_B[name] = self._beside_base(A, trainable=True), self._beside_base(B, trainable=True)
        self.r[name], self.lora_alpha[name], self.scaling[name], self.lora_dropout[name] = r, alpha, scaling, dropout
        if self.active_adapter is None:
            self.active_adapter = name

    def _pissa_init(self, r, scaling):
        """PiSSA: W0 = U S V^T; A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s), so s B A is W0's best rank-r part.

        The base weight becomes the residual W0 - s B A (frozen): the model's
        output is unchanged, but training starts in W0's principal directions.
        (s, A, B) go into ``pissa_residual``, so that the adapter can still be
        written as a plain LoRA adapter on the original W0 (minilora.lora.peft_gpt2).
        """
        self._refuse_if_quantized("init_lora_weights='pissa'", "the residual W0 - s B A would have to be re-quantized")
        w = self.base_layer.weight
        W0 = backend.to_numpy(w.data).astype(np.float64)
        U, S, Vh = np.linalg.svd(W0, full_matrices=False)
        root = np.sqrt(S[:r] / scaling)  # (r,)
        A = root[:, None] * Vh[:r]  # (r, in)
        B = U[:, :r] * root[None, :]  # (out, r)
        w.data = self._beside_base(W0 - scaling * (B @ A)).data
        self.pissa_residual.append((scaling, A, B))
        return A, B

    def _beside_base(self, values, trainable=False):
        """A Parameter holding host ``values`` in W0's dtype, on W0's backend (the model may live on the GPU).

        A trainable factor beside a 16-bit W0 (``amp.cast_frozen``) is float32: its updates need the resolution.
        """
        base = self.base_layer
        dtype, beside = (base.dtype, base.qweight.data) if self._quantized() else (base.weight.dtype, base.weight.data)
        if trainable and dtype.itemsize == 2:
            dtype = np.dtype(np.float32)
        p = Parameter(values, dtype=dtype)  # made on the current backend,
        p.data = backend.array_module(beside).asarray(values, dtype=dtype)  # then moved beside W0
        return p

    def _quantized(self):
        return isinstance(self.base_layer, quant_linear.QuantizedLinear)

    def _refuse_if_quantized(self, action, why):
        if self._quantized():
            raise RuntimeError(
                f"{action}: this layer's base weight is {self.base_layer.format} (4-bit); {why}, losing most of "
                "the update's precision. Fix: keep the adapter unmerged (as QLoRA serves it), or "
                "minilora.quant.dequantize_base(model) first."
            )

    def delete_adapter(self, name):
        self._require(name)
        if self.merged_adapter == name:
            raise RuntimeError(f"adapter {name!r} is merged into the base weight. Fix: unmerge_adapter() before deleting it.")
        del self.lora_A[name], self.lora_B[name]
        for table in (self.r, self.lora_alpha, self.scaling, self.lora_dropout):
            del table[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def _require(self, name):
        if name not in self.lora_A:
            raise KeyError(f"no adapter {name!r} in this layer; it has {self.lora_A.keys()}")

    def plain_factors(self, name):
        """(A, B) host arrays such that W0 + s B A is what this layer computes, for the ORIGINAL W0.

        Without PiSSA that is the adapter's own A (r, in), B (out, r). After a
        PiSSA init the base weight is the residual W0 - s0 B0 A0, so
        ``W0 + s [B, -(s0/s) B0] [A; A0] = residual + s B A``: a plain LoRA adapter of
        rank r + r0, what PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) writes.
        """
        self._require(name)
        s = self.scaling[name]
        A, B = backend.to_numpy(self.lora_A[name].data), backend.to_numpy(self.lora_B[name].data)
        A = np.concatenate([A] + [A0.astype(A.dtype) for _, A0, _ in self.pissa_residual])  # (r + r0, in)
        B = np.concatenate([B] + [(-s0 / s * B0).astype(B.dtype) for s0, _, B0 in self.pissa_residual], axis=1)  # (out, r + r0)
        return A, B

    def delta_weight(self, name):
        """ΔW = s B A (out, in), the update the adapter adds to W0 (formed only for merging and analysis)."""
        self._require(name)
        return self.scaling[name] * (self.lora_B[name].data @ self.lora_A[name].data)

    # ---- merging ------------------------------------------------------------
    def merge(self):
        """W0 <- W0 + s B A for the active adapter: inference then costs one plain matmul."""
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is already merged; merging again would add B A twice. "
                "Fix: unmerge_adapter() first."
            )
        if self.active_adapter is None:
            return
        self._refuse_if_quantized("merge", "W0 + s B A would have to be re-quantized")
        w = self.base_layer.weight
        # BEGIN SOLUTION 21 "Merge and unmerge"
        w.data = w.data + self.delta_weight(self.active_adapter)
        # END SOLUTION 21
        self.merged_adapter = self.active_adapter

    def unmerge(self):
        """W <- W - s B A: W0 comes back to within one ulp of max(|W0|, |W0 + s B A|).

        Rounding W0 + s B A dropped W0's bits below the merged value's ulp, and
        no subtraction can bring them back; for the usual small update that is
        one ulp of W0 itself. Keeping an exact copy would cost the d x k memory
        merging is meant to save.
        """
        if self.merged_adapter is None:
            return
        w = self.base_layer.weight
        # BEGIN SOLUTION 21 "Merge and unmerge"
        w.data = w.data - self.delta_weight(self.merged_adapter)
        # END SOLUTION 21
        self.merged_adapter = None

    # ---- forward ------------------------------------------------------------
    def forward(self, x):
        if self.merged_adapter is not None:
            if self.training and is_grad_enabled():
                raise RuntimeError(
                    f"adapter {self.merged_adapter!r} is merged into the base weight, so its A and B would get "
                    "no gradient. Fix: unmerge_adapter() before training, or run inference in eval() mode "
                    "or inside minilora.no_grad()."
                )
            return self.base_layer(x)
        name = self.active_adapter
        if name is None or self.disable_adapters:
            return self.base_layer(x)
        p = self.lora_dropout[name]
        mask = None
        if self.training and p > 0:
            keep = self.rng.random(x.shape) >= p
            mask = backend.array_module(x.data).asarray(keep).astype(x.dtype) / (1 - p)  # drawn on the host, as F.dropout
        base = self.base_layer
        if self._quantized():  # W0 is dequantized inside the op, in forward and again in backward
            return quant_linear.quantized_lora_linear(x, base, base.bias, self.lora_A[name], self.lora_B[name],
                                                      self.scaling[name], mask)
        return lora_linear(x, base.weight, base.bias, self.lora_A[name], self.lora_B[name], self.scaling[name], mask)

    def extra_repr(self):
        adapters = ", ".join(f"{n}: r={self.r[n]}, s={self.scaling[n]:g}" for n in self.lora_A.keys())
        disabled = ", disabled" if self.disable_adapters else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, adapters=[{adapters}], "
                f"active={self.active_adapter!r}{disabled}")
