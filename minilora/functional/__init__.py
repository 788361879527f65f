"""Differentiable ops, like ``torch.nn.functional``: each one a Function with a hand-written backward.

    import minilora.functional as F
    F.softmax(x, axis=-1)

Axis arguments are called ``axis`` as in NumPy (PyTorch says ``dim``).
"""
from .attention import ScaledDotProductAttention, scaled_dot_product_attention
from .elementwise import (
    Add, Div, Exp, GeluErf, GeluTanh, Log, Mul, Neg, Pow, ReLU, Sigmoid, SiLU, Sqrt, Sub, Tanh,
    add, div, erf, exp, gelu, log, mul, neg, pow, relu, sigmoid, silu, sqrt, sub, tanh,
)
from .embedding import Dropout, Embedding, dropout, embedding
from .linalg import Linear, MatMul, linear, matmul
from .norm import LayerNorm, RMSNorm, layer_norm, rms_norm
from .repeat import RepeatInterleave, repeat_interleave
from .rope import RoPE, rope
from .reduce import Max, Mean, Sum, Var, max, mean, sum, var
from .shape import (
    Concatenate, GetItem, Permute, Reshape, Where,
    concatenate, getitem, masked_fill, permute, reshape, split, transpose, where,
)
from .softmax import CrossEntropy, LogSoftmax, Softmax, cross_entropy, ids_array, log_softmax, softmax

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "silu",
    "gelu", "matmul", "linear", "sum", "mean", "max", "var",
    "reshape", "permute", "transpose", "getitem", "concatenate", "split", "where", "masked_fill",
    "softmax", "log_softmax", "cross_entropy", "layer_norm", "rms_norm", "embedding", "dropout",
    "scaled_dot_product_attention", "erf", "rope", "repeat_interleave",
]
