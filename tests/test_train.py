"""fit(): it learns, it is deterministic, and its checkpoints resume exactly and survive crashes."""
import os

import numpy as np
import pytest

from minilora import data, to_numpy
from minilora.io import load_safetensors
from minilora.models import GPT, GPTConfig
from minilora.optim import SGD, AdamW, warmup_cosine
from minilora.train import CHECKPOINT_FILE, fit, generation_metrics, mean_loss

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


def test_generation_metrics_on_a_memorised_task():
    tok = data.CharTokenizer.printable()
    splits = data.list_task("reverse", seed=0, n_train=4, n_validation=1, n_test=1, min_items=2, max_items=2)
    idx, targets = data.encode_examples(splits.train, tok, block_size=16)
    model = tiny_gpt(dropout=0.0)
    fit(model, AdamW(model.parameters(), lr=3e-2, weight_decay=0.0), lambda rng: (idx, targets), 150, progress=False)
    metrics = generation_metrics(model, tok, splits.train)
    assert metrics["exact_match"] == 100.0
    assert metrics["bleu"] == 0.0  # right, yet BLEU-4 gives 0 to outputs shorter than four words
