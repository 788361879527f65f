"""fit(): it learns, it is deterministic, and its checkpoints resume exactly and survive crashes."""
import json
import os

import numpy as np
import pytest

from minilora import data, to_numpy
from minilora.io import load_safetensors, save_safetensors
from minilora.models import GPT, GPTConfig
from minilora.optim import SGD, AdamW, warmup_cosine
from minilora.train import CHECKPOINT_FILE, _generators, fit, generation_metrics, load_checkpoint, mean_loss

TOKENS = np.array(data.CharTokenizer.printable().encode(data.pretraining_corpus(300, seed=1)))


def tiny_gpt(dropout=0.1):
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=96, dropout=dropout, seed=3))


def windows(rng):
    return data.random_windows(TOKENS, 4, 16, rng)


def train(steps, dropout=0.1, **kwargs):
    model = tiny_gpt(dropout)
    opt = AdamW(model.parameters(), lr=1e-2)
    schedule = lambda s: warmup_cosine(s, 3, 12, 1e-2, 1e-3)  # noqa: E731
    history = fit(model, opt, windows, steps, seed=5, schedule=schedule, clip=1.0, progress=False, log_every=4, **kwargs)
    return model, history


def test_overfits_one_batch():
    batch = data.random_windows(TOKENS, 2, 16, np.random.default_rng(0))
    model = tiny_gpt(dropout=0.0)
    history = fit(model, AdamW(model.parameters(), lr=3e-2, weight_decay=0.0), lambda rng: batch, 150, progress=False)
    assert history[0]["loss"] > 4.0  # about ln(96) = 4.56 at the start
    assert history[-1]["loss"] < 0.1


def test_same_seed_same_curve():
    _, first = train(8)
    _, second = train(8)
    assert [h["loss"] for h in first] == [h["loss"] for h in second]
    assert [h["step"] for h in first] == list(range(1, 9))
    assert set(first[0]) == {"step", "loss", "lr", "time"}


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full_model, full = train(12)
    train(7, checkpoint_dir=tmp_path)  # "crash" after step 7: only its checkpoint survives
    resumed_model, resumed = train(12, checkpoint_dir=tmp_path)
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]  # bit-identical, dropout included
    assert [h["lr"] for h in resumed] == [h["lr"] for h in full]
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=name)


