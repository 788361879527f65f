"""The fast paths: variants of reference ops that run in their place, registered with autograd.register_fast.

Each fast Function subclasses its reference in minilora.functional (the code
the docs derive), takes the same inputs and gives the same outputs and
gradients, in fewer passes over memory and with less kept for the backward.

On the GPU (CuPy), kernels for the memory-bound ops:

    softmax.py        FusedSoftmax                     one warp per row, max / sum / write
    attention.py      FusedScaledDotProductAttention   scale + causal mask + softmax in place; bf16/fp16: flash
    flash_attention.py                                 attention in bf16/fp16 that keeps no (T, S) scores
    layer_norm.py     FusedLayerNorm                   keeps mean and 1/std per row, not xhat
    gelu.py           FusedGeluTanh                    one elementwise kernel each way
    cross_entropy.py  FusedCrossEntropy                keeps log-sum-exp per row, not log-softmax
    linear.py         RowSumLinear                     the bias gradient as a cuBLAS matrix-vector product
                      BatchedMatMul                    batches of bf16 matrices through cuBLAS (backend.matmul)
    adamw.py          fused_adamw_update               AdamW's eleven array operations in one kernel
    dequantize.py     fused_dequantize_q4_1, _nf4      a 4-bit weight to float32 in one kernel (minilora.quant)

On the CPU (NumPy), only where it measurably pays (docs/performance.md):

    cpu.py            InPlaceGeluTanh, InPlaceScaledDotProductAttention   in one or two buffers, no temporaries

``Function.apply`` runs the variant registered for its inputs' backend;
``minilora.reference_ops()`` (or MINILORA_REFERENCE_OPS=1) turns them all off.
tests/test_fused.py (GPU) and tests/test_fused_cpu.py check every variant
against its reference and gradient-check it in float64. Importing this package needs no GPU; the
kernels compile on first use.
"""
from ..autograd import register_fast
from ..functional.attention import ScaledDotProductAttention
from ..functional.elementwise import GeluTanh
from ..functional.linalg import Linear, MatMul
from ..functional.norm import LayerNorm
from ..functional.softmax import CrossEntropy, Softmax
from ..optim import adamw_update
from ..quant import nf4, q4_1
from .adamw import fused_adamw_update
from .attention import FusedScaledDotProductAttention
from .cpu import InPlaceGeluTanh, InPlaceScaledDotProductAttention
from .cross_entropy import FusedCrossEntropy
from .dequantize import fused_dequantize_nf4, fused_dequantize_q4_1
from .gelu import FusedGeluTanh
from .layer_norm import FusedLayerNorm
from .linear import BatchedMatMul, RowSumLinear
from .softmax import FusedSoftmax

FUSED = {  # reference -> its CuPy variant
    Softmax: FusedSoftmax,
    ScaledDotProductAttention: FusedScaledDotProductAttention,
    LayerNorm: FusedLayerNorm,
    GeluTanh: FusedGeluTanh,
    CrossEntropy: FusedCrossEntropy,
    Linear: RowSumLinear,
    MatMul: BatchedMatMul,
    adamw_update: fused_adamw_update,
    q4_1.dequantize: fused_dequantize_q4_1,
    nf4.dequantize: fused_dequantize_nf4,
}
CPU = {  # reference -> its NumPy variant
    GeluTanh: InPlaceGeluTanh,
    ScaledDotProductAttention: InPlaceScaledDotProductAttention,
}
for _reference, _fast in FUSED.items():
    register_fast(_reference, _fast, "cupy")
for _reference, _fast in CPU.items():
    register_fast(_reference, _fast, "numpy")

__all__ = ["FUSED", "CPU", "InPlaceGeluTanh", "InPlaceScaledDotProductAttention", "FusedSoftmax", "FusedScaledDotProductAttention", "FusedLayerNorm", "FusedGeluTanh",
           "FusedCrossEntropy", "RowSumLinear", "BatchedMatMul", "fused_adamw_update",
           "fused_dequantize_q4_1", "fused_dequantize_nf4"]
