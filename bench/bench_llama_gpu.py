"""SmolLM2-135M's shape on one GPU: LoRA on a float32 and on a 4-bit base (minilora, CuPy) against PyTorch + PEFT.

Shape: LlamaConfig() = SmolLM2-135M (30 layers, d=576, GQA 9/3 heads, SwiGLU 1536,
vocab 49152, tied embeddings). Random weights with that exact config: the device
has no network and the 98 MB GGUF is over what a run may carry, and the speed of
a step does not depend on the values. B=8, T=512, fp32 (TF32 off), AdamW (lr 1e-4)
on LoRA r=8, alpha 16, on q_proj and v_proj (PEFT's default for llama), dropout 0.
A step is zero_grad + forward + cross-entropy + backward + AdamW.step.

    minilora float32     Llama on CuPy, W0 float32
    minilora q4_1 / nf4  every projection a QuantizedLinear (minilora.quant): W0
                         dequantized by a CuPy kernel in forward and again in backward
    PyTorch eager / sdpa transformers' LlamaForCausalLM + PEFT, attn_implementation

Each reports the median of --steps timed steps after --warmup, and its peak
memory: array memory in use (CuPy pool blocks handed out; torch
max_memory_allocated) from moving the built model to the GPU to after three
steps. Also: the time of one dequantization pass over all 210 projections.

    python bench/bench_llama_gpu.py [--steps 10] [--json out.jsonl]
    python bench/bench_llama_gpu.py --device cpu --tiny   # check the script without a GPU
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from steps import minilora_training_step  # noqa: E402
from timing import median_ms  # noqa: E402

LORA_R, LORA_ALPHA, TARGETS = 8, 16, ["q_proj", "v_proj"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: NumPy against torch on the CPU")
    parser.add_argument("--tiny", action="store_true", help="2 layers, d=64: to check the script quickly")
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (e.g. 'minilora q4_1')")
    parser.add_argument("--json", default=None, help="append each row as a JSON line to this file")
    return parser.parse_args()


ARGS = parse_args()
os.environ["CUPY_TF32"] = "0"  # CuPy reads it once, when imported

import torch  # noqa: E402

import minilora  # noqa: E402
from minilora import backend  # noqa: E402
from minilora.models import Llama, LlamaConfig  # noqa: E402

CONFIG = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512) if ARGS.tiny else LlamaConfig()
TORCH_DEVICE = ARGS.device
BACKEND = "cupy" if TORCH_DEVICE == "cuda" else "numpy"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def torch_sync():
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


def report(row):
    line = (f"{row['name']:<22}{row['step_ms']:9.1f} ms{row['peak_bytes'] / 2**30:9.2f} GiB"
            + (f"   dequantize all: {row['dequantize_ms']:.2f} ms" if "dequantize_ms" in row else ""))
    print(line, flush=True)
    if ARGS.json:
        with open(ARGS.json, "a") as f:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- minilora

def minilora_row(idx, targets, format):
    """Build on the host (float, then 4-bit), move to the GPU, train; (peak bytes, step ms, dequantize ms)."""
    from minilora.lora import LoraConfig, get_peft_model
    from minilora.quant import QuantizedLinear, base_memory, quantize_base

    with backend.using_backend("numpy"):
        model = Llama(CONFIG)
        if format:
            model = quantize_base(model, format)
        model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=TARGETS))
    idx, targets = backend.asarray(idx), backend.asarray(targets)
    state = {}

    def move_and_step():
        model.to(BACKEND)
        step, _ = minilora_training_step(model, idx, targets)
        for _ in range(3):
            step()
        state["step"] = step

    peak = backend.peak_bytes_allocated(move_and_step)
    row = {"name": f"minilora {format or 'float32'}", "peak_bytes": int(peak),
           "step_ms": median_ms(state["step"], ARGS.warmup, ARGS.steps, backend.synchronize)}
    if format:
        layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
        row["dequantize_ms"] = median_ms(lambda: [m.dequantize() for m in layers], 2, ARGS.steps, backend.synchronize)
        row.update(base_memory(model))
    return row


# ---------------------------------------------------------------- PyTorch + PEFT

def torch_row(idx, targets, attention):
    import peft
    import torch.nn.functional as F
    import transformers

    c = CONFIG
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.config._attn_implementation = attention
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=TARGETS, lora_dropout=0.0))
    if TORCH_DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model.to(TORCH_DEVICE)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    idx_t, targets_t = torch.from_numpy(idx).to(TORCH_DEVICE), torch.from_numpy(targets).to(TORCH_DEVICE)

    def step():
        opt.zero_grad()
        logits = model(input_ids=idx_t).logits
        F.cross_entropy(logits.view(-1, logits.shape[-1]), targets_t.view(-1)).backward()
        opt.step()
    for _ in range(3):
        step()
    torch_sync()
    peak = torch.cuda.max_memory_allocated() - before if TORCH_DEVICE == "cuda" else float("nan")
    row = {"name": f"PyTorch+PEFT {attention}", "peak_bytes": peak, "step_ms": median_ms(step, ARGS.warmup, ARGS.steps, torch_sync)}
    del model, opt
    return row


def main():
    minilora.set_backend(BACKEND)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CONFIG.vocab_size, size=(ARGS.batch, ARGS.seq), dtype=np.int64)  # (B, T)
    targets = rng.integers(0, CONFIG.vocab_size, size=(ARGS.batch, ARGS.seq), dtype=np.int64)  # (B, T)
    gpu = torch.cuda.get_device_name() if TORCH_DEVICE == "cuda" else "CPU"
    print(f"SmolLM2-135M shape{' (tiny)' if ARGS.tiny else ''}, random weights, B={ARGS.batch}, T={ARGS.seq}, fp32, "
          f"TF32 off, LoRA r={LORA_R} on {TARGETS}, AdamW; median of {ARGS.steps} after {ARGS.warmup}; {gpu}")
    versions = f"minilora on {BACKEND}, torch {torch.__version__}"
    if TORCH_DEVICE == "cuda":
        import cupy
        import peft
        import transformers
        versions += f", cupy {cupy.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    print(versions, flush=True)
    rows = {}
    plan = [("minilora float32", lambda: minilora_row(idx, targets, None)),
            ("minilora q4_1", lambda: minilora_row(idx, targets, "q4_1")),
            ("minilora nf4", lambda: minilora_row(idx, targets, "nf4")),
            ("PyTorch+PEFT eager", lambda: torch_row(idx, targets, "eager")),
            ("PyTorch+PEFT sdpa", lambda: torch_row(idx, targets, "sdpa"))]
    print(f"{'':<22}{'step':>12}{'peak':>13}")
    for name, run in plan:
        if ARGS.only and name not in ARGS.only:
            continue
        try:
            rows[name] = run()
        except Exception as error:  # one failing row must not lose the others (a run on the device is costly)
            print(f"{name:<22}failed: {type(error).__name__}: {error}", flush=True)
            continue
        report(rows[name])
        if BACKEND == "cupy":
            import cupy
            cupy.get_default_memory_pool().free_all_blocks()
    for ours in [n for n in rows if n.startswith("minilora")]:
        for theirs in [n for n in rows if n.startswith("PyTorch")]:
            a, b = rows[ours], rows[theirs]
            print(f"{ours} / {theirs}: step {a['step_ms'] / b['step_ms']:.2f}x, peak {a['peak_bytes'] / b['peak_bytes']:.2f}x")
    if "minilora float32" in rows:
        for fmt in ("q4_1", "nf4"):
            if f"minilora {fmt}" in rows:
                q, f = rows[f"minilora {fmt}"], rows["minilora float32"]
                print(f"minilora {fmt} / float32: step {q['step_ms'] / f['step_ms']:.2f}x, peak {q['peak_bytes'] / f['peak_bytes']:.2f}x, "
                      f"base {q['quantized_bytes'] / 2**20:.1f} MiB vs {q['float32_bytes'] / 2**20:.1f} MiB float32")


if __name__ == "__main__":
    main()
