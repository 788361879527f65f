"""Claim 5 (Table 7, Section 7.3): ΔW amplifies directions that W has but does not emphasise, strongly at low rank."""
import numpy as np

from ..analysis import projection_norms
from .lab import RANKS, Run, show
from .plots import error_line, new_figure, save

NAME = "amplification"
TITLE = "ΔW amplifies directions W does not emphasise"
SOURCE = "Table 7, Section 7.3"
PAPER = ("GPT-3 Wq, r=4: ‖UᵀWVᵀ‖ 0.32 for ΔW's directions vs 21.67 for W's own and 0.02 random, "
         "‖ΔW‖ 6.91: factor 21.5; about 2 at r=64")
KEYS = ("delta", "W", "random", "W_norm", "delta_norm", "factor")


def jobs(lab):
    return [(Run(("q", "v"), r), seed) for seed in lab.seeds for r in RANKS]


def measure(lab):
    """{rank: {key: [per seed, mean over the Wq of every layer]}} for the keys of analysis.projection_norms."""
    result = {}
    for r in RANKS:
        rows = []
        for seed in lab.seeds:
            adapters = lab.adapter(Run(("q", "v"), r), seed)
            table = [projection_norms(dw, W, r, rng=seed) for name, (dw, _, W) in adapters.items() if name.endswith(".q")]
            rows.append({key: float(np.mean([t[key] for t in table])) for key in KEYS})
        result[str(r)] = {key: [row[key] for row in rows] for key in KEYS}
    return result


def verdict(result):
    low, high = result["4"], result["64"]
    mean = {r: {key: float(np.mean(v)) for key, v in result[r].items()} for r in result}
    between = mean["4"]["random"] < mean["4"]["delta"] < mean["4"]["W"]
    falls = mean["4"]["factor"] > mean["64"]["factor"]
    measured = (f"r=4: ‖UᵀWVᵀ‖ {show(low['delta'], 2)} for ΔW's directions vs {show(low['W'], 2)} for W's own and "
                f"{show(low['random'], 2)} random, ‖ΔW‖ {show(low['delta_norm'], 2)}: factor {show(low['factor'])}; "
                f"r=64: factor {show(high['factor'])}")
    why = []
    if not between:
        why.append("ΔW's top directions are not between random and W's own in how much of W they hold")
    if not falls:
        why.append("the factor does not fall from r=4 to r=64")
    holds = "yes" if between and falls else ("partly" if between or falls else "no")
    return {"measured": measured, "holds": holds, "why": "; ".join(why)}


def plot(result, path):
    ranks = list(RANKS)
    fig, (left, right) = new_figure(1, 2, width=11)
    error_line(left, ranks, [result[str(r)]["factor"] for r in ranks], label="‖ΔW‖ / ‖UᵀWVᵀ‖ (U, V from ΔW)")
    left.set_yscale("log")  # from thousands at r = 1 to a few at r = 64
    left.set_ylabel("amplification factor (log scale)")
    left.set_title("amplification factor of Wq (mean over layers)", fontsize=9)
    for key, label in (("W", "U, V: W's own top-r"), ("delta", "U, V: ΔW's top-r"), ("random", "U, V: random"),
                       ("delta_norm", "‖ΔW‖_F (for scale)")):
        error_line(right, ranks, [result[str(r)][key] for r in ranks], label=label,
                   linestyle="--" if key == "delta_norm" else "-")
    right.set_yscale("log")
    right.set_ylabel("‖UᵀWVᵀ‖_F  (log scale)")
    right.set_title("how much of Wq lies in each top-r subspace", fontsize=9)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank r of the adapter (and of U, V)")
        ax.legend(fontsize=8)
    fig.suptitle("Claim 5: what ΔW amplifies (mean ± std over seeds)")
    save(fig, path)
