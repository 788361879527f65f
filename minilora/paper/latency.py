"""Claim 6 (Table 1): a merged adapter adds no inference latency; an unmerged one adds two thin matmuls."""
import math
import time

import numpy as np

from .. import backend
from ..autograd import no_grad
from ..lora import LoraConfig, get_peft_model
from ..models import GPT
from .lab import median_iqr
from .plots import bars, new_figure, save

NAME = "latency"
TITLE = "No added inference latency after merging"
SOURCE = "Table 1"
PAPER = "GPT-2 M, batch 1, T=128: fine-tuned or LoRA (merged) 19.8 ms; adapter layers +20.7 % to +30.3 %"
VARIANTS = ("base", "LoRA unmerged", "LoRA merged")
TOLERANCE = 0.05  # merged "adds nothing" when its median is within 5 % of the base's (or within their spread)


def jobs(lab):
    return []


def settings(lab):
    """(batch, sequence length) pairs: batch 1 and a batch, short and full-length sequences."""
    return [(b, t) for b in (1, 16) for t in (16, lab.scale.block_size)]


def _models(lab):
    """The pretrained GPT, the same with a LoRA r=8 adapter on q, v (unmerged), and a copy with it merged in."""
    base = GPT.from_pretrained(lab.base())
    adapted = []
    for _ in range(2):
        model = get_peft_model(GPT.from_pretrained(lab.base()), LoraConfig(r=8, lora_alpha=lab.scale.lora_alpha),
                               rng=backend.default_rng(0))
        rng = np.random.default_rng(1)  # B != 0, so merging really changes W (speed does not depend on the values)
        for p in (p for name, p in model.named_parameters() if "lora_B" in name):
            # In the model's dtype: a float64 B would make the merged W float64, and every pass through it slower.
            p.data = backend.asarray(rng.normal(0, 0.02, p.shape), dtype=p.data.dtype, like=p.data)
        adapted.append(model)
    return {"base": base, "LoRA unmerged": adapted[0], "LoRA merged": adapted[1].merge_and_unload()}


def _calls(model, idx, ms):
    """How many forward passes of ``model`` on ``idx`` take at least ``ms`` milliseconds (after a warm-up pass)."""
    model(idx)
    start = time.perf_counter()
    model(idx)
    backend.synchronize()
    return max(1, math.ceil(ms / (1000 * (time.perf_counter() - start))))


def measure(lab):
    """{"B=b, T=t": {variant: [ms per forward pass, one per repeat]}}: each repeat times every variant over
    enough passes to last scale.timing_ms, in an order that rotates from repeat to repeat, so that a slow
    spell of a busy machine hits every variant alike."""
    models = _models(lab)
    for model in models.values():
        model.eval()
    rng = np.random.default_rng(0)
    result = {}
    with no_grad():
        for b, t in settings(lab):
            idx = rng.integers(0, lab.tokenizer.vocab_size, size=(b, t))  # (B, T)
            times = {name: [] for name in VARIANTS}
            calls = max(_calls(model, idx, lab.scale.timing_ms) for model in models.values())
            for rep in range(lab.scale.timing_repeats):
                order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
                for name in order:
                    start = time.perf_counter()
                    for _ in range(calls):
                        models[name](idx)
                    backend.synchronize()
                    times[name].append(1000 * (time.perf_counter() - start) / calls)
            result[f"B={b}, T={t}"] = times
    return result


def verdict(result):
    merged, unmerged, ok = [], [], True
    for times in result.values():
        (base, base_iqr), (m, m_iqr), (u, _) = (median_iqr(times[name]) for name in ("base", "LoRA merged", "LoRA unmerged"))
        merged.append(m / base)
        unmerged.append(u / base)
        ok &= m - base <= max(TOLERANCE * base, base_iqr + m_iqr)
    measured = (f"merged / base: {min(merged):.2f}–{max(merged):.2f}; unmerged / base: {min(unmerged):.2f}–"
                f"{max(unmerged):.2f} (medians over {len(next(iter(result.values()))['base'])} alternating repeats, "
                f"{len(result)} shapes)")
    why = "" if ok else ("the merged model timed slower than the base beyond 5 % and the spread; it runs exactly the "
                         "base model's operations, so the gap is timing noise (see the load average in the header)")
    return {"measured": measured, "holds": "yes" if ok else "no", "why": why}


def plot(result, path):
    fig, (ax,) = new_figure(1, 1, width=9)
    groups = sorted(result, key=lambda g: [int(part.split("=")[1]) for part in g.split(", ")])  # "B=1, T=16" first
    bars(ax, groups, [[result[g][name] for name in VARIANTS] for g in groups], series=list(VARIANTS),
         colors=["tab:gray", "tab:orange", "tab:blue"], log=True, stat=median_iqr)
    ax.set_ylabel("ms per forward pass (log scale)")
    ax.set_title("Claim 6: inference latency, median and ± half the interquartile range of alternating repeats (dots)", fontsize=9)
    save(fig, path)


