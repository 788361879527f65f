"""GPT-2 small on one GPU: minilora (CuPy) against PyTorch eager + PEFT, side by side in one run.

Shape: 12 layers, d=768, 12 heads, vocab 50257, 1024 positions, B=8, T=512,
fp32 (TF32 off unless --tf32), dropout 0, AdamW (lr 1e-4).
A step is zero_grad + forward + cross-entropy + backward + AdamW.step.
--precision bf16|fp16 runs the forward and the loss under autocast on both
sides (minilora.amp.autocast, torch.autocast; fp16 with a GradScaler), with
PyTorch's SDPA attention, as a practitioner runs it; the weights stay fp32.

    full   full fine-tuning: every weight trains
    lora   LoRA r=8, alpha 16. minilora adapts q and v; PEFT adapts GPT-2's fused
           c_attn (q, k and v together), the usual PEFT recipe for GPT-2. With
           --half-base minilora keeps its frozen linear weights in bf16/fp16
           (PEFT's stay float32, cast by autocast at each step)
    fwd    inference forward latency (no_grad): the base model, LoRA unmerged
           (the extra low-rank products), LoRA merged (W0 + s B A: no extra cost)

The reference is transformers' GPT2LMHeadModel with eager attention. Each
side reports the median of --steps timed steps after --warmup, and its peak
memory: array memory in use (the CuPy pool's blocks handed out, PyTorch's
max_memory_allocated) from before the model is built to after three steps.

    python bench/bench_gpu_step.py [--mode full|lora|fwd|all] [--tf32] [--precision fp32|bf16|fp16] [--half-base]
                                   [--steps 10]
    python bench/bench_gpu_step.py --device cpu --layers 2 --seq 64   # check the script without a GPU
"""
import argparse
import os
import sys

import numpy as np
from steps import LOW_PRECISION, minilora_training_step
from timing import median_ms

LORA_R, LORA_ALPHA = 8, 16


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["full", "lora", "fwd", "all"], default="all")
    parser.add_argument("--tf32", action="store_true", help="let fp32 matmuls use TF32 tensor cores (both sides)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="bf16/fp16: autocast on both sides (fp16 with loss scaling), SDPA attention in PyTorch")
    parser.add_argument("--half-base", action="store_true",
                        help="lora with bf16/fp16: store minilora's frozen W0 in that dtype (minilora.amp.cast_frozen)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: NumPy against torch on the CPU")
    return parser.parse_args()


ARGS = parse_args()
# CuPy reads CUPY_TF32 once, when it is imported: set it first.
os.environ["CUPY_TF32"] = "1" if ARGS.tf32 else "0"

import torch  # noqa: E402

import minilora  # noqa: E402
from minilora import backend  # noqa: E402

SHAPE = dict(n_layer=ARGS.layers, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
TORCH_DEVICE = ARGS.device
if TORCH_DEVICE == "cuda":
    minilora.set_backend("cupy")
torch.backends.cuda.matmul.allow_tf32 = ARGS.tf32
torch.backends.cudnn.allow_tf32 = ARGS.tf32


def torch_sync():
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- minilora

def minilora_model(lora):
    from minilora.lora import LoraConfig, get_peft_model
    from minilora.models import GPT, GPTConfig

    model = GPT(GPTConfig(**SHAPE, dropout=0.0))
    if lora:
        model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q", "v"]))
        if ARGS.half_base and ARGS.precision != "fp32":
            from minilora import amp
            amp.cast_frozen(model, LOW_PRECISION[ARGS.precision])
    return model


def minilora_train(idx, targets, lora):
    """(peak bytes from build to 3 steps, step ms) for minilora."""
    state = {}

    def build_and_step():
        step, _ = minilora_training_step(minilora_model(lora), idx, targets, precision=ARGS.precision)
        for _ in range(3):
            step()
        state["step"] = step

    peak = backend.peak_bytes_allocated(build_and_step)
    return peak, median_ms(state["step"], ARGS.warmup, ARGS.steps, backend.synchronize)


def minilora_forward(idx):
    """Forward latency (ms) of the base model, LoRA unmerged and LoRA merged."""
    from minilora.autograd import no_grad
    from minilora.lora import LoraConfig, get_peft_model

    model = minilora_model(lora=False)

    def forward():
        with no_grad():
            model(idx)
    base = median_ms(forward, ARGS.warmup, ARGS.steps, backend.synchronize)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q", "v"]))
    unmerged = median_ms(forward, ARGS.warmup, ARGS.steps, backend.synchronize)
    model.merge_adapter()
    merged = median_ms(forward, ARGS.warmup, ARGS.steps, backend.synchronize)
    return base, unmerged, merged


# ---------------------------------------------------------------- PyTorch + PEFT

def torch_model(lora):
    import transformers

    config = transformers.GPT2Config(
        n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"], n_positions=SHAPE["block_size"],
        vocab_size=SHAPE["vocab_size"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    attention = "eager" if ARGS.precision == "fp32" else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention).to(TORCH_DEVICE)
    if lora:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True))
    return model


def torch_train(idx, targets, lora):
    """(peak bytes from build to 3 steps, step ms) for PyTorch eager (+ PEFT)."""
    import torch.nn.functional as F

    if TORCH_DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model = torch_model(lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    idx_t, targets_t = torch.from_numpy(idx).to(TORCH_DEVICE), torch.from_numpy(targets).to(TORCH_DEVICE)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ARGS.precision)
    scaler = torch.amp.GradScaler(TORCH_DEVICE, enabled=ARGS.precision == "fp16")

    def step():
        opt.zero_grad()
        with torch.autocast(TORCH_DEVICE, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(input_ids=idx_t).logits
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets_t.view(-1))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    for _ in range(3):
        step()
    torch_sync()
    peak = torch.cuda.max_memory_allocated() - before if TORCH_DEVICE == "cuda" else float("nan")
    return peak, median_ms(step, ARGS.warmup, ARGS.steps, torch_sync)


def torch_forward(idx):
    model = torch_model(lora=False)
    idx_t = torch.from_numpy(idx).to(TORCH_DEVICE)

    def forward():
        with torch.no_grad():
            model(input_ids=idx_t)
    base = median_ms(forward, ARGS.warmup, ARGS.steps, torch_sync)
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True))
    unmerged = median_ms(forward, ARGS.warmup, ARGS.steps, torch_sync)
    model.merge_adapter()
    merged = median_ms(forward, ARGS.warmup, ARGS.steps, torch_sync)
    return base, unmerged, merged