def test_evaluation_joins_history(tmp_path):
    val = data.random_windows(TOKENS, 8, 16, np.random.default_rng(9))
    _, history = train(6, eval_every=3, eval_fn=lambda m: {"val_loss": mean_loss(m, *val)})
    assert [h["step"] for h in history if "val_loss" in h] == [3, 6]


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    train(4, checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    before = path.read_bytes()

    import safetensors.numpy

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="simulated"):
        train(8, checkpoint_dir=tmp_path, checkpoint_every=6)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]  # no temporary file left behind
    _, metadata = load_safetensors(path)
    assert metadata["step"] == "4"


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    train(2, checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(4, checkpoint_dir=tmp_path)


def test_foreign_checkpoint_and_wrong_optimizer_are_named(tmp_path):
    from minilora.io import save_safetensors

    save_safetensors(tmp_path / CHECKPOINT_FILE, {"x": np.zeros(2)})
    with pytest.raises(ValueError, match="not a minilora training checkpoint"):
        train(2, checkpoint_dir=tmp_path)
    other = tmp_path / "other"
    train(2, checkpoint_dir=other)
    model = tiny_gpt()
    with pytest.raises(ValueError, match="AdamW.*SGD"):
        fit(model, SGD(model.parameters(), lr=0.1), windows, 4, checkpoint_dir=other, progress=False)


def drop(mapping, key):
    del mapping[key]


def edit_json(metadata, key, edit):
    value = json.loads(metadata[key])
    edit(value)
    metadata[key] = json.dumps(value)


# Each damage: (what it does to the arrays and metadata of a checkpoint, what the error must say).
DAMAGES = {
    "no-generators": (lambda arrays, meta: drop(meta, "generators"), "no metadata entry 'generators'"),
    "history-cut": (lambda arrays, meta: meta.update(history=meta["history"][:20]), "metadata entry 'history' is not valid JSON"),
    "step-text": (lambda arrays, meta: meta.update(step='"seven"'), "metadata entry 'step' is 'seven', not of type int"),
    "no-exp_avg": (lambda arrays, meta: drop(arrays, "optimizer.0.exp_avg"),
                   "optimizer state of parameter 0 holds ['exp_avg_sq', 'step'], but AdamW keeps ['exp_avg', 'exp_avg_sq', 'step']"),
    "no-weight": (lambda arrays, meta: drop(arrays, "model.wpe.weight"), "missing tensor model.wpe.weight"),
    "misshapen-weight": (lambda arrays, meta: arrays.update({"model.ln_f.bias": np.zeros(3, np.float32)}),
                         "model.ln_f.bias has shape (3,), the model (16,)"),
    "dropout-generator": (lambda arrays, meta: edit_json(meta, "generators", lambda g: g.pop("drop.rng")),
                          "no usable random state for 'drop.rng'"),
    "data-generator": (lambda arrays, meta: edit_json(meta, "generators", lambda g: g["data"].update(state="x")),
                       "no usable random state for 'data'"),
    "no-eps": (lambda arrays, meta: edit_json(meta, "optimizer", lambda o: o["hyperparameters"].pop("eps")),
               "no optimizer hyperparameter 'eps'"),
    "negative-step": (lambda arrays, meta: edit_json(meta, "optimizer", lambda o: o["counters"]["0"].update(step=-1)),
                      "optimizer counter 'step' of parameter 0 is -1, not an integer >= 0"),
}


def snapshot(model, optimizer, rng):
    """Everything load_checkpoint may change, copied to the host."""
    return {"model": {name: to_numpy(a).copy() for name, a in model.state_dict().items()},
            "optimizer": {i: {k: to_numpy(v).copy() for k, v in s.items()} for i, s in optimizer.state.items()},
            "hyperparameters": optimizer.hyperparameters(), "rng": rng.bit_generator.state,
            "generators": {name: g.bit_generator.state for name, g in _generators(model).items()}}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint_is_named_and_nothing_is_half_loaded(tmp_path, damage):
    edit, expected = DAMAGES[damage]
    train(3, checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    arrays, metadata = load_safetensors(path)
    edit(arrays, metadata)
    save_safetensors(path, arrays, metadata)

    model = tiny_gpt()  # a run in progress, with its own weights, moments and random states
    optimizer = AdamW(model.parameters(), lr=3e-3)
    fit(model, optimizer, windows, 2, seed=9, progress=False)
    rng = np.random.default_rng(11)
    before = snapshot(model, optimizer, rng)
    with pytest.raises(ValueError) as info:
        load_checkpoint(str(path), model, optimizer, rng)
    message = str(info.value)
    assert message.startswith(f"{path} cannot be resumed: ")
    assert expected in message
    assert "Fix: point to an intact copy" in message and "--fresh" in message
    np.testing.assert_equal(snapshot(model, optimizer, rng), before)


def test_generation_metrics_on_a_memorised_task():
    tok = data.CharTokenizer.printable()
    splits = data.list_task("reverse", seed=0, n_train=4, n_validation=1, n_test=1, min_items=2, max_items=2)
    idx, targets = data.encode_examples(splits.train, tok, block_size=16)
    model = tiny_gpt(dropout=0.0)
    fit(model, AdamW(model.parameters(), lr=3e-2, weight_decay=0.0), lambda rng: (idx, targets), 150, progress=False)
    metrics = generation_metrics(model, tok, splits.train)
    assert metrics["exact_match"] == 100.0
    assert metrics["bleu"] == 0.0  # right, yet BLEU-4 gives 0 to outputs shorter than four words
