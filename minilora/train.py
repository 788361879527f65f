"""The training loop: ``fit``, with a progress bar, periodic evaluation and resumable checkpoints.

    history = fit(model, AdamW(model.parameters(), lr=1e-3),
                  get_batch=lambda rng: data.random_windows(tokens, 32, 64, rng),
                  steps=1000, schedule=lambda s: warmup_cosine(s, 100, 1000, 1e-3, 1e-4),
                  checkpoint_dir="runs/pretrain")
    history[-1]   # {"step": 1000, "loss": 1.23, "lr": 0.0001, "time": 118.4}

Determinism: the batches come from one ``numpy.random.Generator`` (seeded by
``seed``) that fit hands to ``get_batch``; dropout masks come from the model's
own generators. A checkpoint saves the weights, the optimizer state, the step,
the history and the state of every one of those generators, so a run resumed
from it continues the same trajectory, bit for bit.
"""
import json
import os
import time

import numpy as np

from . import backend
from .autograd import no_grad
from .io import load_safetensors, save_safetensors
from .optim import clip_grad_norm

CHECKPOINT_FILE = "checkpoint.safetensors"
_FORMAT = "minilora-training-checkpoint-v1"


def fit(model, optimizer, get_batch, steps, *, seed=0, schedule=None, clip=None, eval_every=None, eval_fn=None,
        checkpoint_dir=None, checkpoint_every=None, resume=True, log_every=10, progress=True):
    """Train ``model`` for ``steps`` optimizer steps in total; returns the history, one dict per step.

    get_batch(rng) -> (idx, targets): int arrays (B, T); draw only from ``rng``.
    model(idx, targets) -> (logits, loss), as GPT.
    schedule(step) -> learning rate for that (0-based) step; None keeps optimizer.lr.
    clip: max global gradient norm (clip_grad_norm), or None.
    eval_fn(model) -> dict of numbers, run every ``eval_every`` steps and after the last one,
        in eval mode under no_grad; its results join that step's history entry.
    checkpoint_dir: where ``checkpoint.safetensors`` is written every ``checkpoint_every``
        steps and at the end; with ``resume=True`` an existing one is continued.
    log_every: how often the loss is read back from the device (a host sync) and shown.

    Each history entry is {"step": s (1-based: steps done), "loss", "lr", "time"
    (seconds of training so far), **eval results}.
    """
    backend.retain_host_memory()
    rng = backend.default_rng(seed)
    history, start, elapsed = [], 0, 0.0
    path = os.path.join(checkpoint_dir, CHECKPOINT_FILE) if checkpoint_dir else None
    if path and resume and os.path.exists(path):
        start, history, elapsed = load_checkpoint(path, model, optimizer, rng)
    bar = _progress_bar(steps, start) if progress else None
    model.train()
    pending = []  # (step, lr, time, loss as a device array): read back in one go every log_every steps
    tokens, since, clock = 0, 0, time.perf_counter()
    began = clock - elapsed
    for step in range(start, steps):
        if schedule is not None:
            optimizer.lr = schedule(step)
        idx, targets = get_batch(rng)
        optimizer.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        if clip is not None:
            clip_grad_norm(optimizer.params, clip)
        optimizer.step()
        pending.append((step + 1, optimizer.lr, time.perf_counter() - began, loss.data))
        tokens, since, done = tokens + int(np.size(idx)), since + 1, step + 1
        if done % log_every == 0 or done == steps:
            _flush(pending, history)
            now = time.perf_counter()
            if bar is not None:
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", lr=f"{optimizer.lr:.2e}",
                                ms_per_step=f"{1000 * (now - clock) / since:.0f}", tok_per_s=f"{tokens / (now - clock):.0f}")
            tokens, since, clock = 0, 0, now
        if bar is not None:
            bar.update(1)
        if eval_fn is not None and (done == steps or (eval_every and done % eval_every == 0)):
            _flush(pending, history)
            history[-1].update(evaluate(model, eval_fn))
            (bar.write if bar is not None else print)(
                f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k not in ("step", "time")))
        if path and (done == steps or (checkpoint_every and done % checkpoint_every == 0)):
            _flush(pending, history)
            save_checkpoint(path, model, optimizer, rng, done, history, time.perf_counter() - began)
    _flush(pending, history)
    if bar is not None:
        bar.close()
    return history


def _flush(pending, history):
    """Move pending losses to the history, reading them from the device with one transfer."""
    if not pending:
        return
    xp = backend.array_module(pending[0][3])
    losses = backend.to_numpy(xp.stack([loss for *_, loss in pending]))
    for (step, lr, seconds, _), loss in zip(pending, losses):
        history.append({"step": step, "loss": float(loss), "lr": float(lr), "time": seconds})
    pending.clear()


