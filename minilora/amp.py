"""Mixed precision: ``autocast`` runs matmuls in bfloat16 or float16, ``GradScaler`` keeps fp16 gradients alive.

    with minilora.amp.autocast("bfloat16"):      # or "float16", with a GradScaler
        loss = model(x, targets)[1]               # matmuls in bf16; softmax, norms, the loss in fp32
    scaler.scale(loss).backward()                 # fp16: the loss times S, so small gradients do not flush to 0
    scaler.step(optimizer)                        # unscale; skip the step if any gradient is inf/NaN
    scaler.update()                               # halve S after an overflow, double it after a run of good steps

The same contract as ``torch.autocast`` and ``torch.amp.GradScaler``:

- **Parameters stay float32** (the "master weights"). Autocast casts a copy of
  each input of a matmul to the low dtype, and the cast's backward casts the
  gradient back, so the optimizer only ever sees float32 weights and gradients.
  An update smaller than half a bf16 ulp of the weight would round away if the
  weight itself were bf16 (bf16 keeps 8 bits of mantissa: 1 + 2^-9 == 1).
- **Matmuls run low** (``LOW_PRECISION``): they are where the time goes and they
  tolerate rounding, since each output sums many products.
- **Sums, statistics and transcendental functions run in float32**
  (``FULL_PRECISION``): exp overflows fp16 beyond 11.1, a mean of many bf16
  values loses the small ones, log-probabilities need more than 3 digits, and
  erf's rational approximation overflows in fp16.
- Every other op (add, mul, reshape...) runs in the dtype of its inputs.

Loss scaling: fp16's smallest normal number is 6.1e-5 (bf16's is 1.2e-38, as
float32's), so fp16 gradients of a small loss underflow to zero. Multiplying the
loss by S multiplies every gradient by S; ``step`` divides them back in float32.

The frozen base of a LoRA model can live in the low dtype (``cast_frozen``):
W0 then takes half the memory, while A and B train in float32.

On NumPy, float16 arithmetic is emulated in software and slow, and bfloat16
needs the ``ml_dtypes`` package (``pip install -e ".[amp]"``): use it to see the
numerics at small sizes. On CuPy the low-precision matmuls run on tensor cores.
"""
import contextlib

import numpy as np

from . import autograd, backend
from .autograd import Function, Tensor
from .functional.attention import ScaledDotProductAttention
from .functional.elementwise import Exp, GeluErf, GeluTanh, Log, Pow, Sigmoid, SiLU, Sqrt, Tanh
from .functional.linalg import Linear as LinearFunction
from .functional.linalg import MatMul
from .functional.norm import LayerNorm, RMSNorm
from .functional.reduce import Mean, Sum, Var
from .functional.softmax import CrossEntropy, LogSoftmax, Softmax
from .lora.function import LoRALinearFunction
from .nn import Linear

LOW_PRECISION = (MatMul, LinearFunction, LoRALinearFunction)
FULL_PRECISION = (
    Softmax, LogSoftmax, CrossEntropy, LayerNorm, RMSNorm, Sum, Mean, Var,
    Exp, Log, Pow, Sqrt, Tanh, Sigmoid, SiLU, GeluTanh, GeluErf,
    # The reference attention is one Function with its softmax inside, so it runs in float32 as a whole.
    ScaledDotProductAttention,
)
LOW_DTYPES = ("float16", "bfloat16")


def low_precision_dtype(name):
    """The NumPy dtype for "float16" or "bfloat16" (the latter from ml_dtypes, which CuPy also accepts)."""
    if name not in LOW_DTYPES:
        raise ValueError(f"autocast: dtype {name!r} is not a low precision. Fix: dtype='bfloat16' or 'float16'.")
    if name == "float16":
        return np.dtype(np.float16)
    try:
        import ml_dtypes
    except ImportError as error:
        raise ImportError("autocast('bfloat16') needs the ml_dtypes package. Fix: pip install -e '.[amp]' "
                          "(or use 'float16')") from error
    return np.dtype(ml_dtypes.bfloat16)


class Cast(Function):
    """y = x in another dtype. Input x (...), output y (...).

    Rounding to a dtype is the identity as far as calculus is concerned, so
    dx = dy, cast back to x's dtype: the gradient of a float32 weight used in a
    bf16 matmul arrives in float32.
    """

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.dtype), None


class _Policy:
    """What autocast does at each ``Function.apply``: cast the floating inputs, then the output.

    Within one autocast block a tensor is cast to a dtype once: the output of
    a LayerNorm that feeds q, k and v is cast to bf16 once, not three times
    (the graph's nodes, not the parameters, are remembered: an optimizer step
    inside the block changes a parameter in place, so its casts are not kept).
    """

    def __init__(self, low):
        self.low = low
        self.float32 = np.dtype(np.float32)
        self.casts = {}  # (id(tensor), dtype) -> (tensor, its cast); the tensor is kept so its id is not reused

    def target(self, function, args, kwargs):
        if issubclass(function, LOW_PRECISION):
            return self.low
        if issubclass(function, FULL_PRECISION) and not _fused_in_float32(function, args, kwargs):
            return self.float32
        return None

    def cast_inputs(self, function, args, kwargs):
        dtype = self.target(function, args, kwargs)
        if dtype is None:
            return args
        return tuple(self.cast(a, dtype) if isinstance(a, Tensor) and backend.is_floating(a.dtype) else a for a in args)

    def cast(self, t, dtype):
        if t.dtype == dtype:
            return t
        if t._fn is None:  # a leaf: a parameter or an input, which may change in place between uses
            return Cast.apply(t, dtype)
        key = (id(t), dtype)
        if key not in self.casts:
            self.casts[key] = (t, Cast.apply(t, dtype))
        return self.casts[key][1]

    def cast_output(self, function, out):
        # NumPy's bf16 matmul (ml_dtypes) returns float32; the GPU's returns bf16 from a float32 accumulator.
        # Rounding here makes the NumPy emulation show what the GPU computes.
        if not issubclass(function, LOW_PRECISION) or out.dtype == self.low:
            return out
        return Cast.apply(out, self.low)