# ---------------------------------------------------------------- report

def gib(n):
    return n / 2**30


def main():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SHAPE["vocab_size"], size=(ARGS.batch, ARGS.seq), dtype=np.int64)  # (B, T)
    targets = rng.integers(0, SHAPE["vocab_size"], size=(ARGS.batch, ARGS.seq), dtype=np.int64)  # (B, T)
    gpu = torch.cuda.get_device_name() if TORCH_DEVICE == "cuda" else "CPU"
    print(f"GPT-2 shape {SHAPE}, B={ARGS.batch}, T={ARGS.seq}, {ARGS.precision}, TF32 {'on' if ARGS.tf32 else 'off'}, "
          f"AdamW; median of {ARGS.steps} after {ARGS.warmup} warmup; {gpu}")
    versions = f"minilora on {backend.get_backend()}, torch {torch.__version__}"
    if TORCH_DEVICE == "cuda":
        import cupy
        versions += f", cupy {cupy.__version__}"
    print(versions, flush=True)
    modes = ["full", "lora", "fwd"] if ARGS.mode == "all" else [ARGS.mode]
    print(f"{'':<34}{'minilora':>12}{'PyTorch':>12}{'ratio':>8}")
    for mode in modes:
        if mode in ("full", "lora"):
            name = "full fine-tuning" if mode == "full" else f"LoRA r={LORA_R} (q,v | PEFT c_attn)"
            our_peak, our_ms = minilora_train(idx, targets, lora=mode == "lora")
            their_peak, their_ms = torch_train(idx, targets, lora=mode == "lora")
            print(f"{name + ' step':<34}{our_ms:9.1f} ms{their_ms:9.1f} ms{our_ms / their_ms:8.2f}")
            print(f"{name + ' peak memory':<34}{gib(our_peak):8.2f} GiB{gib(their_peak):8.2f} GiB"
                  f"{our_peak / their_peak:8.2f}", flush=True)
        else:
            ours, theirs = minilora_forward(idx), torch_forward(idx)
            for label, a, b in zip(["base", "LoRA unmerged", "LoRA merged"], ours, theirs):
                print(f"{'forward, ' + label:<34}{a:9.1f} ms{b:9.1f} ms{a / b:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
