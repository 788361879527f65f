"""Fused CuPy kernels for the memory-bound ops, used automatically for arrays on the GPU.

Each fused Function takes the same inputs and gives the same outputs and
gradients as its reference in minilora.functional (the code the docs derive),
in fewer passes over memory and with less kept for the backward:

    softmax.py        FusedSoftmax                     one warp per row, max / sum / write
    attention.py      FusedScaledDotProductAttention   scale + causal mask + softmax in place
    layer_norm.py     FusedLayerNorm                   keeps mean and 1/std per row, not xhat
    gelu.py           FusedGeluTanh                    one ElementwiseKernel each way
    cross_entropy.py  FusedCrossEntropy                keeps log-sum-exp per row, not log-softmax
    scatter.py        scatter_add_rows                 the Embedding backward, deterministic, no host wait
    adamw.py          fused_adamw_update               AdamW's eleven array operations in one kernel

``backend.fused_or_reference(Reference, array)`` picks the fused Function (or function) for
CuPy arrays and the reference for NumPy ones. tests/test_fused.py checks every
fused Function against its reference on the GPU, and gradient-checks it in
float64. Importing this package needs no GPU; the kernels compile on first use.
"""
from ..functional.attention import ScaledDotProductAttention
from ..functional.elementwise import GeluTanh
from ..functional.norm import LayerNorm
from ..functional.softmax import CrossEntropy, Softmax
from ..optim import adamw_update
from .adamw import fused_adamw_update
from .attention import FusedScaledDotProductAttention
from .cross_entropy import FusedCrossEntropy
from .gelu import FusedGeluTanh
from .layer_norm import FusedLayerNorm
from .scatter import scatter_add_rows
from .softmax import FusedSoftmax

FUSED = {
    Softmax: FusedSoftmax,
    ScaledDotProductAttention: FusedScaledDotProductAttention,
    LayerNorm: FusedLayerNorm,
    GeluTanh: FusedGeluTanh,
    CrossEntropy: FusedCrossEntropy,
    adamw_update: fused_adamw_update,
}

__all__ = ["FUSED", "FusedSoftmax", "FusedScaledDotProductAttention", "FusedLayerNorm", "FusedGeluTanh",
           "FusedCrossEntropy", "fused_adamw_update", "scatter_add_rows"]
