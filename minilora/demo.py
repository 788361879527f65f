"""``minilora demo``: pretrain a small GPT, adapt it three ways, and measure what LoRA buys.

    minilora demo                    # about 5 minutes on a 2-core CPU (38 s on one H200)
    minilora demo --backend cupy     # the same on an NVIDIA GPU
    minilora demo --fresh            # pretrain again instead of reusing the cached model
    minilora demo --seeds 3 --equal-budgets   # three seeds, and every method at equal steps and equal time
    minilora demo --search           # choose each method's learning rate and steps on validation (METHODS)

1. Pretrain a GPT on the synthetic corpus (``data.pretraining_corpus``) plus the training
   targets written after their inputs in another notation (``pretraining_text``; left
   out with ``--no-task-text``), or reuse the copy cached in ``<out>/pretrained/<key>``; the
   key is a hash of every setting that determines the weights, so a changed setting never
   picks up a stale model.
2. Adapt it to E2E-style data-to-text (``data.e2e_task``) three ways, drawing the same
   batch sequence: full fine-tuning, LoRA r=8 on q and v (the paper's choice), and
   LoRA r=1. Each method's learning rate and steps were chosen on the validation split
   by ``--search`` (demo_search.py), with one search for all; the test split is scored once.
3. Measure each: trainable parameters, checkpoint or adapter bytes, BLEU and exact
   match of greedy outputs on the test split (and a paired bootstrap interval for
   full fine-tuning's lead), step time and inference latency (measured in alternating
   order, with their spread), and peak training memory.
4. Print the tables and write them, with everything behind them, to ``<out>/results.json``.

From Python: ``parser = argparse.ArgumentParser(); add_demo_arguments(parser);
run_demo(parser.parse_args([...]))`` returns the results as a dict.
"""
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time

import numpy as np

from . import backend, data
from .autograd import no_grad
from .cli_options import add_backend_argument, int_at_least, require_extras
from .data.metrics import bleu_statistics, paired_bootstrap
from .data.tasks import e2e_constant_output
from .io import load_json, save_json
from .lora import LoraConfig, count_parameters, get_peft_model, lora_layers
from .models import GPT, GPTConfig
from .optim import AdamW, warmup_cosine
from .train import complete, fit

