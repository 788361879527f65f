"""Attention alone on one GPU, forward + backward of one layer: flash kernels against materialised ones, in one run.

Shapes: GPT-2 small's heads (H=12, D=64), causal, at T=512 (B=8) and T=2048
(B=2), in bfloat16 and float16. Four ways to compute the same thing:

    flash          minilora.fused.flash_attention: tiles of 64 queries x 64 keys,
                   online softmax, P recomputed from lse in the backward
    minilora fp32  what minilora runs today under autocast: q, k, v cast to float32,
                   FusedScaledDotProductAttention (cuBLAS q k^T, a row kernel for the
                   scaled, masked softmax, P v; P kept for the backward), the output
                   and the gradients cast back to the half dtype
    torch SDPA     torch.nn.functional.scaled_dot_product_attention, flash backend
    torch eager    q k^T in the half dtype, masked_fill, softmax in float32, P v:
                   transformers' eager attention under autocast

Time: the median of --steps calls after --warmup, each timed with CUDA events
around one forward + backward (dout given). Peak: the most array memory in use
during one call beyond what existed before it (the inputs and dout), the
returned gradients included: CuPy's pool (backend.peak_bytes_allocated) and
torch.cuda.max_memory_allocated.

    python bench/bench_attention_gpu.py [--steps 20] [--warmup 5]
"""
import argparse
import statistics
import sys

import numpy as np

SHAPES = [(8, 512), (2, 2048)]  # (B, T)
H, D = 12, 64


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed calls (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    return parser.parse_args()


def median_event_ms(fn, warmup, steps, new_event, elapsed_ms):
    """Median milliseconds of ``fn()`` over ``steps`` calls after ``warmup``, each between two CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(elapsed_ms(start, end))
    return statistics.median(times)


def minilora_cases(B, T, dtype_name, host):
    """{name: fwd+bwd callable} for the flash kernels and today's float32 path, on CuPy arrays."""
    import cupy

    from minilora.autograd import Context
    from minilora.fused.attention import FusedScaledDotProductAttention
    from minilora.fused.flash_attention import flash_attention_backward, flash_attention_forward

    dtype = half_dtype(dtype_name)
    q, k, v, dout = (cupy.asarray(a.astype(dtype)) for a in host)
    scale = D**-0.5

    def flash():
        out, lse = flash_attention_forward(q, k, v, scale, True)
        return out, flash_attention_backward(q, k, v, out, lse, dout, scale, True)

    def materialised():
        ctx = Context((True, True, True, False, False, False))
        q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
        out = FusedScaledDotProductAttention.forward(ctx, q32, k32, v32, None, scale, True).astype(dtype)
        grads = FusedScaledDotProductAttention.backward(ctx, dout.astype(np.float32))[:3]
        return out, [g.astype(dtype) for g in grads]
    return {"flash": flash, "minilora fp32": materialised}


def torch_cases(B, T, dtype_name, host):
    """{name: fwd+bwd callable} for torch's SDPA (flash backend) and its eager attention, in the half dtype."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    q, k, v, dout = (torch.from_numpy(a).to("cuda", dtype) for a in host)
    q, k, v = (a.requires_grad_() for a in (q, k, v))
    hidden = ~torch.ones(T, T, dtype=torch.bool, device="cuda").tril()
    scale = D**-0.5

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out, torch.autograd.grad(out, (q, k, v), dout)

    def eager():
        scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
        probs = torch.softmax(scores.masked_fill(hidden, float("-inf")).float(), dim=-1).to(dtype)
        out = probs @ v
        return out, torch.autograd.grad(out, (q, k, v), dout)
    return {"torch SDPA": sdpa, "torch eager": eager}


def half_dtype(name):
    if name == "float16":
        return np.dtype(np.float16)
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def measure_cupy(fn, args):
    import cupy

    from minilora import backend
    ms = median_event_ms(fn, args.warmup, args.steps, cupy.cuda.Event, cupy.cuda.get_elapsed_time)
    return ms, backend.peak_bytes_allocated(fn)


def measure_torch(fn, args):
    import torch
    ms = median_event_ms(fn, args.warmup, args.steps, lambda: torch.cuda.Event(enable_timing=True),
                         lambda start, end: start.elapsed_time(end))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return ms, torch.cuda.max_memory_allocated() - before


def main():
    import cupy
    import torch

    import minilora
    minilora.set_backend("cupy")
    args = parse_args()
    print(f"attention fwd+bwd per layer, H={H}, D={D}, causal; median of {args.steps} after {args.warmup} warmup; "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cupy {cupy.__version__}")
    names = ["flash", "minilora fp32", "torch SDPA", "torch eager"]
    print(f"{'shape':<22}{'':<9}" + "".join(f"{n:>15}" for n in names) + f"{'fp32/flash':>12}{'flash/SDPA':>12}")
    for B, T in SHAPES:
        rng = np.random.default_rng(0)
        host = [rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4)]  # q, k, v, dout
        for dtype_name in ["bfloat16", "float16"]:
            ours, theirs = minilora_cases(B, T, dtype_name, host), torch_cases(B, T, dtype_name, host)
            results = {name: measure_cupy(fn, args) for name, fn in ours.items()}
            results.update({name: measure_torch(fn, args) for name, fn in theirs.items()})
            flash_out = cupy.asnumpy(ours["flash"]()[0]).astype(np.float32)
            sdpa_out = theirs["torch SDPA"]()[0].detach().float().cpu().numpy()
            label = f"B={B} T={T} {dtype_name}"
            ms = [results[n][0] for n in names]
            mib = [results[n][1] / 2**20 for n in names]
            print(f"{label:<22}{'ms':<9}" + "".join(f"{x:15.3f}" for x in ms) + f"{ms[1] / ms[0]:12.2f}{ms[0] / ms[2]:12.2f}")
            print(f"{'':<22}{'peak MiB':<9}" + "".join(f"{x:15.1f}" for x in mib) + f"{mib[1] / mib[0]:12.2f}{mib[0] / mib[2]:12.2f}")
            print(f"{'':<22}max |flash out - SDPA out| = {np.abs(flash_out - sdpa_out).max():.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
