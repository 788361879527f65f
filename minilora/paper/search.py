"""``minilora paper --search``: choose the full run's pretraining, batch, learning rates and steps on validation.

    minilora paper --search --backend cupy   # 28 runs in 14 parallel processes on one H200 (16 cores): 70 s

The same search for both method families, full fine-tuning and LoRA (r=8 on Wq, Wv, the
paper's choice; every rank and matrix set of the full run then uses LoRA's pick, with
alpha fixed, as the paper keeps alpha and tunes at one rank). For each pretraining length,
batch size and learning rate in the grid, one run from seed 0, scored by BLEU of greedy
outputs on the whole validation split every EVAL_EVERY steps. After the warmup the learning
rate is constant (Lab.finetune), so the model at step s of a run is the model of a run of s
steps: one run per learning rate scores every step count, and the pick reproduces exactly.

Every method gets the same budget: at most RUN_CPU_S seconds of training on a 2-core CPU per
run (CPU_STEP_S), which is what keeps the full run's 54 runs under an hour there. The pick,
per (pretraining, batch) and family: the fewest steps within the budget whose validation
BLEU is within TOLERANCE of the family's best within it. The (pretraining, batch) chosen is
the one whose two families' best validation BLEU is highest on average (the batch order must
be the same for every method, so both families share it). The test split is never read.
"""
import dataclasses
import os
import sys

from .. import backend
from ..io import save_json
from .lab import FULL, FULL_FT, Lab, Run

PRETRAIN_STEPS = (200, 600)
BATCH_SIZES = (16, 32)
LEARNING_RATES = {"full": (1e-4, 3e-4, 1e-3), "lora": (3e-3, 6e-3, 1e-2, 2e-2)}
FAMILIES = {"full": FULL_FT, "lora": Run(("q", "v"), 8)}
# Seconds per training step on 2 idle CPU cores at d = 288 (NumPy, fp32). Batch 32: docs/demo.md's CPU run (165.7 ms
# full fine-tuning, 113.6 ms LoRA r=8). Batch 16: those times scaled by the batch-16 / batch-32 ratio measured on
# the shared 2-core machine, 2026-11-30 (0.52 full, 0.66 LoRA; docs/paper.md).
CPU_STEP_S = {("full", 32): 0.166, ("lora", 32): 0.114, ("full", 16): 0.087, ("lora", 16): 0.075}
RUN_CPU_S = 50  # every run's training budget: 54 runs x 50 s, plus scoring and pretraining, stay under the hour
EVAL_EVERY = 100
TOLERANCE = 2.0  # BLEU points: one run's validation BLEU moves by 1 to 5 points between evaluations (docs/demo.md)


def budget_steps(family, batch_size):
    """The most steps (a multiple of EVAL_EVERY) that fit RUN_CPU_S on the CPU for this family and batch."""
    return int(RUN_CPU_S / CPU_STEP_S[family, batch_size]) // EVAL_EVERY * EVAL_EVERY


def grid(pretrain_steps=PRETRAIN_STEPS, batch_sizes=BATCH_SIZES, learning_rates=LEARNING_RATES):
    """Every (pretrain_steps, batch_size, family, lr) of the search."""
    return [(p, b, family, lr) for p in pretrain_steps for b in batch_sizes
            for family, rates in learning_rates.items() for lr in rates]


def scale_for(base_scale, pretrain_steps, batch_size):
    return dataclasses.replace(base_scale, pretrain_steps=pretrain_steps, batch_size=batch_size)


def search_run(config, out, backend_name, base_scale=FULL, steps=None):
    """Train one (pretrain_steps, batch_size, family, lr) from seed 0; returns its records, one per evaluation."""
    from ..train import generation_metrics

    p, b, family, lr = config
    with backend.using_backend(backend_name):
        lab = Lab(scale_for(base_scale, p, b), [0], out, backend_name=backend_name)
        _, history = lab.finetune(FAMILIES[family], 0, lr, steps or budget_steps(family, b), eval_every=EVAL_EVERY,
                                  eval_fn=lambda model: generation_metrics(model, lab.tokenizer, lab.splits.validation))
    return [{"pretrain_steps": p, "batch_size": b, "family": family, "lr": lr, "step": h["step"],
             "val_bleu": h["bleu"], "val_exact_match": h["exact_match"]} for h in history if "bleu" in h]


