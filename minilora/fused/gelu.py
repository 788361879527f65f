"""GPT-2's tanh gelu as two elementwise kernels: x (...) -> y (...).

The reference makes about ten passes over x (each NumPy operator is one); a
kernel reads x once and writes y once. The backward recomputes tanh(u) from x,
so only x is kept. The arithmetic is in acc_t<T> (float for bf16 and fp16).
"""
import numpy as np

from .. import backend
from ..functional.elementwise import GeluTanh
from ._cuda import compiled_kernel, fusable, launch_elements

SOURCE = r"""
// u = sqrt(2/pi) (x + 0.044715 x^3)
template <typename A> __device__ A gelu_u(A x) { return (A)0.7978845608028654 * (x + (A)0.044715 * x * x * x); }

template <typename T>
__global__ void gelu_tanh_forward(const T* x_in, T* y, long long n) {
    using A = acc_t<T>;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    A x = to_acc(x_in[i]);
    y[i] = from_acc<T>((A)0.5 * x * (1 + tanh(gelu_u(x))));
}

// dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  t = tanh(u),  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
template <typename T>
__global__ void gelu_tanh_backward(const T* x_in, const T* dy, T* dx, long long n) {
    using A = acc_t<T>;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    A x = to_acc(x_in[i]);
    A t = tanh(gelu_u(x));
    A du_dx = (A)0.7978845608028654 * (1 + (A)(3 * 0.044715) * x * x);
    dx[i] = from_acc<T>(to_acc(dy[i]) * ((A)0.5 * (1 + t) + (A)0.5 * x * (1 - t * t) * du_dx));
}
"""


class FusedGeluTanh(GeluTanh):
    """GeluTanh in one kernel each way; other dtypes take the reference path."""

    @staticmethod
    def runs_fused(x):
        return fusable(x)

    @staticmethod
    def forward(ctx, x):
        ctx.fused = FusedGeluTanh.runs_fused(x)
        if not ctx.fused:
            return GeluTanh.forward(ctx, x)
        cupy = backend.array_module(x)
        ctx.x = x = cupy.ascontiguousarray(x)
        y = cupy.empty_like(x)
        launch_elements(compiled_kernel(SOURCE, "gelu_tanh_forward", x.dtype), x.size, x, y, np.int64(x.size))
        return y

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fused:
            return GeluTanh.backward(ctx, grad)
        cupy = backend.array_module(grad)
        x = ctx.x
        grad = cupy.ascontiguousarray(grad, dtype=x.dtype)
        dx = cupy.empty_like(x)
        launch_elements(compiled_kernel(SOURCE, "gelu_tanh_backward", x.dtype), x.size, x, grad, dx, np.int64(x.size))
        return dx
