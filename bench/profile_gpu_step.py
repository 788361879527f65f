"""Where a training step's GPU time goes, op by op: minilora's GPT-2 small step on CuPy.

Every Function's forward and backward is bracketed by two CUDA events, which
the GPU records when it reaches them in stream order, so the time between them
is that op's kernels plus any gap where the GPU waited for the host. The step
is read back once at the end. "AdamW.step" is the optimizer; "rest" is what no
event covers (zero_grad, the autograd engine's gradient sums).

When the host cannot queue kernels as fast as the GPU runs them (a "host
queued it in" time as long as the GPU's), those gaps fill the table. So it
first times a plain step both ways (how long the host takes to queue it, how
long until the GPU is done), and --kernels lists the GPU's own time per kernel,
read by torch.profiler (CUPTI sees CuPy's kernels too; needs torch).

    python bench/profile_gpu_step.py [--mode full|lora] [--precision fp32|bf16|fp16] [--half-base] [--kernels]
                                     [--tf32] [--layers 12]
"""
import argparse
import collections
import os
import time

import numpy as np

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--mode", choices=["full", "lora"], default="lora")
parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="bf16/fp16: the step of bench_gpu_step.py --precision, under minilora.amp.autocast")
parser.add_argument("--half-base", action="store_true", help="lora: the frozen W0 in the autocast dtype (cast_frozen)")
parser.add_argument("--kernels", action="store_true", help="also list GPU time per kernel (torch.profiler)")
parser.add_argument("--tf32", action="store_true")
parser.add_argument("--layers", type=int, default=12)
args = parser.parse_args()
os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"  # read once, when CuPy is imported

import cupy  # noqa: E402

import minilora  # noqa: E402
from minilora import amp, backend  # noqa: E402
from minilora.autograd import Function  # noqa: E402
from minilora.lora import LoraConfig, get_peft_model  # noqa: E402
from minilora.models import GPT, GPTConfig  # noqa: E402
from steps import LOW_PRECISION, minilora_training_step  # noqa: E402

minilora.set_backend("cupy")
spans = []  # (label, start event, end event)


def timed(label, fn):
    def wrapper(*a, **k):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        out = fn(*a, **k)
        end.record()
        spans.append((label, start, end))
        return out
    return wrapper


def all_functions(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_functions(sub)


model = GPT(GPTConfig(n_layer=args.layers, dropout=0.0))
if args.mode == "lora":
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"]))
    if args.half_base and args.precision != "fp32":
        amp.cast_frozen(model, LOW_PRECISION[args.precision])
rng = np.random.default_rng(0)
idx, targets = (rng.integers(0, 50257, size=(8, 512)) for _ in range(2))  # (B, T) each
step, opt = minilora_training_step(model, idx, targets, precision=args.precision)

for _ in range(3):
    step()
backend.synchronize()
queued, done = [], []
for _ in range(5):
    start = time.perf_counter()
    step()
    queued.append(time.perf_counter() - start)
    backend.synchronize()
    done.append(time.perf_counter() - start)
print(f"a plain step: the host queues it in {1000 * np.median(queued):.1f} ms, the GPU is done after "
      f"{1000 * np.median(done):.1f} ms (median of 5)")
if args.kernels:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as kernels:
        step()
        backend.synchronize()
    print(kernels.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
for fn in set(all_functions(Function)):
    if "forward" in vars(fn):
        fn.forward = staticmethod(timed(f"{fn.__name__}.forward", vars(fn)["forward"].__func__))
    if "backward" in vars(fn):
        fn.backward = staticmethod(timed(f"{fn.__name__}.backward", vars(fn)["backward"].__func__))
opt.step = timed("AdamW.step", opt.step)
backend.synchronize()
begin, finish = cupy.cuda.Event(), cupy.cuda.Event()
host_start = time.perf_counter()
begin.record()
step()
finish.record()
host_ms = 1000 * (time.perf_counter() - host_start)
finish.synchronize()
total = cupy.cuda.get_elapsed_time(begin, finish)
by_label = collections.defaultdict(lambda: [0, 0.0])
for label, start, end in spans:
    by_label[label][0] += 1
    by_label[label][1] += cupy.cuda.get_elapsed_time(start, end)
print(f"{args.mode} step, {args.precision}, {args.layers} layers, TF32 {'on' if args.tf32 else 'off'}: "
      f"GPU {total:.1f} ms, host queued it in {host_ms:.1f} ms")
print(f"{'op':<40}{'calls':>6}{'ms':>9}{'%':>7}")
for label, (calls, ms) in sorted(by_label.items(), key=lambda kv: -kv[1][1]):
    print(f"{label:<40}{calls:6d}{ms:9.2f}{100 * ms / total:7.1f}")
rest = total - sum(ms for _, ms in by_label.values())
print(f"{'rest':<40}{'':6}{rest:9.2f}{100 * rest / total:7.1f}")
