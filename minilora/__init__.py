"""minilora: LoRA from first principles, in NumPy (CuPy on a GPU)."""
from .autograd import Function, Tensor, is_grad_enabled, is_reference_ops, no_grad, reference_ops
from .backend import get_backend, get_default_dtype, set_backend, set_default_dtype, to_numpy
from . import functional
from . import fused  # registers the fast variants of the reference ops (reference_ops() turns them off)
from .gradcheck import GradcheckError, gradcheck

__version__ = "0.1.0"
__all__ = [
    "Tensor", "Function", "no_grad", "is_grad_enabled", "reference_ops", "is_reference_ops", "set_backend",
    "get_backend", "set_default_dtype", "get_default_dtype", "to_numpy", "functional", "gradcheck", "GradcheckError",
]
