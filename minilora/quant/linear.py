"""A frozen Linear whose weight stays in 4-bit blocks (QLoRA's frozen base), and the ops that use it.

    QuantizedLinear(...)(x)  x (..., in) -> (..., out), y = x W0^T + b

W0 (out, in) is never kept in float: the forward dequantizes it, uses it once
and drops it; the backward dequantizes it again for dx = dy W0. So a model holds
one float layer at a time, and only for the length of one op. W0 gets no
gradient (it is not a Tensor), so LoRA's A and B are what trains (LoRALinear
wraps a QuantizedLinear as it wraps a Linear: lora/layer.py).

The blocks are frozen Parameters (requires_grad False), as bitsandbytes keeps
its 4-bit weight: model.to("cupy") moves them, state_dict() saves them.
    qweight (out, in // 2) uint8        two 4-bit codes a byte (quant/blocks.py)
    scales  (out, in // block)          Q4_1: d, float16; NF4: absmax, float32
    mins    (out, in // block) float16  Q4_1 only: m
"""
import numpy as np

from .. import backend
from ..autograd import fast_or_reference
from ..functional.linalg import Linear as LinearFunction
from ..lora.function import LoRALinearFunction
from ..nn import Linear, Module, Parameter
from . import nf4, q4_1

FORMATS = {"q4_1": q4_1, "nf4": nf4}


def check_format(format, where):
    if format not in FORMATS:
        raise ValueError(f"{where}: unknown 4-bit format {format!r}. Fix: choose one of {sorted(FORMATS)}.")
    return FORMATS[format]