# d = 288 makes LoRA r=8 on q and v train 2 * L̂ * d * r = 2 * 4 * 288 * 8 = 18,432 values,
# 0.9 % of the 2.04M: the fraction is about 2.7 / d, so "under 1 %" needs d of about 270 or more.
MODEL = GPTConfig(n_layer=2, n_head=6, n_embd=288, block_size=64, vocab_size=96, dropout=0.0)
PRETRAIN = {"batch_size": 32, "lr": 3e-3, "warmup": 30, "corpus_sentences": 20_000}
# The same for every method: a linear warmup, then a constant learning rate (so that the first s steps of a
# longer run are a run of s steps, which lets one run per learning rate score every step count), the same
# gradient clipping, and no weight decay (decaying LoRA's A and B pulls the model back towards the base).
FINETUNE = {"batch_size": 32, "warmup": 10, "clip": 1.0, "weight_decay": 0.0}
SPLIT_SEED = 0  # the split stays fixed across --seed: no seed's test inputs were seen by the search
LATENCY_BATCH = 16  # rows of the test split in the fixed batch whose forward pass is timed
TIMING_ROUNDS = 9  # each method's step, and each model's forward pass, is timed once per round, in turn


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to adapt the pretrained model: full fine-tuning when ``lora`` is None."""

    name: str
    folder: str  # where its checkpoint or adapter is written, inside --out
    lr: float
    steps: int  # optimizer steps, unless --finetune-steps overrides them all
    lora: LoraConfig = None


# Each method's learning rate and steps, chosen on the validation split by one search, the same for every method
# (demo_search.py: learning rates 3e-4 .. 3e-2, validation BLEU every 100 steps up to 1,200, the fewest steps within
# 2 BLEU of the method's best; search.json in docs/demo.md). alpha stays fixed across ranks, as in the paper.
# Chosen by `minilora --backend cupy demo --search` on one NVIDIA H200, 2026-11-30; validation BLEU 98.5, 91.3, 21.4.
METHODS = (
    Method("full fine-tuning", "full", lr=3e-4, steps=600),
    Method("LoRA r=8 (q, v)", "lora_r8", lr=3e-3, steps=700, lora=LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"])),
    Method("LoRA r=1 (q, v)", "lora_r1", lr=1e-2, steps=700, lora=LoraConfig(r=1, lora_alpha=16, target_modules=["q", "v"])),
)
# The same search with --no-task-text (pretraining on the corpus alone), same command, machine and date plus
# --no-task-text; validation BLEU 98.8, 84.3, 11.1. LoRA r=8 needs more steps when pretraining never saw the targets.
METHODS_NO_TASK_TEXT = (
    Method("full fine-tuning", "full", lr=3e-4, steps=600),
    Method("LoRA r=8 (q, v)", "lora_r8", lr=3e-3, steps=1100, lora=LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"])),
    Method("LoRA r=1 (q, v)", "lora_r1", lr=1e-2, steps=700, lora=LoraConfig(r=1, lora_alpha=16, target_modules=["q", "v"])),
)
BASE = "base (no tuning)"
CONSTANT = 'constant "<Name> is a place."'
BUDGETS = {"val": "best on validation", "steps": "equal steps", "time": "equal time"}
DEMO_EXTRAS = ("tqdm", "safetensors", "sacrebleu")  # the progress bar, the model files, BLEU


def add_demo_arguments(parser):
    """Add the demo's options to an argparse parser (``minilora demo`` registers it this way)."""
    add_backend_argument(parser)
    parser.add_argument("--out", default=os.path.join("runs", "demo"),
                        help="run folder: the pretrained-model cache, checkpoints, adapters and results.json")
    parser.add_argument("--fresh", action="store_true", help="pretrain again even if a cached model exists")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="one seed for the model, its pretraining text and the batches (the task's split is fixed)")
    parser.add_argument("--pretrain-steps", type=int_at_least(1), default=200, help="optimizer steps of pretraining")
    own = ", ".join(f"{m.steps} for {m.name}" for m in METHODS)
    parser.add_argument("--finetune-steps", type=int_at_least(1), default=None,
                        help=f"optimizer steps of every adaptation; default: each method's own ({own})")
    parser.add_argument("--eval-examples", type=int_at_least(1), default=None,
                        help="test examples whose greedy outputs are scored (default: all)")
    parser.add_argument("--seeds", type=int_at_least(1), default=1,
                        help="run seeds --seed .. --seed + N - 1 (each pretrains its own model) and report their spread")
    parser.add_argument("--equal-budgets", action="store_true",
                        help="also train every method for equal steps and for equal time (the largest of the chosen budgets)")
    parser.add_argument("--no-task-text", action="store_true",
                        help="pretrain on the synthetic corpus alone, without the task's training targets")
    parser.add_argument("--search", action="store_true",
                        help="instead of the demo: choose each method's learning rate and steps on the validation "
                             "split and write every score to <out>/search.json (demo_search.py)")
    return parser


def run_demo(args):
    """Run the demo described in the module docstring; returns the results dict also saved as results.json.

    (``--search`` runs ``demo_search.run_search`` instead; the command line picks which.)
    """
    check_arguments(args)
    with backend.using_backend(args.backend):
        # Process-wide allocator setting (fit sets it too): set once, before anything is timed, so every
        # method's steps and forward passes run under the same conditions.
        backend.retain_host_memory()
        return _run(args)


