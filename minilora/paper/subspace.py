"""Claim 4 (Figures 3 and 4): the top directions of adapters of rank 8 and 64 coincide; those of two seeds beat chance."""
import numpy as np

from ..analysis import random_subspace_similarity, subspace_similarity
from .lab import Run, mean_spread, show
from .plots import heatmap, new_figure, save

NAME = "subspace"
TITLE = "The top directions of r=8 and r=64 adapters coincide"
SOURCE = "Figures 3–4"
PAPER = "GPT-3 layer 48: φ(A_r=8, A_r=64, 1, 1) > 0.5 for Wq and Wv; two seeds at r=64 share more than random matrices"
R8, R64 = Run(("q", "v"), 8), Run(("q", "v"), 64)


def seed_pair(lab):
    """The two seeds whose r=64 adapters are compared (Figure 4): the first two, or the first and the next."""
    return (lab.seeds[0], lab.seeds[1]) if len(lab.seeds) > 1 else (lab.seeds[0], lab.seeds[0] + 1)


def jobs(lab):
    return [(run, seed) for seed in lab.seeds for run in (R8, R64)] + [(R64, seed_pair(lab)[1])]


def measure(lab):
    """φ grids per adapted matrix: r=8 vs r=64 (mean over seeds), r=64 seed vs seed, and random Gaussian baselines.

    phi11: φ(1, 1), the overlap of the single top directions, per seed (mean over matrices).
    """
    per_seed = [{name: subspace_similarity(lab.adapter(R8, s)[name][1], lab.adapter(R64, s)[name][1])
                 for name in lab.adapter(R8, s)} for s in lab.seeds]
    names = list(per_seed[0])
    a, b = seed_pair(lab)
    pair = {name: subspace_similarity(lab.adapter(R64, a)[name][1], lab.adapter(R64, b)[name][1]) for name in names}
    k = lab.adapter(R8, a)[names[0]][1].shape[1]
    random_8_64, random_64_64 = random_subspace_similarity(8, 64, k, rng=0), random_subspace_similarity(64, 64, k, rng=1)
    return {
        "k": k, "seed_pair": [a, b],
        "r8_r64": {name: np.mean([grids[name] for grids in per_seed], axis=0).tolist() for name in names},
        "seeds_r64": {name: grid.tolist() for name, grid in pair.items()},
        "random_8_64": random_8_64.tolist(), "random_64_64": random_64_64.tolist(),
        "phi11_r8_r64": [float(np.mean([grids[name][0, 0] for name in names])) for grids in per_seed],
        "phi11_seeds": float(np.mean([pair[name][0, 0] for name in names])),
        "phi11_random": float(random_8_64[0, 0]), "phi11_random_expected": 1.0 / k,
    }


def verdict(result):
    top, _ = mean_spread(result["phi11_r8_r64"])
    chance = result["phi11_random_expected"]
    coincide, beats_chance = top > 0.5, result["phi11_seeds"] > 5 * chance
    measured = (f"φ(A_r=8, A_r=64, 1, 1) = {show(result['phi11_r8_r64'], 2)} (mean over Wq, Wv of every layer); "
                f"two seeds at r=64: φ(1, 1) = {result['phi11_seeds']:.2f}; random Gaussian: E φ(1, 1) = 1/k = {chance:.3f}")
    why = []
    if not coincide:
        why.append("the top directions overlap by less than 0.5, likely because a short run moves A little from "
                   "its random initialisation, which differs between the r=8 and the r=64 adapter")
    if not beats_chance:
        why.append("two seeds' top directions overlap no more than 5x chance")
    holds = "yes" if coincide and beats_chance else ("partly" if coincide or beats_chance else "no")
    return {"measured": measured, "holds": holds, "why": "; ".join(why)}


def plot(result, path):
    names = list(result["r8_r64"])
    a, b = result["seed_pair"]
    columns = [("r8_r64", "φ(A_r=8, A_r=64)"), ("random_8_64", "random 8 vs 64"),
               ("seeds_r64", f"φ(A_r=64 seed {a}, seed {b})"), ("random_64_64", "random 64 vs 64")]
    fig, axes = new_figure(len(names), len(columns), width=13, height=2.6 * len(names) + 0.6)
    for row, name in enumerate(names):
        for col, (key, title) in enumerate(columns):
            grid = result[key][name] if isinstance(result[key], dict) else result[key]
            image = heatmap(axes[row * len(columns) + col], grid, f"{name.removeprefix('blocks.')}: {title}"
                            if isinstance(result[key], dict) else f"baseline: {title} (k={result['k']})")
    fig.colorbar(image, ax=axes, label="φ(i, j): 1 = the top-i and top-j subspaces agree", shrink=0.6)
    fig.suptitle("Claim 4: subspace similarity of the right-singular vectors of A (Wq and Wv of each layer)")
    save(fig, path)