def _fused_in_float32(function, args, kwargs):
    """True if a fused kernel will run ``function`` on these 16-bit inputs as they are, computing in float32.

    The CuPy kernels (minilora.fused) read bf16 or fp16, do their sums and
    exponentials in float32 and round once when they write: the float32 the
    policy asks for, without a float32 copy of the input in memory.
    """
    arrays = [a.data for a in args if isinstance(a, Tensor) and backend.is_floating(a.dtype)]
    if not arrays or any(a.dtype.itemsize != 2 for a in arrays):
        return False
    fast = autograd.fast_or_reference(function, arrays[0])
    raw = [a.data if isinstance(a, Tensor) else a for a in args]
    return fast is not function and hasattr(fast, "runs_fused") and fast.runs_fused(*raw, **kwargs)


@contextlib.contextmanager
def autocast(dtype="bfloat16", enabled=True):
    """Inside the block, matmuls run in ``dtype`` ("bfloat16" or "float16") and reductions in float32.

    Put the forward pass and the loss inside; call ``backward()`` outside, as in
    PyTorch (the backward of each op runs in the dtypes its forward chose).
    """
    policy = _Policy(low_precision_dtype(dtype)) if enabled else None
    previous = autograd.set_autocast(policy)
    try:
        yield
    finally:
        autograd.set_autocast(previous)


def cast_frozen(model, dtype):
    """Store the frozen weights and biases of the linear layers (a LoRA model's W0) in ``dtype``.

    Returns the bytes saved. What trains (A and B) stays float32, so the
    optimizer updates it at full precision. The norms and the embeddings stay
    float32 too, as PEFT's prepare_model_for_kbit_training keeps them: the
    embeddings start the residual stream, whose running sums need float32,
    and a matrix shared with an embedding (GPT-2's tied lm_head) is left alone.
    Under autocast the linear layers then read W0 as it is, with no cast.
    """
    target = low_precision_dtype(dtype) if dtype in LOW_DTYPES else np.dtype(dtype)
    elsewhere = {id(p) for m in model.modules() if not isinstance(m, Linear) for p in m._parameters.values()}
    saved = 0
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        for p in module._parameters.values():
            if not p.requires_grad and backend.is_floating(p.dtype) and p.dtype != target and id(p) not in elsewhere:
                saved += p.data.nbytes
                p.data = p.data.astype(target)
                saved -= p.data.nbytes
    return saved


class GradScaler:
    """Dynamic loss scaling for float16, with torch.amp.GradScaler's defaults and methods.

    scale(loss) -> loss * S. unscale_(optimizer) divides the gradients by S
    (call it before clip_grad_norm). step(optimizer) unscales if needed and
    steps only if every gradient is finite. update() halves S after a skipped
    step and doubles it after ``growth_interval`` finite steps in a row.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError(
                f"GradScaler: init_scale={init_scale}, growth_factor={growth_factor}, "
                f"backoff_factor={backoff_factor}, growth_interval={growth_interval}. Fix: init_scale > 0, "
                "growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1.")
        self.enabled = enabled
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0
        self._unscaled = self._found_inf = None

    def scale(self, loss):
        return loss * self.scale_value if self.enabled else loss

    def get_scale(self):
        return self.scale_value if self.enabled else 1.0

    def unscale_(self, optimizer):
        """Divide every gradient by S, once per step, and note whether any is inf or NaN."""
        if not self.enabled or self._unscaled is optimizer:
            return
        inverse = 1.0 / self.scale_value
        grads = [p.grad for p in optimizer.params if p.grad is not None]
        all_finite = True
        for g in grads:
            g *= inverse
            all_finite = all_finite & backend.array_module(g).isfinite(g).all()  # on the device: no wait per weight
        # one wait for the GPU per step, here: whether to step is a decision the host has to make
        self._unscaled, self._found_inf = optimizer, not bool(all_finite)

    def step(self, optimizer):
        """optimizer.step() if every gradient is finite; returns whether it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self):
        """Adjust S from this step's gradients: backoff after an overflow, growth after a good run."""
        if not self.enabled:
            return
        if self._unscaled is None:
            raise RuntimeError("GradScaler.update() before step(): there is no step to learn from. "
                               "Fix: call scaler.step(optimizer), then scaler.update().")
        if self._found_inf:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.good_steps = 0
        self._unscaled = self._found_inf = None

    def state_dict(self):
        return {"scale": self.scale_value, "good_steps": self.good_steps}

    def load_state_dict(self, state):
        self.scale_value, self.good_steps = float(state["scale"]), int(state["good_steps"])