def check_arguments(args):
    """Refuse numbers a Python caller passed without the parser, check the extras, and settle args.backend."""
    for name in ("pretrain_steps", "finetune_steps", "eval_examples", "seeds"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise ValueError(f"demo: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    require_extras("demo", DEMO_EXTRAS)  # before any work, not when BLEU is first computed
    args.backend = getattr(args, "backend", None) or backend.get_backend()


def _run(args):
    from tqdm.auto import tqdm

    tokenizer = data.CharTokenizer.printable()
    splits = task_splits()
    train = data.encode_examples(splits.train, tokenizer, MODEL.block_size)
    test = splits.test[: args.eval_examples]
    latency_idx = data.encode_examples(splits.test, tokenizer, MODEL.block_size)[0][:LATENCY_BATCH]  # (16, T)
    methods = recipe(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    stages = tqdm(total=len(seeds) * (2 + len(methods)), desc="demo", unit="stage", dynamic_ncols=True)
    say = lambda line: stages.write(line, file=sys.stderr)  # noqa: E731

    constant = [e2e_constant_output(e) for e in test]
    runs, budgets = [], None
    for seed in seeds:
        stages.set_postfix_str(f"seed {seed}: pretraining")
        base_dir, pretraining = pretrained_model(args, tokenizer, say, seed=seed)
        stages.update()

        stages.set_postfix_str(f"seed {seed}: timing the steps")
        base = GPT.from_pretrained(base_dir)
        models = {m.name: method_model(m, base_dir, seed) for m in methods}
        step_ms = step_times(models, data.random_rows(*train, FINETUNE["batch_size"], np.random.default_rng(seed)))
        peaks = {name: peak_step_bytes(model, data.random_rows(*train, FINETUNE["batch_size"], np.random.default_rng(seed)))
                 for name, model in models.items()}
        if budgets is None:  # the first seed's step times fix the equal-time budgets for every seed
            budgets = step_budgets(methods, {name: float(np.median(t)) for name, t in step_ms.items()}, args)
        rows = [score(BASE, base, tokenizer, test), score(CONSTANT, None, tokenizer, test, predictions=constant)]
        stages.update()

        for method in methods:
            stages.set_postfix_str(f"seed {seed}: {method.name}")
            wanted = {budget: steps[method.name] for budget, steps in budgets.items()}

            def on_stop(model, step, method=method, wanted=wanted):
                scored = score(method.name, model, tokenizer, test)
                train_s = step * float(np.median(step_ms[method.name])) / 1000
                rows.extend({**scored, "budget": budget, "lr": method.lr, "steps": step, "train_s": train_s}
                            for budget, steps in wanted.items() if steps == step)

            models[method.name] = finetune(method, models[method.name], train, seed, method.lr, sorted(set(wanted.values())), on_stop)
            stages.update()

        if seed == seeds[0]:
            files, saved_base = save_models(methods, models, base_dir, tokenizer, args), base_dir
        runs.append({"seed": seed, "pretraining": pretraining, "rows": rows, "step_ms": step_ms, "peak_bytes": peaks,
                     "latency_ms": latencies(base, models, latency_idx)})
        del base, models  # on a GPU, models that stay alive would count in the next seed's memory
    stages.close()

    base_params = GPT(MODEL).num_parameters()
    results = {
        "command": _command(args), "backend": args.backend, "seeds": seeds,
        "model": dataclasses.asdict(MODEL), "parameters": base_params, "finetune": FINETUNE,
        "methods": {m.name: {"lr": m.lr, "steps": m.steps} for m in methods}, "budgets": budgets,
        "pretraining_text": "corpus only" if args.no_task_text else "corpus + training targets",
        "eval_examples": len(test), "latency_batch": list(latency_idx.shape), "runs": runs,
        "costs": costs(methods, runs, files, base_params),
        "bootstrap": bootstrap(methods, runs, budgets),
    }
    results["table"] = format_tables(results)
    for run in runs:  # the per-example BLEU counts were kept for the bootstrap; the predictions say it all
        for row in run["rows"]:
            row.pop("stats")
    save_json(os.path.join(args.out, "results.json"), results)
    print(results["table"])
    print(saved_models(args.out, saved_base, splits.test[0].prompt, methods))
    return results


def saved_models(out, base_dir, prompt, methods=METHODS):
    """Where the models are, and a ``minilora generate`` command that opens the LoRA r=8 adapter on its base."""
    adapters = [os.path.join(out, m.folder) for m in methods if m.lora is not None]
    full = [os.path.join(out, m.folder) for m in methods if m.lora is None]
    return (f"\nsaved: the pretrained model in {base_dir}, the fully fine-tuned one in {', '.join(full)}, and the LoRA "
            f"adapters (on the pretrained model) in {', '.join(adapters)}\n"
            f"try: minilora generate --model {shlex.quote(base_dir)} --adapter {shlex.quote(adapters[0])} "
            f"--greedy --max-new-tokens 40 --prompt {shlex.quote(prompt)}")


def task_splits():
    """The E2E-style task with its fixed split (806 train, 200 validation, 300 test inputs)."""
    return data.e2e_task(seed=SPLIT_SEED, max_len=MODEL.block_size + 1)


def recipe(args):
    """The methods with the learning rates and steps to use: the searched ones, or --finetune-steps for all."""
    methods = METHODS
    if getattr(args, "no_task_text", False):
        methods = METHODS_NO_TASK_TEXT
    if args.finetune_steps:
        methods = tuple(dataclasses.replace(m, steps=args.finetune_steps) for m in methods)
    return methods


def step_budgets(methods, step_ms, args):
    """{budget: {method name: steps}}: each method's chosen steps, and with --equal-budgets the largest of
    them for every method ("steps") and the steps that fill the longest chosen training time ("time")."""
    budgets = {"val": {m.name: m.steps for m in methods}}
    if getattr(args, "equal_budgets", False):
        most_steps = max(m.steps for m in methods)
        most_ms = max(m.steps * step_ms[m.name] for m in methods)
        budgets["steps"] = {m.name: most_steps for m in methods}
        budgets["time"] = {m.name: max(1, round(most_ms / step_ms[m.name])) for m in methods}
    return budgets


# ---- 1. pretraining, cached -----------------------------------------------------------------------
def pretrained_model(args, tokenizer, say=print, seed=None):
    """The folder of a pretrained GPT for these settings: reused when cached (unless --fresh), else trained and saved.

    Returns (folder, {"settings", "key", "reused", "final_loss", "seconds"}).
    """
    seed = args.seed if seed is None else seed
    text = pretraining_text(seed, task_text=not getattr(args, "no_task_text", False))
    settings = {"model": dataclasses.asdict(dataclasses.replace(MODEL, seed=seed)), **PRETRAIN,
                "steps": args.pretrain_steps, "dtype": str(backend.get_default_dtype()),
                "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = os.path.join(args.out, "pretrained", key)
    marker = os.path.join(folder, "demo_settings.json")  # written last: a folder without it is incomplete
    if not args.fresh and os.path.exists(marker):
        saved = load_json(marker)
        if saved.get("settings") == settings:
            if not os.path.exists(os.path.join(folder, data.CHAR_TOKENIZER_FILE)):  # cached by an older minilora
                tokenizer.save(os.path.join(folder, data.CHAR_TOKENIZER_FILE))
            say(f"reusing the pretrained model in {folder} (trained {saved['steps']} steps, final loss "
                f"{saved['final_loss']:.3f}); pass --fresh to train it again")
            return folder, {**saved, "key": key, "reused": True}

    say(f"pretraining a {MODEL.n_layer}-layer GPT (d={MODEL.n_embd}) for {args.pretrain_steps} steps; it is cached in {folder}")
    tokens = np.array(tokenizer.encode(text))
    model = GPT(dataclasses.replace(MODEL, seed=seed))
    steps, lr = args.pretrain_steps, PRETRAIN["lr"]
    started = time.perf_counter()
    history = fit(
        model, AdamW(model.parameters(), lr=lr),
        get_batch=lambda rng: data.random_windows(tokens, PRETRAIN["batch_size"], MODEL.block_size, rng),
        steps=steps, seed=seed, clip=1.0,
        schedule=lambda s: warmup_cosine(s, min(PRETRAIN["warmup"], steps), steps, lr, lr / 10),
    )
    model.save_pretrained(folder)
    tokenizer.save(os.path.join(folder, data.CHAR_TOKENIZER_FILE))  # so that `minilora generate --model` opens it
    summary = {"settings": settings, "steps": steps, "final_loss": history[-1]["loss"], "seconds": time.perf_counter() - started}
    save_json(marker, summary)
    return folder, {**summary, "key": key, "reused": False}


def pretraining_text(seed, task_text=True):
    """The synthetic corpus, plus (with ``task_text``) every training target after its input in another notation.

    "Cotto (food: Thai, area: river): Cotto serves Thai food by the river." The base
    model thus has read every training target, and learns to write a sentence from a
    restaurant's attributes; fine-tuning then teaches the E2E notation
    "Cotto|food[Thai]|area[river]=". Validation and test inputs appear in neither. Without
    these lines (``task_text=False``) the adaptation has to build that skill itself.
    """
    lines = data.pretraining_corpus(PRETRAIN["corpus_sentences"], seed=seed).splitlines()
    if task_text:
        for example in task_splits().train:
            name, *fields = example.prompt.removesuffix(data.SEPARATOR).split("|")
            notes = ", ".join(field.rstrip("]").replace("[", ": ") for field in fields)
            lines += [f"{name} ({notes}): {reference}" for reference in example.references]
    np.random.default_rng(seed).shuffle(lines)
    return "\n".join(lines) + "\n"


# ---- 2. adaptation ----------------------------------------------------------------------------------
def method_model(method, base_dir, seed):
    """A fresh copy of the pretrained model (a random one if base_dir is None), ready to be trained by ``method``
    (LoRA's A drawn from ``seed``)."""
    model = GPT(MODEL) if base_dir is None else GPT.from_pretrained(base_dir)
    if method.lora is not None:
        model = get_peft_model(model, method.lora, rng=backend.default_rng(seed))
    return model


def finetune_lr(step, lr):
    """The adaptation's learning rate at ``step`` (0-based): a linear warmup, then ``lr`` for good."""
    return lr * min(1.0, (step + 1) / FINETUNE["warmup"])


def finetune(method, model, train, seed, lr, stops, on_stop=None, progress=True):
    """Train ``model`` (from ``method_model``) at learning rate ``lr``, calling ``on_stop(model, step)`` after
    each step count in ``stops``; returns the model.

    The batches come from one generator for the whole run and the learning rate does not depend on
    the run's length, so the model at stop s is the model of a run of s steps.
    """
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=FINETUNE["weight_decay"])
    batches = np.random.default_rng(seed)
    done = 0
    for stop in sorted(set(stops)):
        fit(model, optimizer, get_batch=lambda _: data.random_rows(*train, FINETUNE["batch_size"], batches),
            steps=stop - done, clip=FINETUNE["clip"], schedule=lambda s, done=done: finetune_lr(done + s, lr), progress=progress)
        done = stop
        if on_stop is not None:
            on_stop(model, done)
    return model


def save_models(methods, models, base_dir, tokenizer, args):
    """Write each method's checkpoint or adapter into --out; returns {name: bytes of its weights file}."""
    files = {BASE: os.path.getsize(os.path.join(base_dir, "model.safetensors"))}
    for method in methods:
        # LoRA's save_pretrained writes only A and B; a GPT's writes every weight.
        folder = os.path.join(args.out, method.folder)
        models[method.name].save_pretrained(folder)
        if method.lora is None:  # a full model opens on its own; an adapter takes the base's tokenizer
            tokenizer.save(os.path.join(folder, data.CHAR_TOKENIZER_FILE))
        weights = "model.safetensors" if method.lora is None else "adapter_model.safetensors"
        files[method.name] = os.path.getsize(os.path.join(folder, weights))
    return files


# ---- 3. measurement ---------------------------------------------------------------------------------
def score(name, model, tokenizer, examples, predictions=None):
    """{"method", "bleu", "exact_match", "predictions", "stats"} of greedy outputs (or the given ones) on ``examples``."""
    if predictions is None:
        model.eval()
        predictions = complete(model, tokenizer, [e.prompt for e in examples])
    references = [e.references for e in examples]
    return {"method": name, "bleu": data.corpus_bleu(predictions, references),
            "exact_match": data.exact_match(predictions, references), "predictions": predictions,
            "stats": bleu_statistics(predictions, references)}


def step_times(models, batch):
    """{name: [milliseconds of one optimizer step]}: each model's step timed once per round, in turn.

    A throwaway AdamW with lr=0 does all of a real step's work (gradients, moments,
    update) without moving a weight, so measuring leaves the models as they were.
    Alternating the models spreads drifts of the machine (other work, clocks) over all of them.
    """
    steps = {}
    for name, model in models.items():
        optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad()
            _, loss = model(*batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        steps[name] = step
    times = {name: [] for name in models}
    for model in models.values():
        model.train()
    for i in range(TIMING_ROUNDS + 1):  # round 0 warms up
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            backend.synchronize()  # a GPU step only queues work: wait for it before reading the clock
            if i:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def peak_step_bytes(model, batch):
    """The model's weight bytes + the most memory two training steps allocate on top (gradients, moments, activations)."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step():
        optimizer.zero_grad()
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()

    model.train()
    peak = backend.peak_bytes_allocated(lambda: [step() for _ in range(2)])  # the 2nd step holds the moments
    optimizer.zero_grad()
    return sum(p.data.nbytes for p in model.parameters()) + peak


def latencies(base, models, idx):
    """{label: [milliseconds of one forward pass over idx (B, T)]}, eval mode, no_grad, one pass of each in turn
    per round: the base, each adapted model, and each LoRA model merged (merge_adapter, time, unmerge_adapter)."""
    passes = [(BASE, base, False)]
    for name, model in models.items():
        passes.append((name, model, False))
        if hasattr(model, "merge_adapter"):
            passes.append((f"{name} merged", model, True))
    times = {label: [] for label, _, _ in passes}
    with no_grad():
        for _, model, _ in passes:
            model.eval()
        for i in range(TIMING_ROUNDS + 1):  # round 0 warms up
            for label, model, merged in passes:
                if merged:
                    model.merge_adapter()
                start = time.perf_counter()
                model(idx)
                backend.synchronize()
                if i:
                    times[label].append(1000 * (time.perf_counter() - start))
                if merged:
                    model.unmerge_adapter()
    return times


def costs(methods, runs, files, base_params):
    """One row per model of what it costs: trainable values, file bytes, step time, peak memory, latency (all seeds pooled)."""
    pooled = lambda key, name: [t for run in runs for t in run[key][name]]  # noqa: E731
    rows = [{"method": BASE, "trainable": 0, "trainable_percent": 0.0, "file_bytes": files[BASE], "step_ms": None,
             "peak_bytes": None, "infer_ms": pooled("latency_ms", BASE), "merged_ms": None}]
    for method in methods:
        model = method_model(method, None, 0)
        trainable, _ = count_parameters(model)
        row = {"method": method.name, "trainable": trainable, "trainable_percent": 100.0 * trainable / base_params,
               "file_bytes": files[method.name], "step_ms": pooled("step_ms", method.name),
               "peak_bytes": max(run["peak_bytes"][method.name] for run in runs),
               "infer_ms": pooled("latency_ms", method.name), "merged_ms": None}
        if method.lora is not None:
            row["merged_ms"] = pooled("latency_ms", f"{method.name} merged")
            row["paper_count"] = 2 * len(lora_layers(model)) * MODEL.n_embd * method.lora.r  # 2 L̂ d r, d x d matrices
        rows.append(row)
    return rows


def bootstrap(methods, runs, budgets):
    """{budget: {LoRA method: paired_bootstrap of full fine-tuning minus it, plus "per_seed" differences}},
    over the test inputs, the seeds averaged."""
    full = next(m.name for m in methods if m.lora is None)
    found = {}
    for budget in budgets:
        rows = {m.name: [_row(run, m.name, budget) for run in runs] for m in methods}
        found[budget] = {
            m.name: {**paired_bootstrap([r["stats"] for r in rows[full]], [r["stats"] for r in rows[m.name]]),
                     "per_seed": [a["bleu"] - b["bleu"] for a, b in zip(rows[full], rows[m.name])]}
            for m in methods if m.lora is not None}
    return found


def _row(run, method, budget=None):
    """The row of one seed's run for ``method`` under ``budget`` (None: the base and the constant output)."""
    return next(r for r in run["rows"] if r["method"] == method and r.get("budget") == budget)


# ---- 4. the tables ----------------------------------------------------------------------------------
def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _spread(values, digits=1):
    """"mean (min-max)" of several values, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _timing(times):
    """"median [min-max]" of repeated timings, in milliseconds."""
    return f"{np.median(times):.1f} [{min(times):.1f}-{max(times):.1f}]"


def _text_table(header, lines):
    widths = [max(len(str(line[j])) for line in [header] + lines) for j in range(len(header))]
    out = ["  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths)))
           for line in [header] + lines]
    out.insert(1, "-" * len(out[0]))
    return out


QUALITY = ["method", "budget", "lr", "steps", "train s", "BLEU", "exact %"]
COSTS = ["method", "trainable", "% of base", "file", "step ms", "peak MB", "infer ms", "merged ms"]


def quality_rows(results):
    """The quality table's lines: the constant output, the base, then each method under each budget."""
    runs = results["runs"]
    seeds = len(runs)

    def gather(method, budget):
        return [_row(run, method, budget) for run in runs]

    lines = []
    for name in (CONSTANT, BASE):
        rows = gather(name, None)
        lines.append([name, "-", "-", "-", "-", _spread([r["bleu"] for r in rows]), _spread([r["exact_match"] for r in rows])])
    for budget in results["budgets"]:
        for name, settings in results["methods"].items():
            rows = gather(name, budget)
            lines.append([name, BUDGETS[budget], f"{settings['lr']:g}", str(rows[0]["steps"]),
                          _spread([r["train_s"] for r in rows], 0), _spread([r["bleu"] for r in rows]),
                          _spread([r["exact_match"] for r in rows])])
    return lines, seeds


def format_tables(results):
    """Two aligned plain-text tables (quality, then costs) with notes that say how each column was measured."""
    lines, seeds = quality_rows(results)
    out = _text_table(QUALITY, lines)
    cost_lines = []
    for row in results["costs"]:
        cost_lines.append([row["method"], f"{row['trainable']:,}", f"{row['trainable_percent']:.2f}", _size(row["file_bytes"]),
                           "-" if row["step_ms"] is None else _timing(row["step_ms"]),
                           "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 1e6:.1f}",
                           _timing(row["infer_ms"]), "-" if row["merged_ms"] is None else _timing(row["merged_ms"])])
    out += [""] + _text_table(COSTS, cost_lines)

    m, pre = MODEL, results["runs"][0]["pretraining"]
    spread = f"mean (min-max) over {seeds} seeds {results['seeds']}" if seeds > 1 else f"seed {results['seeds'][0]}"
    notes = [
        "",
        f"GPT: {m.n_layer} layers, d={m.n_embd}, {m.n_head} heads, T={m.block_size}, {results['parameters']:,} parameters; "
        f"pretrained {pre['steps']} steps on the {results['pretraining_text']} (each seed its own model); backend {results['backend']}",
        f"BLEU / exact %: greedy outputs on {results['eval_examples']} test inputs, {spread}; test inputs are new combinations "
        "of names and attributes that all occur in training",
        "budget: best on validation = each method's lr and steps chosen on the validation split (demo --search); "
        "equal steps / equal time = the most steps, or the longest training time, of those choices, for every method",
        f"steps: optimizer steps of batch {FINETUNE['batch_size']}, the same batch sequence for every method, warmup "
        f"{FINETUNE['warmup']} then a constant lr, weight decay {FINETUNE['weight_decay']} and clip {FINETUNE['clip']} for all; "
        "train s: steps * the median step time below",
        f"step ms / infer ms / merged ms: median [min-max] of {TIMING_ROUNDS} timings per seed, each round timing every "
        f"model in turn; infer = forward of a fixed {results['latency_batch']} batch (LoRA unmerged), merged = after merge_adapter()",
        "file: full checkpoint (base, full fine-tuning) or adapter only (LoRA); "
        "peak MB: weights + the most a training step adds (gradients, Adam moments, activations)",
    ]
    for budget, pairs in results["bootstrap"].items():
        for name, b in pairs.items():
            per_seed = ", ".join(f"{d:+.1f}" for d in b["per_seed"])
            notes.append(f"full fine-tuning - {name}, {BUDGETS[budget]}: {b['difference']:+.1f} BLEU (per seed {per_seed}); "
                         f"{100 * b['confidence']:.0f} % paired bootstrap interval over the test inputs [{b['low']:+.1f}, {b['high']:+.1f}]")
    notes += latency_notes(results["costs"])
    notes += [f"{row['method']}: {row['trainable']:,} trainable = 2 * L * d * r = {row['paper_count']:,} (the paper's count)"
              for row in results["costs"] if "paper_count" in row]
    return "\n".join(out + notes)


def latency_notes(cost_rows):
    """What the latency measurement shows about merged LoRA against the base: only what the spread supports."""
    base = cost_rows[0]["infer_ms"]
    notes = []
    for row in cost_rows[1:]:
        if row["merged_ms"] is None:
            continue
        low, high = np.percentile(base, [25, 75])
        m_low, m_high = np.percentile(row["merged_ms"], [25, 75])
        ratio = np.median(row["merged_ms"]) / np.median(base)
        verdict = ("the interquartile ranges overlap: no difference measured" if m_low <= high and low <= m_high
                   else "the interquartile ranges do not overlap: a measured difference")
        notes.append(f"{row['method']} merged vs base: median {ratio:.2f}x the base's; {verdict}")
    return notes


def _command(args):
    """The command line that reproduces this run."""
    extra = "".join(f" --{flag}" for flag in ("equal-budgets", "no-task-text") if getattr(args, flag.replace("-", "_"), False))
    finetune = f" --finetune-steps {args.finetune_steps}" if args.finetune_steps else ""
    examples = f" --eval-examples {args.eval_examples}" if args.eval_examples else ""
    return (f"minilora demo --backend {args.backend} --out {args.out} --seed {args.seed} --seeds {args.seeds} "
            f"--pretrain-steps {args.pretrain_steps}{finetune}{examples}{extra}")
