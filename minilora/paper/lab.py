"""The shared bench of ``minilora paper``: the sizes, the pretrained model, cached training runs, and statistics.

    lab = Lab(QUICK, seeds=[0], out="runs/paper", force=False)
    lab.train(Run(("q", "v"), r=8), seed=0)   # {"bleu", "exact_match", "trainable", ...}, cached
    lab.adapter(Run(("q", "v"), r=8), seed=0) # {"blocks.0.attn.q": (ΔW, A, W0), ...}

Every training run and every claim's measurement is saved as JSON in ``out`` with
the settings that produced it; a later run with the same settings reuses it
(unless ``force``), so a crash loses only the run in flight.
"""
import dataclasses
import hashlib
import json
import os
import statistics
import time

import numpy as np

from .. import backend, data
from ..autograd import no_grad
from ..io import load_json, save_json
from ..lora import LoraConfig, count_parameters, get_peft_model, read_adapter
from ..models import GPT, GPTConfig
from ..optim import AdamW, warmup_cosine
from ..train import fit, generation_metrics, mean_loss


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big every experiment is. Learning rates and step counts are chosen on validation in advance (see FULL)."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    pretrain_steps: int
    full_steps: int  # full fine-tuning's steps; every method draws the same batch sequence, a shorter run its start
    lora_steps: int  # every LoRA run's, whatever its rank and matrices
    eval_examples: int  # test inputs whose greedy outputs are scored
    lora_lr: float
    full_lr: float
    lora_alpha: float  # fixed across ranks, as the paper does: the scale alpha / r keeps updates comparable
    checkpoint_widths: tuple  # d of the models whose checkpoint and adapter bytes are compared
    cost_widths: tuple  # d of the models whose training step is timed
    timing_repeats: int  # alternating measurements per setting (latency, step time)
    timing_ms: float  # one latency measurement repeats a forward pass for at least this long
    batch_size: int = 32
    block_size: int = 64  # the E2E task's examples fit in 65 characters

    def model(self, seed=0, n_embd=None):
        """The GPTConfig of this scale, or of the same depth at width ``n_embd`` (heads of 32 channels)."""
        d = n_embd or self.n_embd
        heads = self.n_head if d == self.n_embd else max(1, d // 32)
        return GPTConfig(n_layer=self.n_layer, n_head=heads, n_embd=d, block_size=self.block_size,
                         vocab_size=len(data.PRINTABLE), dropout=0.0, seed=seed)


# The full run: the demo's GPT (2 layers, d = 288: LoRA r=8 on q, v trains 0.9 % of it, and r = 64 is still a low
# rank), 3 seeds x 18 adaptation runs. Pretraining steps, batch, learning rates and steps were chosen on the validation
# split by `minilora paper --search --backend cupy` (search.py, 14 processes; one NVIDIA H200, 2026-11-30, 70 s), the
# same way for full fine-tuning and LoRA r=8 (q, v): pretraining 200 or 600 steps x batch 16 or 32 x lr (full 1e-4,
# 3e-4, 1e-3; LoRA 3e-3, 6e-3, 1e-2, 2e-2), each run capped at 50 s of training on 2 CPU cores (full: 300 steps at
# batch 32, LoRA: 400), validation BLEU every 100 steps. Chosen: pretraining 200 steps, batch 32, full fine-tuning
# 3e-4 for 300 steps (validation BLEU 97.0), LoRA 1e-2 for 400 (78.5, still rising at the cap: 51 / 68 / 78 at
# 200 / 300 / 400). The table of every score is in docs/paper.md.
FULL = Scale("full", n_layer=2, n_head=6, n_embd=288, pretrain_steps=200, full_steps=300, lora_steps=400,
             eval_examples=300, lora_lr=1e-2, full_lr=3e-4, lora_alpha=16, checkpoint_widths=(64, 128, 256, 512, 1024),
             cost_widths=(288, 1024), timing_repeats=15, timing_ms=50, batch_size=32)
# Every claim in a few minutes: the numbers show the machinery works, not what LoRA does.
QUICK = Scale("quick", n_layer=1, n_head=2, n_embd=64, pretrain_steps=30, full_steps=8, lora_steps=8, eval_examples=4,
              lora_lr=1e-2, full_lr=1e-3, lora_alpha=16, checkpoint_widths=(64, 128, 256),
              cost_widths=(64,), timing_repeats=5, timing_ms=5, batch_size=8)
RANKS = (1, 2, 4, 8, 16, 64)  # the paper's Table 6
PRETRAIN = {"lr": 3e-3, "warmup": 30, "batch_size": 32, "text_seed": 0}  # AdamW, warmup + cosine to a tenth, clip 1.0
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")  # what the pretrained model depends on, with pretrain_steps
TRAINING_FIELDS = ("full_steps", "lora_steps", "batch_size", "eval_examples", "lora_lr", "full_lr", "lora_alpha")  # and a run
WARMUP = 10  # adaptation: a linear warmup over this many steps, then a constant learning rate


@dataclasses.dataclass(frozen=True)
class Run:
    """One way to adapt the pretrained model: full fine-tuning when ``targets`` is empty, else LoRA of rank r."""

    targets: tuple = ()
    r: int = 0

    @property
    def name(self):
        return "full" if not self.targets else f"lora_{'_'.join(self.targets)}_r{self.r}"

    @property
    def label(self):
        return "full fine-tuning" if not self.targets else f"LoRA r={self.r} ({', '.join(self.targets)})"


FULL_FT = Run()


class Lab:
    """Caches, the pretrained model and the task for one ``minilora paper`` invocation."""

    def __init__(self, scale, seeds, out, force=False, backend_name="numpy"):
        self.scale, self.seeds, self.out, self.force, self.backend = scale, list(seeds), out, force, backend_name
        self.redone = set()  # with --force, what this invocation has already redone (claims share runs)
        self.tokenizer = data.CharTokenizer.printable()
        self.splits = data.e2e_task(seed=0, max_len=scale.block_size + 1)  # one split: every seed is scored on the same test set
        self.train_rows = data.encode_examples(self.splits.train, self.tokenizer, scale.block_size)
        self.val_rows = data.encode_examples(self.splits.validation, self.tokenizer, scale.block_size)
        self._base = None
        self._adapters = {}  # (run, seed) -> lab.adapter(run, seed): the Section 7 claims read each one many times

    # ---- the cache ------------------------------------------------------------------------------------
    def cached(self, path, settings, compute):
        """compute()'s JSON-able result, saved in ``path`` with ``settings``; reused while they match (and not force)."""
        key = os.path.abspath(path)
        if os.path.exists(path) and not (self.force and key not in self.redone):
            saved = load_json(path)
            if saved.get("settings") == settings:
                return saved["result"]
        # Through JSON and back, as a cached result comes: the same types and key order (sorted) either way.
        result = json.loads(json.dumps(compute(), sort_keys=True))
        save_json(path, {"settings": settings, "result": result})  # written last: a crash leaves no half result
        self.redone.add(key)
        return result

    def settings(self, *fields, **extra):
        """What determines a result: the scale's ``fields`` (all by default), the backend, the dtype and ``extra``.

        Naming only the fields a result depends on keeps it cached when another setting changes.
        """
        scale = dataclasses.asdict(self.scale)
        return json.loads(json.dumps({"scale": {k: scale[k] for k in fields or scale}, "backend": self.backend,
                                      "dtype": str(backend.get_default_dtype()), **extra}))

    # ---- 1. the pretrained model ------------------------------------------------------------------
    def base(self):
        """The folder of the pretrained GPT (one for every seed: the seeds vary the adaptation), cached."""
        if self._base is None:
            from ..demo import pretraining_text

            settings = self.settings(*MODEL_FIELDS, "pretrain_steps", pretrain=PRETRAIN)
            key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
            folder = os.path.join(self.out, "pretrained", key)

            def pretrain():
                s, p = self.scale, PRETRAIN
                tokens = np.array(self.tokenizer.encode(pretraining_text(p["text_seed"])))
                model = GPT(s.model(seed=0))
                history = fit(model, AdamW(model.parameters(), lr=p["lr"]),
                              lambda rng: data.random_windows(tokens, p["batch_size"], s.block_size, rng),
                              s.pretrain_steps, seed=0, clip=1.0, progress=False,
                              schedule=lambda step: warmup_cosine(step, min(p["warmup"], s.pretrain_steps), s.pretrain_steps,
                                                                  p["lr"], p["lr"] / 10))
                model.save_pretrained(folder)
                return {"final_loss": history[-1]["loss"], "folder": folder}

            self.pretraining = self.cached(os.path.join(folder, "paper_settings.json"), settings, pretrain)
            self._base = folder
        return self._base

    # ---- 2. adaptation runs -----------------------------------------------------------------------
    def run_dir(self, run, seed):
        return os.path.join(self.out, "runs", run.name, f"seed{seed}")

    def train(self, run, seed):
        """Adapt the pretrained model with ``run`` (seed: LoRA's init and the batch order); cached.

        Returns {"bleu", "exact_match" (test split), "val_loss", "trainable", "total", "seconds"}.
        """
        base = self.base()
        folder = self.run_dir(run, seed)
        settings = self.settings(*MODEL_FIELDS, *TRAINING_FIELDS, run=dataclasses.asdict(run), seed=seed,
                                 base=os.path.basename(base))  # the key, not the path: --out may move
        return self.cached(os.path.join(folder, "result.json"), settings, lambda: self._train(run, seed, folder))

    def adapted(self, run, seed):
        """A fresh copy of the pretrained model, with ``run``'s LoRA adapter (not yet trained) unless it is full fine-tuning.

        Each method draws its initialisation from its own stream, seeded by (seed, method). From one
        stream per seed, the r=64 adapter's A would begin with the r=8 adapter's 8 rows, and φ
        would find that shared start rather than what training learned.
        """
        model = GPT.from_pretrained(self.base())
        if not run.targets:
            return model
        config = LoraConfig(r=run.r, lora_alpha=self.scale.lora_alpha, target_modules=list(run.targets))
        return get_peft_model(model, config, rng=backend.default_rng([seed, *run.name.encode()]))

    def finetune(self, run, seed, lr, steps, eval_every=None, eval_fn=None):
        """Adapt a fresh copy of the pretrained model with ``run`` for ``steps`` steps at ``lr``; returns (model, history).

        The same recipe for every method: AdamW without weight decay (decaying LoRA's A and B pulls the model
        back towards the base, not towards small weights), clip 1.0, WARMUP steps of warmup, then a constant
        learning rate, so the first s steps of a run are a run of s steps (the search scores every s in one run).
        fit draws every batch from default_rng(seed): the same batch sequence for every method within a seed.
        eval_fn(model) -> dict runs every ``eval_every`` steps (fit's), its numbers joining the history.
        """
        model = self.adapted(run, seed)
        optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        history = fit(model, optimizer, lambda rng: data.random_rows(*self.train_rows, self.scale.batch_size, rng), steps,
                      seed=seed, clip=1.0, progress=False, schedule=lambda step: lr * min(1.0, (step + 1) / WARMUP),
                      eval_every=eval_every, eval_fn=eval_fn)
        return model, history

    def _train(self, run, seed, folder):
        s, started = self.scale, time.perf_counter()
        lr, steps = (s.lora_lr, s.lora_steps) if run.targets else (s.full_lr, s.full_steps)
        model, _ = self.finetune(run, seed, lr, steps)
        total = sum(p.size for name, p in model.named_parameters() if "lora_" not in name)
        trainable, _ = count_parameters(model)
        model.eval()
        with no_grad():
            val_loss = mean_loss(model, *self.val_rows)
        metrics = generation_metrics(model, self.tokenizer, self.splits.test[: s.eval_examples])
        if run.targets:
            model.save_pretrained(folder)  # adapter_model.safetensors: A and B, for the Section 7 claims
        return {**metrics, "val_loss": val_loss, "trainable": trainable, "total": total, "steps": steps,
                "seconds": time.perf_counter() - started}

    def adapter(self, run, seed):
        """{layer name: (ΔW (d, k), A (r, k), W0 (d, k))} of a trained LoRA run, in float64 on the host."""
        if (run, seed) in self._adapters:
            return self._adapters[run, seed]
        self.train(run, seed)
        config, arrays = read_adapter(self.run_dir(run, seed))
        base = GPT.from_pretrained(self.base()).state_dict()
        found = {}
        for key, A in arrays.items():
            if key.endswith(".lora_A.weight"):
                name = key[: -len(".lora_A.weight")]
                A = np.asarray(A, dtype=np.float64)
                B = np.asarray(arrays[f"{name}.lora_B.weight"], dtype=np.float64)
                W0 = backend.to_numpy(base[f"{name}.weight"]).astype(np.float64)
                found[name] = (config.scaling(run.r, config.lora_alpha) * B @ A, A, W0)
        self._adapters[run, seed] = dict(sorted(found.items()))
        return self._adapters[run, seed]


# ---- statistics ---------------------------------------------------------------------------------------
def mean_spread(values):
    """(mean, sample standard deviation; 0.0 for one value) of a list of numbers."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def show(values, digits=1):
    """'mean ± spread' of a list of numbers (the spread is one sample standard deviation over seeds)."""
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def median_iqr(values):
    """(median, half the interquartile range) of timings: robust to the odd slow repeat on a busy machine.

    Half, so that median ± it spans the middle half of the repeats, as mean ± spread does for seeds.
    """
    q1, q2, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q2), float(q3 - q1) / 2
