"""Claim 8 (Section 4.2): a LoRA training step is faster and holds less memory than a full fine-tuning step."""
import time

import numpy as np

from .. import backend, data
from ..lora import LoraConfig, get_peft_model
from ..models import GPT
from ..optim import AdamW
from .lab import median_iqr
from .plots import bars, new_figure, save

NAME = "cost"
TITLE = "Training is cheaper"
SOURCE = "Section 4.2"
PAPER = "GPT-3 175B: 25 % faster (43.1 vs 32.5 tokens/s per V100), training memory 1.2 TB → 350 GB"
METHODS = ("full fine-tuning", "LoRA r=8 (q, v)")


def jobs(lab):
    return []


def _trainer(model):
    """A function that runs one optimizer step on a batch. AdamW with lr=0 does all of a real step's work
    (gradients, moments, update) without moving a weight."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step(batch):
        optimizer.zero_grad()
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()
    return step


def measure(lab):
    """{"d": {method: {"step_ms": [one per repeat], "peak_bytes", "trainable"}}} at each width of the scale.

    Peak bytes: the weights plus the most that two steps allocate on top of them (gradients,
    AdamW's moments, activations). Step times: one step of each method per repeat, in alternating order.
    """
    backend.retain_host_memory()  # as fit does: freed activations stay mapped between steps
    result = {}
    for d in lab.scale.cost_widths:
        config = lab.scale.model(n_embd=d)
        models = {METHODS[0]: GPT(config),
                  METHODS[1]: get_peft_model(GPT(config), LoraConfig(r=8, lora_alpha=lab.scale.lora_alpha))}
        batch = data.random_rows(*lab.train_rows, lab.scale.batch_size, np.random.default_rng(0))
        out = {}
        for name, model in models.items():
            model.train()
            step = _trainer(model)
            weights = sum(p.data.nbytes for p in model.parameters())
            peak = weights + backend.peak_bytes_allocated(lambda: [step(batch) for _ in range(2)])  # the 2nd holds the moments
            out[name] = {"step": step, "step_ms": [], "peak_bytes": int(peak),
                         "trainable": sum(p.size for p in model.parameters() if p.requires_grad)}
        for rep in range(lab.scale.timing_repeats):
            for name in (METHODS if rep % 2 == 0 else METHODS[::-1]):
                start = time.perf_counter()
                out[name]["step"](batch)
                backend.synchronize()
                out[name]["step_ms"].append(1000 * (time.perf_counter() - start))
        result[str(d)] = {name: {k: v for k, v in m.items() if k != "step"} for name, m in out.items()}
    return result


def verdict(result):
    d = max(result, key=int)
    full, lora = result[d][METHODS[0]], result[d][METHODS[1]]
    (f, f_iqr), (l, l_iqr) = median_iqr(full["step_ms"]), median_iqr(lora["step_ms"])
    faster = f - l > f_iqr + l_iqr
    smaller = lora["peak_bytes"] < full["peak_bytes"]
    measured = (f"at d={d}: step {l:.0f} ms (LoRA) vs {f:.0f} ms (full), {100 * (f / l - 1):+.0f} % throughput; "
                f"peak memory {lora['peak_bytes'] / 1e6:.1f} MB vs {full['peak_bytes'] / 1e6:.1f} MB "
                f"(×{full['peak_bytes'] / lora['peak_bytes']:.2f} less)")
    why = []
    if not faster:
        why.append("LoRA's step is not faster beyond the spread: it skips W0's gradient and Adam update, but at "
                   "this width the step is dominated by attention, the MLP and Python overhead")
    if smaller and full["peak_bytes"] / lora["peak_bytes"] < 2:
        why.append("the memory saving is smaller than the paper's ×3.4: it saves gradients and two Adam moments per "
                   "weight, which at this size are small beside the activations of a batch")
    holds = "yes" if faster and smaller else ("partly" if faster or smaller else "no")
    return {"measured": measured, "holds": holds, "why": "; ".join(why)}


def plot(result, path):
    fig, (left, right) = new_figure(1, 2, width=11)
    widths = sorted(result, key=int)
    groups = [f"d={d}" for d in widths]
    bars(left, groups, [[result[d][m]["step_ms"] for m in METHODS] for d in widths], series=list(METHODS),
         colors=["tab:gray", "tab:blue"], log=True, stat=median_iqr)
    left.set_ylabel("ms per training step (log scale)")
    left.set_title("step time: median ± half the IQR of alternating repeats (dots)", fontsize=9)
    time_ratio = [[[median_iqr(result[d][METHODS[1]]["step_ms"])[0] / median_iqr(result[d][METHODS[0]]["step_ms"])[0]],
                   [result[d][METHODS[1]]["peak_bytes"] / result[d][METHODS[0]]["peak_bytes"]]] for d in widths]
    bars(right, groups, time_ratio, series=["step time", "peak memory"], colors=["tab:blue", "tab:purple"])
    right.axhline(1.0, color="black", linewidth=0.8)
    right.axhline(32.5 / 43.1, color="tab:blue", linestyle="--", linewidth=1, label="paper: step time (GPT-3)")
    right.axhline(350 / 1200, color="tab:purple", linestyle="--", linewidth=1, label="paper: memory (GPT-3)")
    right.set_ylim(0, max(1.2, max(v[0] for row in time_ratio for v in row) * 1.1))
    right.set_ylabel("LoRA ÷ full fine-tuning (1 = no saving)")
    right.set_title("LoRA ÷ full (peak: weights + the most a step allocates)", fontsize=9)
    right.legend(fontsize=8)
    fig.suptitle("Claim 8: the cost of a training step, LoRA r=8 (q, v) against full fine-tuning")
    save(fig, path)