class QuantizedLinear(Linear):
    """y = x W0^T + b with W0 (out, in) in 4-bit blocks of ``format`` ("q4_1" or "nf4"); frozen.

    A Linear (as bitsandbytes' Linear4bit is a torch Linear), so LoRA's target_modules
    find it; but ``weight`` is None: there is no float W0 to share, merge into or
    train; ``dequantize()`` makes one for one use.
    """

    weight = None

    def __init__(self, format, qweight, scales, mins=None, bias=None, dtype=None):
        Module.__init__(self)  # not Linear's: it would draw a float weight only to drop it
        self.format = format
        module = check_format(format, "QuantizedLinear")
        rows, half = qweight.shape
        self.out_features, self.in_features = rows, 2 * half
        if scales.shape != (rows, self.in_features // module.BLOCK) or (format == "q4_1") != (mins is not None) \
                or (mins is not None and mins.shape != scales.shape):
            raise ValueError(
                f"QuantizedLinear({format!r}): qweight {tuple(qweight.shape)} needs scales of shape "
                f"{(rows, self.in_features // module.BLOCK)}{' and mins of the same shape' if format == 'q4_1' else ' and no mins'}, "
                f"got scales {tuple(scales.shape)}, mins {None if mins is None else tuple(mins.shape)}. Fix: pass what quantize() returned."
            )
        self.dtype = np.dtype(dtype or backend.get_default_dtype())  # what W0 dequantizes to
        self.qweight = Parameter(qweight, requires_grad=False)
        self.scales = Parameter(scales, requires_grad=False)
        self.mins = None if mins is None else Parameter(mins, requires_grad=False)
        self.bias = bias

    @classmethod
    def from_weight(cls, w, format, bias=None, dtype=None):
        """Quantize the float array ``w`` (out, in) into ``format`` on the host; the blocks go on w's backend."""
        module = check_format(format, "QuantizedLinear.from_weight")
        blocks = module.quantize(backend.to_numpy(w))  # (codes, d, m) or (codes, absmax)
        codes, scales, *mins = (backend.asarray(a, like=w) for a in blocks)
        return cls(format, codes, scales, mins[0] if mins else None, bias=bias, dtype=dtype or w.dtype)

    @classmethod
    def from_linear(cls, linear, format):
        """``linear`` with its weight quantized into ``format``; the bias, if any, stays float and frozen."""
        check_format(format, "QuantizedLinear.from_linear")
        if linear.bias is not None:
            linear.bias.requires_grad_(False)
        return cls.from_weight(linear.weight.data, format, bias=linear.bias)

    def dequantize(self, dtype=None):
        """W0 (out, in) in ``dtype`` (default: self.dtype), on the blocks' backend. On the GPU: one kernel (fused/dequantize.py)."""
        dequantize = fast_or_reference(FORMATS[self.format].dequantize, self.qweight.data)
        blocks = (self.qweight.data, self.scales.data) + (() if self.mins is None else (self.mins.data,))
        return dequantize(*blocks).astype(dtype or self.dtype, copy=False)

    def nbytes(self):
        """Bytes of the 4-bit weight: codes, scales and minimums (not the bias)."""
        return sum(int(p.data.nbytes) for p in (self.qweight, self.scales, self.mins) if p is not None)

    def forward(self, x):
        return QuantizedLinearFunction.apply(x, self, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, bias={self.bias is not None}"


def check_blocks_backend(op_name, x, quantized):
    """The 4-bit blocks are no Tensor input, so apply() does not see them: a model left on the CPU fails here, by name."""
    backend.check_same_backend(op_name, [x, quantized.qweight.data])


class QuantizedLinearFunction(LinearFunction):
    """Linear (functional/linalg.py) on a 4-bit weight. Inputs: x (..., in), a QuantizedLinear, bias (out,) or None.

    ctx keeps: x and the QuantizedLinear, not W0. Backward: Linear's, with W0 dequantized again (dx = dy W0).
    """

    @staticmethod
    def forward(ctx, x, quantized, bias=None):
        check_blocks_backend("QuantizedLinear", x, quantized)
        y = LinearFunction.forward(ctx, x, quantized.dequantize(x.dtype), bias)  # (..., out)
        ctx.weight = quantized  # the float W0 dies here; backward makes it again
        return y

    @staticmethod
    def backward(ctx, dy):
        quantized = ctx.weight
        ctx.weight = quantized.dequantize(dy.dtype)  # (out, in), for this backward only
        try:
            return LinearFunction.backward(ctx, dy)  # the weight's gradient is None: it is not a Tensor
        finally:
            ctx.weight = quantized


class QuantizedLoRALinearFunction(LoRALinearFunction):
    """lora_linear (lora/function.py) over a 4-bit W0: h = x W0^T + b + s (x A^T) B^T.

    Inputs as LoRALinearFunction's, with a QuantizedLinear in W0's place. ctx keeps
    what LoRALinearFunction keeps, except W0: backward dequantizes it again for dx.
    """

    @staticmethod
    def forward(ctx, x, quantized, b, A, B, scaling, dropout_mask=None):
        check_blocks_backend("quantized_lora_linear", x, quantized)
        h = LoRALinearFunction.forward(ctx, x, quantized.dequantize(x.dtype), b, A, B, scaling, dropout_mask)
        ctx.W0 = quantized  # (..., d) is computed; the float W0 dies here
        return h

    @staticmethod
    def backward(ctx, dh):
        quantized = ctx.W0
        ctx.W0 = quantized.dequantize(dh.dtype) if ctx.needs_input_grad[0] else None  # only dx needs W0
        try:
            return LoRALinearFunction.backward(ctx, dh)
        finally:
            ctx.W0 = quantized


def quantized_lora_linear(x, quantized, b, A, B, scaling, dropout_mask=None):
    """lora_linear with a QuantizedLinear as the frozen W0; see QuantizedLoRALinearFunction."""
    d, k = quantized.out_features, quantized.in_features
    if x.shape[-1] != k or A.ndim != 2 or A.shape[1] != k or B.shape != (d, A.shape[0]):
        raise ValueError(
            f"quantized_lora_linear: shapes do not fit h = x W0^T + s (x A^T) B^T: x {tuple(x.shape)}, "
            f"W0 ({d}, {k}) in 4 bits, A {tuple(A.shape)}, B {tuple(B.shape)}. Need x (..., k), A (r, k), B (d, r)."
        )
    return QuantizedLoRALinearFunction.apply(x, quantized, b, A, B, scaling, dropout_mask=dropout_mask)