def _progress_bar(total, initial):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("fit's progress bar needs tqdm. Fix: pip install tqdm, or call fit(..., progress=False).") from None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def evaluate(model, eval_fn):
    """eval_fn(model) in eval mode (dropout off) under no_grad; the model's modes are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            return {k: float(v) for k, v in eval_fn(model).items()}
    finally:
        for m, training in modes:
            m.training = training


# ---- evaluation helpers ------------------------------------------------------------------------
def mean_loss(model, idx, targets, batch_size=64):
    """The loss over all rows of (idx, targets) (N, T), token-weighted, in batches; call under no_grad."""
    total, count = 0.0, 0
    for i in range(0, len(idx), batch_size):
        batch_targets = targets[i:i + batch_size]
        n = int((batch_targets != -100).sum())
        if n:
            _, loss = model(idx[i:i + batch_size], batch_targets)
            total += float(loss.item()) * n
            count += n
    return total / max(count, 1)


def complete(model, tokenizer, prompts, stop="\n", max_new_tokens=None):
    """Greedy completions of ``prompts`` (strings), each cut at the first ``stop``.

    Prompts of one length go through ``model.generate`` together; each may grow
    to the model's block size (or by ``max_new_tokens``).
    """
    block_size = model.config.block_size
    by_length = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(tokenizer.encode(prompt)), []).append(i)
    outputs = [None] * len(prompts)
    for length, members in sorted(by_length.items()):
        new = block_size - length if max_new_tokens is None else max_new_tokens
        if new <= 0:
            raise ValueError(f"complete: a prompt of {length} tokens leaves no room in block_size={block_size}")
        idx = np.array([tokenizer.encode(prompts[i]) for i in members], dtype=np.int64)  # (b, length)
        out = model.generate(idx, new, greedy=True)  # (b, length + new)
        for i, row in zip(members, out):
            outputs[i] = tokenizer.decode(row[length:]).split(stop)[0]
    return outputs


def generation_metrics(model, tokenizer, examples):
    """Exact match and corpus BLEU (0..100) of greedy completions of ``examples`` against their references."""
    from .data import corpus_bleu, exact_match

    predictions = complete(model, tokenizer, [e.prompt for e in examples])
    references = [e.references for e in examples]
    return {"exact_match": exact_match(predictions, references), "bleu": corpus_bleu(predictions, references)}


# ---- checkpoints ---------------------------------------------------------------------------------
def _generators(model):
    """{"module.path.attribute": Generator} for every numpy Generator a module holds (dropout's, say)."""
    found = {}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, np.random.Generator):
                found[f"{name}.{attribute}" if name else attribute] = value
    return found


def save_checkpoint(path, model, optimizer, rng, step, history, elapsed):
    """Write everything needed to resume at ``step`` into one safetensors file, atomically.

    Arrays: "model.<name>" for each weight, "optimizer.<i>.<name>" for each state
    array. Metadata (JSON strings): the step, the history, the optimizer's
    hyperparameters and counters, and the generators' bit_generator states.
    """
    arrays = {f"model.{name}": a for name, a in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    counters = {}
    for i, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if np.ndim(value) == 0:
                counters.setdefault(str(i), {})[name] = int(value)
            else:
                arrays[f"optimizer.{i}.{name}"] = value
    generators = {"data": rng.bit_generator.state, **{k: g.bit_generator.state for k, g in _generators(model).items()}}
    metadata = {
        "format": _FORMAT, "step": step, "elapsed": elapsed, "history": history,
        "optimizer": {"type": type(optimizer).__name__, "hyperparameters": optimizer_state["hyperparameters"], "counters": counters},
        "generators": generators,
    }
    save_safetensors(path, arrays, {k: json.dumps(v) for k, v in metadata.items()})


def load_checkpoint(path, model, optimizer, rng):
    """Restore a checkpoint of ``save_checkpoint`` in place; returns (step, history, elapsed seconds)."""
    arrays, metadata = load_safetensors(path)
    if metadata.get("format") != json.dumps(_FORMAT):
        raise ValueError(
            f"{path} is a safetensors file but not a minilora training checkpoint (format={metadata.get('format')!r}). "
            "Fix: point checkpoint_dir at a folder written by fit(), or pass resume=False to start afresh."
        )
    meta = {k: json.loads(v) for k, v in metadata.items()}
    if meta["optimizer"]["type"] != type(optimizer).__name__:
        raise ValueError(f"{path} was written with {meta['optimizer']['type']}, but this run uses {type(optimizer).__name__}. Fix: use the same optimizer class.")
    model.load_state_dict({k[len("model."):]: a for k, a in arrays.items() if k.startswith("model.")})
    state = {}
    for key, array in arrays.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state.setdefault(i, {})[name] = array
    for i, counters in meta["optimizer"]["counters"].items():
        state.setdefault(i, {}).update(counters)
    optimizer.load_state_dict({"hyperparameters": meta["optimizer"]["hyperparameters"], "state": state})
    generators = _generators(model)
    missing = sorted(set(generators) - set(meta["generators"]))
    if missing:
        raise ValueError(f"{path} has no random state for {missing}. Fix: resume with the model the checkpoint was written from.")
    rng.bit_generator.state = meta["generators"]["data"]
    for name, generator in generators.items():
        generator.bit_generator.state = meta["generators"][name]
    return meta["step"], meta["history"], meta["elapsed"]
