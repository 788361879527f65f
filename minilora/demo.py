"""``minilora demo``: pretrain a small GPT, adapt it three ways, and measure what LoRA buys.

    minilora demo                    # a few minutes on a 2-core laptop CPU
    minilora demo --backend cupy     # the same on an NVIDIA GPU
    minilora demo --fresh            # pretrain again instead of reusing the cached model

1. Pretrain a GPT on the synthetic corpus (``data.pretraining_corpus``) plus the training
   inputs described in another notation (``pretraining_text``), or reuse the copy cached in ``<out>/pretrained/<key>``; the key is a hash of every setting that
   determines the weights, so a changed setting never picks up a stale model.
2. Adapt it to E2E-style data-to-text (``data.e2e_task``) three ways, drawing the same
   batch sequence: full fine-tuning, LoRA r=8 on q and v (the paper's choice), and
   LoRA r=1 (see METHODS below for each one's learning rate and steps).
3. Measure each: trainable parameters, checkpoint or adapter bytes, BLEU and exact
   match of greedy outputs on the test split, median step time, peak training memory,
   and inference latency (unmerged and merged for LoRA).
4. Print one table and write it, with everything behind it, to ``<out>/results.json``.

From Python: ``parser = argparse.ArgumentParser(); add_demo_arguments(parser);
run_demo(parser.parse_args([...]))`` returns the results as a dict.
"""
import dataclasses
import hashlib
import json
import os
import shlex
import statistics
import sys
import time

import numpy as np

from . import backend, data
from .autograd import no_grad
from .cli_options import add_backend_argument, int_at_least, require_extras
from .io import load_json, save_json
from .lora import LoraConfig, count_parameters, get_peft_model, lora_layers
from .models import GPT, GPTConfig
from .optim import AdamW, warmup_cosine
from .train import fit, generation_metrics

# d = 288 makes LoRA r=8 on q and v train 2 * L̂ * d * r = 2 * 4 * 288 * 8 = 18,432 values,
# 0.9 % of the 2.04M: the fraction is about 2.7 / d, so "under 1 %" needs d of about 270 or more.
MODEL = GPTConfig(n_layer=2, n_head=6, n_embd=288, block_size=64, vocab_size=96, dropout=0.0)
PRETRAIN = {"batch_size": 32, "lr": 3e-3, "warmup": 30, "corpus_sentences": 20_000}
FINETUNE = {"batch_size": 32, "warmup": 10}
LATENCY_BATCH = 16  # rows of the test split in the fixed batch whose forward pass is timed


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to adapt the pretrained model: full fine-tuning when ``lora`` is None."""

    name: str
    folder: str  # where its checkpoint or adapter is written, inside --out
    lr: float
    steps: int  # optimizer steps, unless --finetune-steps overrides them all
    lora: LoraConfig = None


# LoRA wants a larger learning rate and more steps than full fine-tuning: B starts at zero
# and a rank-r update of q and v is a narrow path to the output. Measured on this task:
# full fine-tuning is done by about 150 steps (BLEU ~98); LoRA r=8 gets ~50 BLEU at 150
# steps, ~80 at 300, ~92 at 500 and ~96 at 700. LoRA r=1 levels off by 300 steps (BLEU ~27 at 300
# and at 500). alpha stays fixed across ranks, as in the paper, so the scale alpha / r
# keeps the update's size comparable.
METHODS = (
    Method("full fine-tuning", "full", lr=1e-3, steps=150),
    Method("LoRA r=8 (q, v)", "lora_r8", lr=1e-2, steps=700, lora=LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"])),
    Method("LoRA r=1 (q, v)", "lora_r1", lr=1e-2, steps=300, lora=LoraConfig(r=1, lora_alpha=16, target_modules=["q", "v"])),
)
BASE = "base (no tuning)"
DEMO_EXTRAS = ("tqdm", "safetensors", "sacrebleu")  # the progress bar, the model files, BLEU


def add_demo_arguments(parser):
    """Add the demo's options to an argparse parser (``minilora demo`` registers it this way)."""
    add_backend_argument(parser)
    parser.add_argument("--out", default=os.path.join("runs", "demo"),
                        help="run folder: the pretrained-model cache, checkpoints, adapters and results.json")
    parser.add_argument("--fresh", action="store_true", help="pretrain again even if a cached model exists")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="one seed for the model, the data and the batches")
    parser.add_argument("--pretrain-steps", type=int_at_least(1), default=200, help="optimizer steps of pretraining")
    own = ", ".join(f"{m.steps} for {m.name}" for m in METHODS)
    parser.add_argument("--finetune-steps", type=int_at_least(1), default=None,
                        help=f"optimizer steps of every adaptation; default: each method's own ({own})")
    parser.add_argument("--eval-examples", type=int_at_least(1), default=100, help="test examples whose greedy outputs are scored")
    return parser


