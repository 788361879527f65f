"""The minilora command: --help, a tiny pretrain run, resume, and generate."""
import json
import os

import pytest

from minilora.cli import main

TINY = ["--steps", "5", "--batch-size", "4", "--sentences", "200", "--n-layer", "1", "--n-embd", "16",
        "--n-head", "2", "--block-size", "16", "--eval-every", "5", "--no-progress"]


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["generate", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 0
    assert "usage: minilora" in capsys.readouterr().out


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "pretrain" in capsys.readouterr().out


def test_pretrain_then_generate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY]) == 0
    assert {"config.json", "model.safetensors", "char_tokenizer.json", "checkpoint.safetensors", "history.json"} <= set(os.listdir(out))
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5] and "val_loss" in history[-1]
    assert f"saved the model to {out}" in capsys.readouterr().out

    assert main(["pretrain", "--out", str(out), *TINY[:1], "7", *TINY[2:]]) == 0  # 7 steps: resumes at 5
    assert "resuming from" in capsys.readouterr().out
    assert len(json.loads((out / "history.json").read_text())) == 7

    assert main(["generate", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("The ") and len(text) >= 4
    assert main(["generate", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "5", "--greedy"]) == 0


def test_demo_is_registered_and_keeps_the_top_level_backend(capsys):
    from minilora.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "LoRA r=8" in capsys.readouterr().out
    # Parsing only: the choice before the subcommand must survive the demo's own --backend option.
    assert build_parser().parse_args(["--backend", "cupy", "demo"]).backend == "cupy"
    assert build_parser().parse_args(["demo", "--backend", "cupy"]).backend == "cupy"
    assert build_parser().parse_args(["demo"]).backend is None
