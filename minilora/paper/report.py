"""report.md and results.json: one table of the claims, the settings behind it, and the plots."""
import dataclasses
import datetime
import os
import platform

from ..io import save_json
from .lab import WARMUP

HOLDS = {"yes": "yes", "partly": "partly", "no": "**no**"}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ") or "–"


def machine(backend_name, load=None):
    """One line: the processor, the cores, the OS, the backend, and how busy the machine was at the start."""
    busy = f", load average {load:.1f} at the start" if load is not None else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, backend {backend_name}{busy}")


def command(args):
    """The command line that reproduces this run."""
    claims = "" if len(args.claims) == 8 else f" --claims {' '.join(args.claims)}"
    return (f"minilora paper{' --quick' if args.quick else ''} --seeds {args.seeds} --backend {args.backend} "
            f"--out {args.out}{claims}")


def write_report(args, lab, outcomes, seconds, load=None):
    """Write OUT/report.md and OUT/results.json; returns the results dict."""
    s = lab.scale
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = {"command": command(args), "date": date, "machine": machine(args.backend, load), "seconds": seconds,
               "scale": dataclasses.asdict(s), "seeds": lab.seeds, "pretraining": getattr(lab, "pretraining", None),
               "claims": outcomes}
    lines = [
        "# The LoRA paper at small scale", "",
        f"`{results['command']}` — {date}, {seconds / 60:.1f} minutes on {results['machine']}.", "",
    ]
    if args.quick:
        lines += ["**This is a --quick run**: a tiny model, a few steps and few test inputs. It shows that every "
                  "measurement runs; its numbers say little about LoRA, and neither does the 'holds' column.", ""]
    lines += ["| # | claim | the paper | minilora | holds here? | why not |", "|---|---|---|---|---|---|"]
    for o in outcomes.values():
        lines.append(f"| {o['number']} | {_cell(o['title'])} ({_cell(o['source'])}) | {_cell(o['paper'])} | "
                     f"{_cell(o['measured'])} | {HOLDS[o['holds']]} | {_cell(o['why'])} |")
    n = len(lab.seeds)
    lines += [
        "", "## How it was measured", "",
        f"- Model: a GPT of {s.n_layer} layers, d = {s.n_embd}, {s.n_head} heads, T = {s.block_size}, the "
        f"{lab.tokenizer.vocab_size}-character vocabulary, pretrained once (seed 0) for {s.pretrain_steps} steps "
        "on the synthetic corpus plus the training inputs in another notation (`minilora.demo.pretraining_text`).",
        f"- Task: E2E-style data-to-text (`minilora.data.e2e_task`, split seed 0); BLEU and exact match of greedy "
        f"outputs on the first {s.eval_examples} test inputs.",
        f"- Adaptation: AdamW (no weight decay), batch {s.batch_size}, the same batch sequence for every method "
        f"within a seed, {WARMUP} warmup steps then a constant learning rate, clip 1.0; full fine-tuning "
        f"{s.full_steps} steps at {s.full_lr:g}, every LoRA run {s.lora_steps} steps at {s.lora_lr:g}; "
        f"lora_alpha = {s.lora_alpha:g} at every rank (scale alpha / r), Kaiming-uniform A and zero B.",
        f"- Seeds: {n} ({', '.join(map(str, lab.seeds))}). A seed sets LoRA's initialisation and the batch order; "
        "within a seed every method sees the same batches. Figures are mean ± one sample standard deviation over "
        "seeds; timings are the median ± half the interquartile range of repeats taken in alternating order.",
        "- Settings were chosen in advance on the validation split, the same way for both method families "
        "(`minilora paper --search`, docs/paper.md); the test split is used for the reported numbers only.",
        "- 'holds here?' applies the rule written in each claim's module (minilora/paper/<claim>.py) to these numbers.",
        "", "## Plots", "",
    ]
    for o in outcomes.values():
        lines += [f"### {o['number']}. {o['title']}", "", f"![claim {o['number']}]({o['plot']})", ""]
    with open(os.path.join(args.out, "report.md.tmp"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(os.path.join(args.out, "report.md.tmp"), os.path.join(args.out, "report.md"))
    save_json(os.path.join(args.out, "results.json"), results)
    print("\n".join(lines[:lines.index("## How it was measured")]))
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return results
