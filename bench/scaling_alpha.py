"""Does s = alpha / r or s = alpha / sqrt(r) keep the size of s B A x the same as r changes? Measured.

One d x k layer, h = W0 x + s B A x, trained towards a fixed random linear target (mean squared
error) with the same learning rate for every r. For each r and each scale it prints
RMS(s B A x) over the N training inputs, in four situations:

- init, B random: B ~ U(-1/sqrt(r), 1/sqrt(r)), PEFT's init_lora_weights=False (nn.Linear's
  default init of an (r -> d) layer); A ~ U(-1/sqrt(k), 1/sqrt(k)) as always;
- after 1 and after --steps steps of AdamW (weight decay 0) from the default init (B = 0);
- after 1 and after --steps steps of SGD from the default init.

A scale keeps the size stable where a row reads the same across r.

    python bench/scaling_alpha.py [--d 512] [--tokens 256] [--alpha 8] [--steps 10]
"""
import argparse
import math

import numpy as np

from minilora import Tensor, backend
from minilora.lora import lora_linear
from minilora.optim import SGD, AdamW

RANKS = (1, 4, 16, 64, 256)
SCALES = {"alpha / r": lambda alpha, r: alpha / r, "alpha / sqrt(r)": lambda alpha, r: alpha / math.sqrt(r)}


def rms(a):
    return float(np.sqrt(np.mean(a * a)))


def low_rank_output(x, A, B, s):
    """s B A x for every row of x: (N, k) -> (N, d)."""
    return s * (x @ A.T) @ B.T


def train(x, y, W0, A, B, s, make_optimizer, steps):
    """``steps`` steps on A and B; returns the RMS of s B A x after step 1 and after the last."""
    A, B = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
    x_t, W0_t = Tensor(x), Tensor(W0)
    optimizer, sizes = make_optimizer([A, B]), []
    for _ in range(steps):
        h = lora_linear(x_t, W0_t, None, A, B, s)  # (N, d)
        loss = ((h - Tensor(y)) ** 2).sum() / (2 * len(x))
        loss.backward()
        optimizer.step()
        A.zero_grad()
        B.zero_grad()
        sizes.append(rms(low_rank_output(x, A.data, B.data, s)))
    return sizes[0], sizes[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512, help="d = k, the layer's width")
    parser.add_argument("--tokens", type=int, default=256, help="N, the training inputs")
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--adam-lr", type=float, default=1e-3)
    parser.add_argument("--sgd-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    d = k = args.d
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.tokens, k))  # (N, k)
    W0 = rng.standard_normal((d, k)) / math.sqrt(k)  # RMS(W0 x) is about 1
    target = rng.standard_normal((d, k)) / math.sqrt(k)  # the update the task wants: as large as W0
    y = x @ (W0 + target).T  # (N, d)
    print(f"d = k = {d}, N = {args.tokens}, alpha = {args.alpha}, RMS(W0 x) = {rms(x @ W0.T):.3f}; "
          f"AdamW lr {args.adam_lr} (no weight decay), SGD lr {args.sgd_lr}. RMS(s B A x) for r =")
    print(f"{'':44s}" + "".join(f"{r:>10d}" for r in RANKS))
    with backend.using_default_dtype("float64"):
        for scale_name, scale in SCALES.items():
            rows = {name: [] for name in ("init, B random", "AdamW, step 1", f"AdamW, step {args.steps}",
                                          "SGD, step 1", f"SGD, step {args.steps}")}
            for r in RANKS:
                s = scale(args.alpha, r)
                draw = np.random.default_rng(args.seed + r)
                A = draw.uniform(-1, 1, (r, k)) / math.sqrt(k)  # (r, k), Kaiming-uniform as nn.Linear
                B_random = draw.uniform(-1, 1, (d, r)) / math.sqrt(r)  # (d, r), PEFT's init_lora_weights=False
                rows["init, B random"].append(rms(low_rank_output(x, A, B_random, s)))
                zero = np.zeros((d, r))
                first, last = train(x, y, W0, A, zero, s, lambda p: AdamW(p, lr=args.adam_lr, weight_decay=0.0), args.steps)
                rows["AdamW, step 1"].append(first)
                rows[f"AdamW, step {args.steps}"].append(last)
                first, last = train(x, y, W0, A, zero, s, lambda p: SGD(p, lr=args.sgd_lr), args.steps)
                rows["SGD, step 1"].append(first)
                rows[f"SGD, step {args.steps}"].append(last)
            for name, sizes in rows.items():
                print(f"{'s = ' + scale_name + ', ' + name:44s}" + "".join(f"{v:10.3g}" for v in sizes))


if __name__ == "__main__":
    main()
