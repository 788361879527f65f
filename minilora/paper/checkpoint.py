"""Claim 7 (Section 4.2): an adapter file is a tiny fraction of a full checkpoint, and the ratio grows with d."""
import os

from ..lora import LoraConfig, get_peft_model
from ..models import GPT
from .plots import new_figure, save

NAME = "checkpoint"
TITLE = "The checkpoint shrinks"
SOURCE = "Section 4.2"
PAPER = "GPT-3 175B, r=4 on Wq, Wv: 35 MB instead of 350 GB (about 10,000 times smaller)"
CONFIG = LoraConfig(r=4, lora_alpha=4, target_modules=["q", "v"])  # the paper's GPT-3 adapter
# GPT-3 175B: 96 layers, d = 12,288, fp16. Adapter: 2 L̂ d r values with L̂ = 96 layers x 2 matrices.
GPT3 = {"parameters": 175e9, "n_layer": 96, "n_embd": 12288, "bytes_per_value": 2}


def jobs(lab):
    return []


def measure(lab):
    """Adapter and full-checkpoint bytes at each width (what the files must hold), the files on disk at the
    experiments' width, and the formula at GPT-3's shape."""
    widths = {}
    for d in lab.scale.checkpoint_widths:
        lora = get_peft_model(GPT(lab.scale.model(n_embd=d)), CONFIG)
        widths[str(d)] = lora.adapter_size()
    folder = os.path.join(lab.out, "claims", "checkpoint_files")
    lora = get_peft_model(GPT.from_pretrained(lab.base()), CONFIG)
    lora.save_pretrained(folder)
    files = {"adapter_bytes": os.path.getsize(os.path.join(folder, "adapter_model.safetensors")),
             "full_bytes": os.path.getsize(os.path.join(lab.base(), "model.safetensors")), "n_embd": lab.scale.n_embd}
    g = GPT3
    adapter = 2 * (g["n_layer"] * 2) * g["n_embd"] * CONFIG.r * g["bytes_per_value"]  # 2 L̂ d r values
    full = g["parameters"] * g["bytes_per_value"]
    gpt3 = {"adapter_bytes": adapter, "full_bytes": full, "ratio": full / adapter}
    return {"n_layer": lab.scale.n_layer, "widths": widths, "files": files, "gpt3": gpt3}


def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def verdict(result):
    widths = result["widths"]
    ratios = [widths[d]["ratio"] for d in sorted(widths, key=int)]
    grows = all(a < b for a, b in zip(ratios, ratios[1:]))
    files, g = result["files"], result["gpt3"]
    first, last = min(widths, key=int), max(widths, key=int)
    measured = (f"files at d={files['n_embd']}: adapter {_size(files['adapter_bytes'])} vs checkpoint "
                f"{_size(files['full_bytes'])} (×{files['full_bytes'] / files['adapter_bytes']:.0f}); "
                f"tensor bytes ×{widths[first]['ratio']:.0f} at d={first} to ×{widths[last]['ratio']:.0f} at d={last}; "
                f"the same count at GPT-3's shape: {_size(g['adapter_bytes'])} vs {_size(g['full_bytes'])} (×{g['ratio']:,.0f})")
    return {"measured": measured, "holds": "yes" if grows else "no",
            "why": "" if grows else "the ratio does not grow with d"}


def plot(result, path):
    groups = {f"d={d}": result["widths"][d] for d in sorted(result["widths"], key=int)}
    groups["GPT-3\n(formula)"] = result["gpt3"]
    fig, (ax,) = new_figure(1, 1, width=9)
    x = range(len(groups))
    full = [v["full_bytes"] for v in groups.values()]
    adapter = [v["adapter_bytes"] for v in groups.values()]
    ax.bar([i - 0.2 for i in x], full, 0.4, label="full checkpoint", color="tab:gray", log=True)
    ax.bar([i + 0.2 for i in x], adapter, 0.4, label="LoRA adapter (r=4, Wq and Wv)", color="tab:blue", log=True)
    for i, (f, a) in enumerate(zip(full, adapter)):
        ax.annotate(f"×{f / a:,.0f}", (i, f), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xticks(list(x), list(groups))
    ax.set_ylabel("bytes (log scale)")
    ax.set_ylim(top=max(full) * 8)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Claim 7: checkpoint against adapter bytes, the ratio above each pair ({result['n_layer']}-layer GPTs "
                 "in fp32; GPT-3 175B by formula in fp16)", fontsize=9)
    save(fig, path)
