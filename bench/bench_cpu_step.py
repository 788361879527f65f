"""Time one training step of the classroom GPT in minilora (NumPy) and in PyTorch eager (+ PEFT), side by side.

Shape: 4 layers, d=128, 4 heads, T=64, B=32, vocab 96, fp32, AdamW, dropout 0.
A step is zero_grad + forward + cross-entropy + backward + AdamW.step.
Two kinds of step: full fine-tuning, and LoRA r=8 (alpha 16) on q and v
(minilora.lora against PEFT on the same PyTorch model; only A and B train).
Each side runs --warmup steps, then the median of --steps timed steps is printed.
Peak memory is measured apart, one fresh process per side and kind of step: the
most resident memory (Linux's VmHWM, reset after the imports) while it builds
the model and runs 3 steps, less what the process held after its imports.
(PyTorch's CPU tensors are not visible to tracemalloc, so both sides are
measured the same outside way.)

    python bench/bench_cpu_step.py [--steps 20] [--warmup 5] [--threads N] [--mode full|lora|both]
"""
import argparse
import math
import subprocess
import sys

import numpy as np
from steps import minilora_training_step
from timing import median_ms

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=96)
BATCH = 32


LORA = dict(r=8, lora_alpha=16, target_modules=["q", "v"])


def minilora_step(idx, targets, lora=False):
    from minilora.lora import LoraConfig, get_peft_model
    from minilora.models import GPT, GPTConfig

    model = GPT(GPTConfig(**SHAPE, dropout=0.0))
    if lora:
        model = get_peft_model(model, LoraConfig(**LORA))
    return minilora_training_step(model, idx, targets)[0]


def torch_step(idx, targets, lora=False):
    """The same GPT (pre-LN, separate q/k/v/o, tanh gelu, tied lm_head) in plain PyTorch; PEFT adds LoRA."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    C, H, T = SHAPE["n_embd"], SHAPE["n_head"], SHAPE["block_size"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.q, self.k, self.v, self.o = (nn.Linear(C, C) for _ in range(4))
            self.c_fc, self.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            h = self.ln_1(x)
            q, k, v = (p(h).view(B, T, H, C // H).transpose(1, 2) for p in (self.q, self.k, self.v))  # (B, H, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.o(y)
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(SHAPE["vocab_size"], C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(SHAPE["n_layer"]))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied lm_head
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    torch.manual_seed(0)
    model = GPT()
    if lora:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(**LORA, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    idx_t, targets_t = torch.from_numpy(idx), torch.from_numpy(targets)

    def step():
        opt.zero_grad()
        model(idx_t, targets_t).backward()
        opt.step()
    return step


def peak_resident_bytes(side, lora):
    """Run 3 steps of one side in a fresh process; the growth of its peak resident memory, in bytes."""
    command = [sys.executable, __file__, "--peak-of", side] + (["--mode", "lora"] if lora else ["--mode", "full"])
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def report_own_peak(side, lora):
    """The body of a --peak-of process: print how far 3 steps raise this process's peak resident memory."""
    import numpy  # noqa: F401  the imports' own memory is not the step's
    if side == "torch":
        import torch  # noqa: F401
    from minilora import backend
    backend.retain_host_memory()  # as in the timed run
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SHAPE["vocab_size"], size=(BATCH, SHAPE["block_size"]), dtype=np.int64)  # (B, T)
    targets = rng.integers(0, SHAPE["vocab_size"], size=(BATCH, SHAPE["block_size"]), dtype=np.int64)  # (B, T)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the high-water mark, which the imports raised
    before = resident_kib("VmRSS")
    step = (torch_step if side == "torch" else minilora_step)(idx, targets, lora)
    for _ in range(3):
        step()
    print(1024 * (resident_kib("VmHWM") - before))


def resident_kib(field):
    """VmRSS (resident now) or VmHWM (its high-water mark) of this process, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--mode", choices=["full", "lora", "both"], default="both", help="which kind of step")
    parser.add_argument("--peak-of", choices=["minilora", "torch"], help=argparse.SUPPRESS)  # the memory subprocess
    args = parser.parse_args()
    if args.peak_of:
        return report_own_peak(args.peak_of, args.mode == "lora")

    import torch

    from minilora import backend
    retained = backend.retain_host_memory()  # as train.fit does; process-wide, so PyTorch gets it too
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SHAPE["vocab_size"], size=(BATCH, SHAPE["block_size"]), dtype=np.int64)  # (B, T)
    targets = rng.integers(0, SHAPE["vocab_size"], size=(BATCH, SHAPE["block_size"]), dtype=np.int64)  # (B, T)

    print(f"classroom GPT {SHAPE}, B={BATCH}, fp32, AdamW; median of {args.steps} steps after {args.warmup} warmup")
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"freed host memory {'kept (backend.retain_host_memory)' if retained else 'returned to the kernel'}")
    print(f"{'step':<28}{'minilora (NumPy)':>18}{'PyTorch eager':>16}{'ratio':>8}")
    for lora in {"full": [False], "lora": [True], "both": [False, True]}[args.mode]:
        ours = median_ms(minilora_step(idx, targets, lora), args.warmup, args.steps)
        theirs = median_ms(torch_step(idx, targets, lora), args.warmup, args.steps)
        name = f"LoRA r={LORA['r']} on q, v (+PEFT)" if lora else "full fine-tuning"
        print(f"{name:<28}{ours:15.1f} ms{theirs:13.1f} ms{ours / theirs:8.2f}")
        assert math.isfinite(ours) and math.isfinite(theirs)
        our_peak, their_peak = peak_resident_bytes("minilora", lora), peak_resident_bytes("torch", lora)
        print(f"{'  peak memory':<28}{our_peak / 2**20:15.1f} MB{their_peak / 2**20:13.1f} MB{our_peak / their_peak:8.2f}", flush=True)


if __name__ == "__main__":
    main()
