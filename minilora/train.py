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
    """Restore a checkpoint of ``save_checkpoint`` in place; returns (step, history, elapsed seconds).

    Everything is read and checked before anything changes: a damaged file, or one
    written for another model, raises a ValueError that names the file and what is
    wrong, and leaves the model, the optimizer and the generators as they were.
    """
    arrays, metadata = load_safetensors(path)
    if metadata.get("format") != json.dumps(_FORMAT):
        raise ValueError(
            f"{path} is a safetensors file but not a minilora training checkpoint (format={metadata.get('format')!r}). "
            "Fix: point checkpoint_dir at a folder written by fit(), or pass resume=False to start afresh."
        )
    meta = _read_metadata(path, metadata)
    if meta["optimizer"]["type"] != type(optimizer).__name__:
        raise ValueError(f"{path} was written with {meta['optimizer']['type']}, but this run uses {type(optimizer).__name__}. Fix: use the same optimizer class.")
    model_state, state = {}, {}
    problems = [f"no optimizer hyperparameter {name!r}"
                for name in optimizer.hyperparameters() if name not in meta["optimizer"]["hyperparameters"]]
    for key, array in arrays.items():
        kind, _, name = key.partition(".")
        i, _, entry = name.partition(".")
        if kind == "model":
            model_state[name] = array
        elif kind == "optimizer" and i.isdigit() and entry:
            state.setdefault(i, {})[entry] = array
        else:
            problems.append(f"unexpected tensor {key}")
    for i, counters in meta["optimizer"]["counters"].items():
        if not (str(i).isdigit() and isinstance(counters, dict)):
            problems.append(f"damaged optimizer counters {i!r}: {counters!r}")
        else:
            state.setdefault(i, {}).update(counters)
    own = {name: p.shape for name, p in model.named_parameters()}
    problems += [f"missing tensor model.{name}" for name in own if name not in model_state]
    problems += [f"unexpected tensor model.{name}" for name in model_state if name not in own]
    problems += [f"model.{name} has shape {array.shape}, the model {own[name]}"
                 for name, array in model_state.items() if name in own and array.shape != own[name]]
    generators = {"data": rng, **_generators(model)}
    for name, generator in generators.items():
        try:
            type(generator.bit_generator)().state = meta["generators"][name]  # a throwaway: does the state fit?
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"no usable random state for {name!r} ({type(error).__name__}: {error})")
    if problems:
        raise _unusable(path, problems)
    # The optimizer's own checks come last; it changes nothing unless they pass, and after it nothing can fail.
    try:
        optimizer.load_state_dict({"hyperparameters": meta["optimizer"]["hyperparameters"], "state": state})
    except ValueError as error:
        raise _unusable(path, [str(error).partition(" Fix: ")[0]]) from None  # its fix speaks of state dicts, ours of files
    model.load_state_dict(model_state)
    for name, generator in generators.items():
        generator.bit_generator.state = meta["generators"][name]
    return meta["step"], meta["history"], meta["elapsed"]


# What each metadata entry must be (JSON-decoded), and the entries of "optimizer".
_METADATA = {"step": int, "elapsed": (int, float), "history": list, "optimizer": dict, "generators": dict}
_OPTIMIZER_METADATA = {"type": str, "hyperparameters": dict, "counters": dict}


def _read_metadata(path, metadata):
    """The checkpoint's metadata, each entry decoded from JSON and checked against _METADATA; damage raises."""
    meta, problems = {}, []
    for key, kind in _METADATA.items():
        if key not in metadata:
            problems.append(f"no metadata entry {key!r}")
            continue
        try:
            meta[key] = json.loads(metadata[key])
        except json.JSONDecodeError as error:
            problems.append(f"metadata entry {key!r} is not valid JSON ({error})")
            continue
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            problems.append(f"metadata entry {key!r} is {meta[key]!r:.60}, not of type {getattr(kind, '__name__', 'number')}")
    optimizer = meta.get("optimizer")
    if isinstance(optimizer, dict):
        problems += [f"metadata entry 'optimizer' has no {key!r} {kind.__name__}"
                     for key, kind in _OPTIMIZER_METADATA.items() if not isinstance(optimizer.get(key), kind)]
    if problems:
        raise _unusable(path, problems)
    return meta


def _unusable(path, problems):
    """The error for a checkpoint that cannot be resumed: the file, every problem, and what to do."""
    listed = "; ".join(problem.rstrip(".") for problem in problems[:8])
    listed += f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
    return ValueError(
        f"{path} cannot be resumed: {listed}. The file is damaged, or it was written for another model. "
        "Fix: point to an intact copy (or resume with the model it was written from), or start over: "
        "--fresh on the command line, resume=False in fit()."
    )
