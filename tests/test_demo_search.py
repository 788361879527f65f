"""demo --search: the pick is made on validation scores alone, and the test split is never read."""
import argparse
import json

import pytest

from minilora import demo, demo_search, train
from minilora.cli import main
from minilora.demo import METHODS, add_demo_arguments
from minilora.demo_search import choose


def test_choose_takes_the_fewest_steps_near_the_best():
    records = [{"method": "m", "lr": lr, "step": step, "val_bleu": bleu}
               for lr, curve in ((0.1, [10.0, 50.0, 50.5]), (0.01, [49.0, 20.0, 20.0])) for step, bleu in zip((1, 2, 3), curve)]
    assert choose(records, tolerance=0.0)["m"] == {"lr": 0.1, "steps": 3, "val_bleu": 50.5, "best_val_bleu": 50.5}
    assert choose(records, tolerance=0.5)["m"]["steps"] == 2  # 50.0 is within 0.5 of 50.5, a step earlier
    assert choose(records, tolerance=2.0)["m"] == {"lr": 0.01, "steps": 1, "val_bleu": 49.0, "best_val_bleu": 50.5}
    tie = records + [{"method": "m", "lr": 0.001, "step": 3, "val_bleu": 50.5}]
    assert choose(tie, tolerance=0.0)["m"]["lr"] == 0.001  # the same score and steps: the smaller learning rate


def test_search_scores_validation_only_and_picks_by_it(tmp_path, monkeypatch):
    splits = demo.task_splits()
    scored, trained = [], []

    def fake_metrics(model, tokenizer, examples):  # a made-up score that rises with each evaluation
        scored.append([e.prompt for e in examples])
        return {"bleu": float(len(scored) % 4), "exact_match": 0.0}

    encode = demo.data.encode_examples

    def recording_encode(examples, *rest, **kw):
        trained.append({e.prompt for e in examples})
        return encode(examples, *rest, **kw)

    monkeypatch.setattr(train, "generation_metrics", fake_metrics)
    monkeypatch.setattr(demo.data, "encode_examples", recording_encode)
    args = add_demo_arguments(argparse.ArgumentParser()).parse_args(["--out", str(tmp_path), "--pretrain-steps", "1", "--search"])
    args.backend = "numpy"
    results = demo_search.search(args, learning_rates=(1e-3, 1e-2), max_steps=2, every=1)

    validation = [e.prompt for e in splits.validation]
    assert scored == [validation] * (len(METHODS) * 2 * 2)  # every evaluation scores the whole validation split, nothing else
    assert trained == [{e.prompt for e in splits.train}]
    test_prompts = {e.prompt for e in splits.test}
    assert not test_prompts & set(validation) and not test_prompts & trained[0]

    records = results["records"]
    assert [(r["lr"], r["step"]) for r in records[:4]] == [(1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    assert [r["val_bleu"] for r in records[:4]] == [1.0, 2.0, 3.0, 0.0]
    assert results["chosen"] == choose(records)
    assert results["chosen"][METHODS[0].name]["lr"] == 1e-2 and results["chosen"][METHODS[0].name]["steps"] == 1
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["records"] == records and saved["grid"]["learning_rates"] == [1e-3, 1e-2]


def test_search_is_reached_from_the_demo_command(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo_search, "search", lambda args: seen.append(args.out) or {"chosen": {}})
    assert main(["demo", "--out", str(tmp_path), "--search"]) == 0
    assert seen == [str(tmp_path)]


def test_search_refuses_an_empty_grid(tmp_path):
    args = add_demo_arguments(argparse.ArgumentParser()).parse_args(["--out", str(tmp_path)])
    with pytest.raises(ValueError, match="search: need 1 <= every <= max_steps, got every=5, max_steps=2"):
        demo_search.search(args, max_steps=2, every=5)
