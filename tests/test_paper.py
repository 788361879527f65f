"""minilora paper: --quick runs every claim, writes a complete report and valid plots, and caches its runs.

No test here asserts that a claim holds: that is what the report says.
"""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from minilora import paper, to_numpy
from minilora.cli import build_parser
from minilora.cli_options import MissingExtraError
from minilora.analysis import subspace_similarity
from minilora.lora import read_adapter
from minilora.paper import lab as lab_module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def paper_args(*argv):
    """Parse ``minilora paper ARGV`` with the command's own parser."""
    return build_parser().parse_args(["paper", *argv])


def quality_numbers(claims):
    """Every BLEU and exact-match value of the training claims."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("bleu", "exact_match"):
                    found.extend(value)
                else:
                    walk(value)
    for name in ("quality", "rank", "budget"):
        walk(claims[name]["result"])
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    started = time.perf_counter()
    results = paper.run_paper(paper_args("--quick", "--seeds", "1", "--out", str(out)))
    return out, results, time.perf_counter() - started


def test_quick_report_has_every_claim(quick_run):
    out, results, seconds = quick_run
    assert [c["number"] for c in results["claims"].values()] == list(range(1, 9))
    report = (out / "report.md").read_text()
    for claim in paper.CLAIMS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {paper.CLAIMS.index(claim) + 1} |"))
        assert claim.TITLE in row and claim.PAPER in row
        assert row.split(" | ")[4] in ("yes", "partly", "**no**")
    assert "--quick run" in report  # the report says its numbers mean little
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["claims"]) == {claim.NAME for claim in paper.CLAIMS}
    print(f"minilora paper --quick --seeds 1 took {seconds:.0f} s")


def test_quick_numbers_are_sane(quick_run):
    out, results, _ = quick_run
    claims = results["claims"]
    numbers = quality_numbers(claims)
    assert len(numbers) >= 2 * (2 + 12 + 7)  # BLEU and exact match of every run
    assert all(math.isfinite(x) and 0 <= x <= 100 for x in numbers)
    sub = claims["subspace"]["result"]
    for key in ("r8_r64", "seeds_r64", "random_8_64", "random_64_64"):
        grids = list(sub[key].values()) if isinstance(sub[key], dict) else [sub[key]]
        for grid in grids:
            assert np.all((np.asarray(grid) >= -1e-9) & (np.asarray(grid) <= 1 + 1e-9)), key
    # φ of a trained adapter with itself is 1 everywhere.
    _, arrays = read_adapter(out / "runs" / "lora_q_v_r8" / "seed0")
    A = next(a for name, a in arrays.items() if name.endswith("lora_A.weight"))
    np.testing.assert_allclose(subspace_similarity(A, A), np.ones((8, 8)), atol=1e-9)
    for rank in claims["amplification"]["result"].values():
        assert all(math.isfinite(x) and x > 0 for x in rank["factor"])


def test_every_plot_is_a_png(quick_run):
    import matplotlib.image

    out, results, _ = quick_run
    for claim in results["claims"].values():
        path = out / claim["plot"]
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
        height, width, _ = matplotlib.image.imread(path).shape  # decodes the whole image
        assert height > 200 and width > 400


def test_second_run_reuses_the_cache_and_force_redoes_it(quick_run, monkeypatch):
    out, first, _ = quick_run
    trained = []
    real_train = lab_module.Lab._train

    def counting_train(self, run, seed, folder):
        trained.append((run.name, seed))
        return real_train(self, run, seed, folder)

    monkeypatch.setattr(lab_module.Lab, "_train", counting_train)
    for claim in paper.CLAIMS:
        monkeypatch.setattr(claim, "measure", lambda lab, name=claim.NAME: pytest.fail(f"{name} measured again"))
    again = paper.run_paper(paper_args("--quick", "--seeds", "1", "--out", str(out)))
    assert trained == []
    assert again["claims"]["quality"]["result"] == first["claims"]["quality"]["result"]
    assert again["claims"]["budget"]["measured"] == first["claims"]["budget"]["measured"]

    monkeypatch.undo()
    monkeypatch.setattr(lab_module.Lab, "_train", counting_train)
    before = os.path.getmtime(out / "claims" / "checkpoint.json")
    redone = paper.run_paper(paper_args("--quick", "--seeds", "1", "--out", str(out), "--force",
                                        "--claims", "quality", "checkpoint"))
    assert sorted(trained) == [("full", 0), ("lora_q_v_r8", 0)]  # each run once, though claims share runs
    assert os.path.getmtime(out / "claims" / "checkpoint.json") > before
    assert set(redone["claims"]) == {"quality", "checkpoint"}


def test_without_matplotlib_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingExtraError, match=r'^paper needs matplotlib, which is not installed\. Fix: pip install "minilora\[paper\]"$'):
        paper.run_paper(paper_args("--quick", "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_bad_seed_count_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        paper_args("--seeds", "0")
    assert "--seeds: must be at least 1, got 0" in capsys.readouterr().err
    args = paper_args("--out", str(tmp_path))
    args.seeds = 0  # a Python caller that skips the parser is told too
    with pytest.raises(ValueError, match="--seeds must be at least 1, got 0"):
        paper.run_paper(args)


def test_every_method_draws_its_own_initialisation(quick_run):
    out, _, _ = quick_run
    lab = lab_module.Lab(lab_module.QUICK, [0], str(out))
    r8, r64 = (lab.adapted(lab_module.Run(("q", "v"), r), seed=0) for r in (8, 64))
    A8, A64 = (to_numpy(m.model.blocks[0].attn.q.lora_A["default"].data) for m in (r8, r64))
    assert not np.isclose(A8, A64[:8]).all(axis=1).any()  # no row of A_r=8 starts A_r=64
    again = to_numpy(lab.adapted(lab_module.Run(("q", "v"), 8), seed=0).model.blocks[0].attn.q.lora_A["default"].data)
    np.testing.assert_array_equal(A8, again)  # and the same seed gives the same start
    full = lab.adapted(lab_module.FULL_FT, seed=0)
    assert sum(p.size for p in full.parameters()) == lab.train(lab_module.FULL_FT, 0)["total"]


def test_module_entry_point_and_help():
    done = subprocess.run([sys.executable, "-m", "minilora.paper", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--claims", "--seeds", "--quick", "--backend", "--out", "--force"):
        assert option in done.stdout


def test_latency_models_keep_the_model_dtype(quick_run):
    # A float64 B (numpy's default) once made the merged W float64, and the merged model slower than the base.
    out, _, _ = quick_run
    from minilora.paper import latency

    lab = lab_module.Lab(lab_module.QUICK, [0], str(out))
    for name, model in latency._models(lab).items():
        assert {str(p.data.dtype) for p in model.parameters()} == {"float32"}, name


def test_every_method_draws_the_same_batches(quick_run, monkeypatch):
    out, _, _ = quick_run
    lab = lab_module.Lab(lab_module.QUICK, [0], str(out))
    drawn = []
    real_random_rows = lab_module.data.random_rows

    def recording(idx, targets, batch_size, rng):
        rows = real_random_rows(idx, targets, batch_size, rng)
        drawn[-1].append(to_numpy(rows[0]).copy())
        return rows

    monkeypatch.setattr(lab_module.data, "random_rows", recording)
    for run, steps in ((lab_module.FULL_FT, 3), (lab_module.Run(("q", "v"), 8), 5), (lab_module.Run(("k",), 1), 5)):
        drawn.append([])
        lab.finetune(run, seed=1, lr=1e-3, steps=steps)
    full, lora, other = drawn
    assert len(full) == 3 and len(lora) == 5
    for a, b, c in zip(full, lora, other):  # a shorter run sees the start of the same sequence
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
    drawn.append([])
    lab.finetune(lab_module.FULL_FT, seed=2, lr=1e-3, steps=1)
    assert not np.array_equal(drawn[-1][0], full[0])  # another seed, another order


def test_search_choose_takes_the_fewest_steps_near_the_best():
    def rec(p, b, family, lr, step, bleu):
        return {"pretrain_steps": p, "batch_size": b, "family": family, "lr": lr, "step": step, "val_bleu": bleu}

    records = [rec(200, 32, "full", 1e-3, 100, 80.0), rec(200, 32, "full", 1e-3, 200, 90.0),
               rec(200, 32, "full", 3e-4, 100, 89.0), rec(200, 32, "full", 3e-4, 200, 88.0),
               rec(200, 32, "lora", 1e-2, 100, 40.0), rec(200, 32, "lora", 1e-2, 200, 60.0),
               rec(600, 32, "full", 1e-3, 100, 95.0), rec(600, 32, "lora", 1e-2, 100, 30.0)]
    from minilora.paper.search import choose

    chosen = choose(records, tolerance=2.0)
    # (200, 32): full's best 90; 89 at step 100 is within 2, so lr 3e-4 for 100 steps. Mean of bests: (90 + 60) / 2
    # beats (600, 32)'s (95 + 30) / 2.
    assert (chosen["pretrain_steps"], chosen["batch_size"]) == (200, 32)
    assert chosen["full"] == {"lr": 3e-4, "steps": 100, "val_bleu": 89.0, "best_val_bleu": 90.0}
    assert chosen["lora"]["steps"] == 200 and chosen["lora"]["lr"] == 1e-2


def test_search_scores_the_validation_split_only(tmp_path, monkeypatch):
    import argparse

    import minilora.train
    from minilora.paper import search

    scored = []
    real = minilora.train.generation_metrics

    def recording(model, tokenizer, examples):
        scored.append([e.prompt for e in examples])
        return real(model, tokenizer, examples[:2])

    monkeypatch.setattr(minilora.train, "generation_metrics", recording)
    args = argparse.Namespace(out=str(tmp_path), backend="numpy")
    configs = [(30, 8, "full", 1e-3), (30, 8, "lora", 1e-2)]
    results = search.run_search(args, configs=configs, base_scale=lab_module.QUICK, steps=2, workers=1)
    validation = [e.prompt for e in lab_module.Lab(lab_module.QUICK, [0], str(tmp_path)).splits.validation]
    assert scored and all(prompts == validation for prompts in scored)
    assert [(r["family"], r["step"]) for r in results["records"]] == [("full", 2), ("lora", 2)]
    assert json.loads((tmp_path / "search.json").read_text())["chosen"]["pretrain_steps"] == 30
