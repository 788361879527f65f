"""What the 4-bit base costs and saves on the CPU, on SmolLM2-135M-Instruct's own GGUF file.

Memory: the 210 projections' weights as float32 and as stored (base_memory),
and the bytes the loaded model actually holds (tracemalloc after from_gguf,
NumPy reports every array to it). Speed: one dequantization pass over all 210
projections, and a LoRA training step (r=8 on q_proj, v_proj, AdamW) with the
float32 base against the Q4_1 and the NF4 base, which dequantize every
projection twice per step (forward, backward).

    python bench/bench_quant_cpu.py [--gguf PATH] [--batch 1] [--seq 64] [--steps 5]
    python bench/bench_quant_cpu.py --random   # no file: random weights of the same shape, quantized by quantize_base
"""
import argparse
import gc
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from steps import minilora_training_step  # noqa: E402
from timing import median_ms  # noqa: E402

from minilora.lora import LoraConfig, get_peft_model  # noqa: E402
from minilora.models import Llama, LlamaConfig  # noqa: E402
from minilora.quant import QuantizedLinear, base_memory, quantize_base  # noqa: E402

DEFAULT = Path(os.environ.get("MINILORA_CACHE") or Path.home() / ".cache" / "minilora") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(DEFAULT), help="the model file (tests/smollm2.py fetches it)")
    parser.add_argument("--random", action="store_true", help="random weights with SmolLM2-135M's config instead of the file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    return parser.parse_args()


def load(args, format):
    """(model, bytes its arrays hold) for the float32 model (format None) or a 4-bit base."""
    gc.collect()
    tracemalloc.start()
    if args.random:
        model = Llama(LlamaConfig()).eval()
        if format:
            model = quantize_base(model, format)
    else:
        model = Llama.from_gguf(args.gguf, dtype="float32", quantized=format)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return model, held


def main():
    args = parse_args()
    rng = np.random.default_rng(0)
    source = "random weights, LlamaConfig()" if args.random else args.gguf
    print(f"SmolLM2-135M-Instruct ({source}), LoRA r=8 on q_proj, v_proj, B={args.batch}, T={args.seq}, "
          f"fp32, AdamW; median of {args.steps} steps after {args.warmup}; NumPy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"{'base':<8}{'projections':>14}{'model holds':>14}{'dequantize all':>16}{'LoRA step':>12}{'vs float32':>12}")
    float_ms = None
    for format in (None, "q4_1", "nf4"):
        model, held = load(args, format)
        idx = rng.integers(0, model.config.vocab_size, (args.batch, args.seq))
        targets = rng.integers(0, model.config.vocab_size, (args.batch, args.seq))
        layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
        memory = base_memory(model)
        projections = memory["quantized_bytes"] if format else sum(
            4 * m.weight.size for name, m in model.named_modules() if name.endswith("_proj"))
        dequantize_ms = median_ms(lambda: [m.dequantize() for m in layers], 1, args.steps) if layers else 0.0
        model = get_peft_model(model.train(), LoraConfig(r=8, lora_alpha=16), rng=np.random.default_rng(0))
        step, _ = minilora_training_step(model, idx, targets)
        step_ms = median_ms(step, args.warmup, args.steps)
        float_ms = float_ms or step_ms
        print(f"{format or 'float32':<8}{projections / 2**20:11.1f} MiB{held / 2**20:11.1f} MiB{dequantize_ms:13.0f} ms"
              f"{step_ms:9.0f} ms{step_ms / float_ms:11.2f}x", flush=True)
        del model, step


if __name__ == "__main__":
    main()