def run_demo(args):
    """Run the demo described in the module docstring; returns the results dict also saved as results.json."""
    for name in ("pretrain_steps", "finetune_steps", "eval_examples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"demo: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    require_extras("demo", DEMO_EXTRAS)  # before any work, not when BLEU is first computed
    args.backend = getattr(args, "backend", None) or backend.get_backend()
    with backend.using_backend(args.backend):
        return _run(args)


def _run(args):
    from tqdm.auto import tqdm

    tokenizer = data.CharTokenizer.printable()
    splits = data.e2e_task(seed=args.seed, max_len=MODEL.block_size + 1)
    train = data.encode_examples(splits.train, tokenizer, MODEL.block_size)
    test = splits.test[: args.eval_examples]
    latency_idx = data.encode_examples(splits.test, tokenizer, MODEL.block_size)[0][:LATENCY_BATCH]  # (16, T)

    stages = tqdm(total=2 + len(METHODS), desc="demo", unit="stage", dynamic_ncols=True)
    stages.set_postfix_str("pretraining")
    base_dir, pretraining = pretrained_model(args, tokenizer, lambda line: stages.write(line, file=sys.stderr))
    stages.update()

    stages.set_postfix_str(f"evaluating {BASE}")
    base = GPT.from_pretrained(base_dir)
    base_params = base.num_parameters()
    rows = [{
        "method": BASE, "steps": None, "trainable": 0, "trainable_percent": 0.0,
        "file_bytes": os.path.getsize(os.path.join(base_dir, "model.safetensors")),
        **generation_metrics(base, tokenizer, test),
        "step_ms": None, "peak_bytes": None, "infer_ms": latency_ms(base, latency_idx), "merged_ms": None,
    }]
    del base  # on a GPU, a model that stays alive would count in the next method's memory
    stages.update()

    for method in METHODS:
        stages.set_postfix_str(method.name)
        rows.append(adapt(method, base_dir, base_params, train, test, latency_idx, tokenizer, args))
        stages.update()
    stages.close()

    results = {
        "command": _command(args), "backend": args.backend, "seed": args.seed,
        "model": dataclasses.asdict(MODEL), "parameters": base_params, "pretraining": pretraining,
        "finetune": {**FINETUNE, "lr": {m.name: m.lr for m in METHODS}},
        "eval_examples": len(test), "latency_batch": list(latency_idx.shape), "rows": rows,
    }
    results["table"] = format_table(rows, results)
    save_json(os.path.join(args.out, "results.json"), results)
    print(results["table"])
    print(saved_models(args.out, base_dir, splits.test[0].prompt))
    return results


def saved_models(out, base_dir, prompt):
    """Where the models are, and a ``minilora generate`` command that opens the LoRA r=8 adapter on its base."""
    adapters = [os.path.join(out, m.folder) for m in METHODS if m.lora is not None]
    full = [os.path.join(out, m.folder) for m in METHODS if m.lora is None]
    return (f"\nsaved: the pretrained model in {base_dir}, the fully fine-tuned one in {', '.join(full)}, and the LoRA "
            f"adapters (on the pretrained model) in {', '.join(adapters)}\n"
            f"try: minilora generate --model {shlex.quote(base_dir)} --adapter {shlex.quote(adapters[0])} "
            f"--greedy --max-new-tokens 40 --prompt {shlex.quote(prompt)}")


# ---- 1. pretraining, cached -----------------------------------------------------------------------
def pretrained_model(args, tokenizer, say=print):
    """The folder of a pretrained GPT for these settings: reused when cached (unless --fresh), else trained and saved.

    Returns (folder, {"settings", "key", "reused", "final_loss", "seconds"}).
    """
    text = pretraining_text(args.seed)
    settings = {"model": dataclasses.asdict(dataclasses.replace(MODEL, seed=args.seed)), **PRETRAIN,
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
    model = GPT(dataclasses.replace(MODEL, seed=args.seed))
    steps, lr = args.pretrain_steps, PRETRAIN["lr"]
    started = time.perf_counter()
    history = fit(
        model, AdamW(model.parameters(), lr=lr),
        get_batch=lambda rng: data.random_windows(tokens, PRETRAIN["batch_size"], MODEL.block_size, rng),
        steps=steps, seed=args.seed, clip=1.0,
        schedule=lambda s: warmup_cosine(s, min(PRETRAIN["warmup"], steps), steps, lr, lr / 10),
    )
    model.save_pretrained(folder)
    tokenizer.save(os.path.join(folder, data.CHAR_TOKENIZER_FILE))  # so that `minilora generate --model` opens it
    summary = {"settings": settings, "steps": steps, "final_loss": history[-1]["loss"], "seconds": time.perf_counter() - started}
    save_json(marker, summary)
    return folder, {**summary, "key": key, "reused": False}


def pretraining_text(seed):
    """The synthetic corpus, plus the training inputs described in another notation, one per line.

    "Cotto (food: Thai, area: river): Cotto serves Thai food by the river." The base
    model thus learns to describe a restaurant from its attributes, as GPT-2 has read
    English about restaurants before the paper adapts it to E2E; fine-tuning then
    teaches the E2E notation "Cotto|food[Thai]|area[river]=". Test inputs appear in
    neither. Without these lines LoRA r=8 on q, v has to build the skill itself, which
    a rank-8 update of a 2-layer model does slowly: we measured BLEU ~60 after 400 steps
    without them, ~80 after 300 with them.
    """
    lines = data.pretraining_corpus(PRETRAIN["corpus_sentences"], seed=seed).splitlines()
    for example in data.e2e_task(seed=seed, max_len=MODEL.block_size + 1).train:
        name, *fields = example.prompt.removesuffix(data.SEPARATOR).split("|")
        notes = ", ".join(field.rstrip("]").replace("[", ": ") for field in fields)
        lines += [f"{name} ({notes}): {reference}" for reference in example.references]
    np.random.default_rng(seed).shuffle(lines)
    return "\n".join(lines) + "\n"


# ---- 2. adaptation, 3. measurement ------------------------------------------------------------------
def adapt(method, base_dir, base_params, train, test, latency_idx, tokenizer, args):
    """Fine-tune a fresh copy of the pretrained model with ``method``; returns its row of the table."""
    model = GPT.from_pretrained(base_dir)
    if method.lora is not None:
        model = get_peft_model(model, method.lora, rng=backend.default_rng(args.seed))
    trainable, _ = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    batch_size, steps = FINETUNE["batch_size"], args.finetune_steps or method.steps

    # Measured on the untrained copy: a step costs the same before and after training.
    step_ms, peak_bytes = measure_step(model, data.random_rows(*train, batch_size, np.random.default_rng(args.seed)))

    # No weight decay for LoRA: decaying A and B pulls the model back towards the base, not towards small weights.
    fit(model, AdamW(params, lr=method.lr, weight_decay=0.0 if method.lora else 0.01),
        get_batch=lambda rng: data.random_rows(*train, batch_size, rng), steps=steps, seed=args.seed, clip=1.0,
        schedule=lambda s: warmup_cosine(s, min(FINETUNE["warmup"], steps), steps, method.lr, method.lr / 10))
    metrics = generation_metrics(model, tokenizer, test)

    # LoRA's save_pretrained writes only A and B; a GPT's writes every weight.
    folder = os.path.join(args.out, method.folder)
    model.save_pretrained(folder)
    if method.lora is None:  # a full model opens on its own; an adapter takes the base's tokenizer
        tokenizer.save(os.path.join(folder, data.CHAR_TOKENIZER_FILE))
    weights = "model.safetensors" if method.lora is None else "adapter_model.safetensors"
    row = {"method": method.name, "steps": steps, "trainable": trainable, "trainable_percent": 100.0 * trainable / base_params,
           "file_bytes": os.path.getsize(os.path.join(folder, weights)), **metrics,
           "step_ms": step_ms, "peak_bytes": peak_bytes, "infer_ms": latency_ms(model, latency_idx), "merged_ms": None}
    if method.lora is not None:
        model.merge_adapter()
        row["merged_ms"] = latency_ms(model, latency_idx)
        model.unmerge_adapter()
        row["paper_count"] = 2 * len(lora_layers(model)) * MODEL.n_embd * method.lora.r  # 2 L̂ d r, d x d matrices
    return row


def measure_step(model, batch, timed_steps=5):
    """(median milliseconds per optimizer step, peak training bytes) for training steps on ``batch``.

    A throwaway AdamW with lr=0 does all of a real step's work (gradients, moments,
    update) without moving a weight, so measuring leaves the model as it was.
    Peak bytes = the model's weights + the most that a step holds on top of them
    (gradients, optimizer moments, activations).
    """
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step():
        optimizer.zero_grad()
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()

    model.train()
    peak = peak_training_bytes(model, lambda: [step() for _ in range(2)])  # the 2nd step holds the moments
    times = []
    for _ in range(timed_steps):
        start = time.perf_counter()
        step()
        backend.synchronize()  # a GPU step only queues work: wait for it before reading the clock
        times.append(time.perf_counter() - start)
    optimizer.zero_grad()
    return 1000 * statistics.median(times), peak


def peak_training_bytes(model, work):
    """The model's weight bytes + the high-water mark of memory allocated while ``work()`` runs."""
    return sum(p.data.nbytes for p in model.parameters()) + backend.peak_bytes_allocated(work)


def latency_ms(model, idx, repeats=7):
    """Median milliseconds of one forward pass over ``idx`` (B, T) in eval mode, after one warm-up pass."""
    model.eval()
    times = []
    with no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(idx)
            backend.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# ---- 4. the table -----------------------------------------------------------------------------------
def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


COLUMNS = [  # (heading, row key, how to show a value; None shows as "-")
    ("method", "method", str), ("steps", "steps", str), ("trainable", "trainable", "{:,}".format),
    ("% of base", "trainable_percent", "{:.2f}".format), ("file", "file_bytes", _size),
    ("BLEU", "bleu", "{:.1f}".format), ("exact %", "exact_match", "{:.1f}".format),
    ("step ms", "step_ms", "{:.0f}".format), ("peak MB", "peak_bytes", lambda n: f"{n / 1e6:.1f}"),
    ("infer ms", "infer_ms", "{:.1f}".format), ("merged ms", "merged_ms", "{:.1f}".format),
]


def format_table(rows, results):
    """The rows as aligned plain text, with a header line and notes that say how each column was measured."""
    cells = [[heading for heading, _, _ in COLUMNS]]
    cells += [["-" if row[key] is None else show(row[key]) for _, key, show in COLUMNS] for row in rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))) for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    m, pre = MODEL, results["pretraining"]
    lora_rows = [row for row in rows if "paper_count" in row]
    notes = [
        f"GPT: {m.n_layer} layers, d={m.n_embd}, {m.n_head} heads, T={m.block_size}, {results['parameters']:,} parameters; "
        f"pretrained {pre['steps']} steps (loss {pre['final_loss']:.3f}, {'reused from cache' if pre['reused'] else 'trained now'}); "
        f"backend {results['backend']}",
        f"steps: optimizer steps of batch {FINETUNE['batch_size']}, the same batch sequence for every method; "
        f"BLEU / exact match of greedy outputs on {results['eval_examples']} test inputs",
        "file: full checkpoint (base, full fine-tuning) or adapter only (LoRA); "
        "step ms: median of 5 steps; peak MB: weights + the most a training step adds (gradients, Adam moments, activations)",
        f"infer ms: forward of a fixed {results['latency_batch']} batch, unmerged for LoRA; merged ms: after merge_adapter()",
    ] + [f"{row['method']}: {row['trainable']:,} trainable = 2 * L * d * r = {row['paper_count']:,} (the paper's count)"
         for row in lora_rows]
    return "\n".join(lines + [""] + notes)


def _command(args):
    """The command line that reproduces this run."""
    finetune = f" --finetune-steps {args.finetune_steps}" if args.finetune_steps else ""
    return (f"minilora demo --backend {args.backend} --out {args.out} --seed {args.seed} "
            f"--pretrain-steps {args.pretrain_steps}{finetune} --eval-examples {args.eval_examples}")