def choose(records, tolerance=TOLERANCE):
    """{"pretrain_steps", "batch_size", "full": {"lr", "steps", "val_bleu", "best_val_bleu"}, "lora": {...}}."""
    picks = {}
    for setting in dict.fromkeys((r["pretrain_steps"], r["batch_size"]) for r in records):
        picks[setting] = {}
        for family in FAMILIES:
            mine = [r for r in records if (r["pretrain_steps"], r["batch_size"]) == setting and r["family"] == family]
            best = max(r["val_bleu"] for r in mine)
            pick = min((r for r in mine if r["val_bleu"] >= best - tolerance),
                       key=lambda r: (r["step"], -r["val_bleu"], r["lr"]))
            picks[setting][family] = {"lr": pick["lr"], "steps": pick["step"], "val_bleu": pick["val_bleu"],
                                      "best_val_bleu": best}
    setting = max(picks, key=lambda k: sum(v["best_val_bleu"] for v in picks[k].values()))
    return {"pretrain_steps": setting[0], "batch_size": setting[1], **picks[setting],
            "every_setting": [{"pretrain_steps": k[0], "batch_size": k[1], **v} for k, v in picks.items()]}


def default_workers(backend_name):
    """Processes for the search: on a GPU, one per CPU core but two (each run is bound by Python, not the GPU);
    on the CPU, one (NumPy already uses every core)."""
    return max(1, (os.cpu_count() or 1) - 2) if backend_name == "cupy" else 1


def run_search(args, configs=None, base_scale=FULL, steps=None, workers=None):
    """``minilora paper --search``: pretrain each base, run every config (in ``workers`` processes), write search.json."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from tqdm.auto import tqdm

    configs = configs or grid()
    workers = workers or default_workers(args.backend)
    for p in dict.fromkeys(c[0] for c in configs):  # each base once, here, before the workers load it
        Lab(scale_for(base_scale, p, base_scale.batch_size), [0], args.out, backend_name=args.backend).base()
    jobs = [(c, args.out, args.backend, base_scale, steps) for c in configs]
    bar = tqdm(total=len(jobs), desc="search", unit="run", dynamic_ncols=True, file=sys.stderr)
    records = []
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for found in pool.map(search_run, *zip(*jobs)):
                records += found
                bar.update()
    else:
        for job in jobs:
            records += search_run(*job)
            bar.update()
    bar.close()
    chosen = choose(records)
    results = {"command": f"minilora paper --search --backend {args.backend} --out {args.out}", "workers": workers,
               "backend": args.backend, "seed": 0, "budget_cpu_s": RUN_CPU_S, "eval_every": EVAL_EVERY,
               "cpu_step_s": {f"{family}, batch {b}": s for (family, b), s in CPU_STEP_S.items()},
               "tolerance": TOLERANCE, "records": records, "chosen": chosen}
    save_json(os.path.join(args.out, "search.json"), results)
    print(format_table(records, chosen))
    return results


def format_table(records, chosen):
    """Validation BLEU per (pretraining, batch, family, lr) and step, then the pick, as Markdown."""
    steps = sorted({r["step"] for r in records})
    lines = ["| pretrain | batch | method | lr | " + " | ".join(map(str, steps)) + " |",
             "|---" * (4 + len(steps)) + "|"]
    rows = {}
    for r in records:
        rows.setdefault((r["pretrain_steps"], r["batch_size"], r["family"], r["lr"]), {})[r["step"]] = r["val_bleu"]
    for (p, b, family, lr), by_step in rows.items():
        lines.append(f"| {p} | {b} | {family} | {lr:g} | " + " | ".join(f"{by_step[s]:.0f}" if s in by_step else ""
                                                                       for s in steps) + " |")
    c = chosen
    lines += ["", f"chosen: pretrain_steps={c['pretrain_steps']}, batch_size={c['batch_size']}, "
              f"full_lr={c['full']['lr']:g}, full_steps={c['full']['steps']} (validation BLEU {c['full']['val_bleu']:.1f}, "
              f"best {c['full']['best_val_bleu']:.1f}), lora_lr={c['lora']['lr']:g}, lora_steps={c['lora']['steps']} "
              f"(validation BLEU {c['lora']['val_bleu']:.1f}, best {c['lora']['best_val_bleu']:.1f})"]
    return "\n".join(lines)
