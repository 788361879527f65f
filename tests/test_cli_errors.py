"""User mistakes on the command line: one line on stderr, a non-zero status, no traceback (unless --debug)."""
import argparse
import os
import shutil
import subprocess
import sys

import pytest

from minilora.cli import build_parser
from test_cli import ROOT, TINY, fails_in_one_line, run_minilora, succeeds, tiny_model  # noqa: F401 (a fixture)


@pytest.mark.parametrize("argv, fragments", [
    (["generate", "--model", "{tmp}/nope"], ["--model", "no such folder"]),
    (["generate", "--model", "{model}", "--top-k", "1000"], ["--top-k 1000", "96 tokens"]),
    (["generate", "--model", "{model}", "--prompt", "naïve"], ["--prompt", "['ï']", "not in the 96-character vocabulary"]),
    (["generate", "--model", "{model}", "--prompt", ""], ["prompt is empty"]),
    (["generate", "--model", "{model}", "--adapter", "{model}"], ["--adapter", "no adapter_config.json"]),
    (["generate", "--model", "{model}", "--adapter", "{tmp}/nope"], ["--adapter", "no such folder"]),
    (["generate", "--model", "{tmp}"], ["no config.json", "model folders inside it: model"]),
    (["pretrain", "--out", "{tmp}/new", "--n-head", "5"], ["--n-embd 128 is not divisible by --n-head 5", "Fix"]),
    (["pretrain", "--out", "{model}", "--steps", "9", *TINY, "--n-embd", "32"], ["another shape", "--fresh"]),
    (["pretrain", "--out", "{tmp}/new", "--sentences", "1"], ["--sentences 1", "--block-size"]),
    (["pretrain", "--out", "{model}/config.json", *TINY], ["is a file, not a folder"]),
    (["demo", "--out", "{model}/config.json"], ["is a file, not a folder"]),
    (["pretrain", "--out", "{model}/config.json/run", *TINY], ["--out {model}/config.json/run: "]),  # cannot be made
    (["generate", "--model", "{interrupted}"], ["holds a training checkpoint", "minilora pretrain --out"]),
    (["generate"], ["the following arguments are required: --model"]),
    (["bogus"], ["invalid choice: 'bogus'"]),
])
def test_a_user_mistake_is_one_line_and_status_2(argv, fragments, tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "model")
    (tmp_path / "interrupted").mkdir()  # a pretrain run stopped before it saved the model
    shutil.copy(tiny_model / "checkpoint.safetensors", tmp_path / "interrupted")
    paths = dict(tmp=tmp_path, model=tmp_path / "model", interrupted=tmp_path / "interrupted")
    fails_in_one_line(run_minilora(*[a.format(**paths) for a in argv]), 2, *[f.format(**paths) for f in fragments])
    assert not (tmp_path / "new").exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["foo", "NUMPY"])
def test_an_unknown_minilora_backend_is_one_line(value, tiny_model):
    result = run_minilora("generate", "--model", tiny_model, env={"MINILORA_BACKEND": value})
    fails_in_one_line(result, 2, f"MINILORA_BACKEND='{value}'", "numpy or cupy")
    # --backend is the user's explicit choice, and overrides the variable
    succeeds(run_minilora("generate", "--model", tiny_model, "--backend", "numpy", "--max-new-tokens", "2",
                          env={"MINILORA_BACKEND": value}))


@pytest.mark.parametrize("argv", [["--debug", "generate", "--model", "nope"], ["generate", "--debug", "--model", "nope"]])
def test_debug_shows_the_traceback(argv):
    result = run_minilora(*argv)
    assert result.returncode != 0 and "Traceback" in result.stderr and "no such folder" in result.stderr


# ---- numbers ------------------------------------------------------------------------------------
NONSENSE = {
    "pretrain": {"--steps": ["-1", "0"], "--batch-size": ["0"], "--lr": ["0", "-1e-3", "nan", "inf"], "--warmup": ["-1"],
                 "--seed": ["-1"], "--sentences": ["0"], "--n-layer": ["0"], "--n-head": ["0"], "--n-embd": ["0"],
                 "--block-size": ["0"], "--eval-every": ["0"], "--checkpoint-every": ["0"]},
    "generate": {"--max-new-tokens": ["-5", "0"], "--temperature": ["0", "-1", "nan"], "--top-k": ["0", "-3"],
                 "--seed": ["-1"]},
    "demo": {"--seed": ["-1"], "--pretrain-steps": ["0"], "--finetune-steps": ["0", "-2"], "--eval-examples": ["0"], "--seeds": ["0"]},
    "paper": {"--seeds": ["0", "-1"]},
    "finetune": {"--steps": ["0"], "--batch-size": ["0"], "--lr": ["0", "nan"], "--r": ["0"], "--lora-alpha": ["-1"],
                 "--eval-examples": ["0"], "--eval-every": ["0"], "--show": ["-1"], "--max-new-tokens": ["0"],
                 "--seed": ["-1"]},
    "chat": {"--max-new-tokens": ["0"], "--temperature": ["-1", "nan", "inf"], "--seed": ["-1"]},
}
CASES = [(sub, option, value) for sub, options in NONSENSE.items() for option, values in options.items() for value in values]


def _numeric_options():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {(name, option) for name, sub in subparsers.choices.items() for action in sub._actions
            if action.type is not None for option in action.option_strings if option.startswith("--")}


def test_every_numeric_option_is_tried_here():
    assert _numeric_options() == {(sub, option) for sub, option, _ in CASES}


@pytest.mark.parametrize("subcommand, option, value", CASES)
def test_a_nonsense_number_is_refused_by_the_parser(subcommand, option, value, tmp_path):
    model = ["--model", tmp_path] if subcommand == "generate" else ["--out", tmp_path / "out"]
    line = fails_in_one_line(run_minilora(subcommand, *model, f"{option}={value}"), 2, f"argument {option}:")
    assert "must be" in line
    assert not (tmp_path / "out").exists()


def test_a_word_for_a_number_is_refused():
    fails_in_one_line(run_minilora("pretrain", "--steps", "many"), 2, "argument --steps: 'many' is not a whole number")


# ---- the extras -----------------------------------------------------------------------------------
@pytest.fixture
def without(tmp_path):
    """without(*modules): a folder to put first on PYTHONPATH in which importing each of ``modules`` fails."""
    def block(*modules):
        folder = tmp_path / "blocked"
        folder.mkdir(exist_ok=True)
        for name in modules:
            (folder / f"{name}.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
        return folder
    return block


@pytest.mark.parametrize("argv, blocked", [
    (["demo", "--pretrain-steps", "1", "--finetune-steps", "1", "--eval-examples", "1"], ["sacrebleu"]),
    (["demo"], ["tqdm", "sacrebleu"]),
    (["pretrain", "--steps", "2", *TINY[:-1]], ["tqdm"]),
    (["pretrain", "--steps", "2", *TINY], ["safetensors"]),
])
def test_a_missing_extra_stops_the_command_before_any_work(argv, blocked, without, tmp_path):
    out = tmp_path / "out"
    result = run_minilora(*argv, "--out", out, path_first=without(*blocked))
    fails_in_one_line(result, 1, ", ".join(blocked), 'pip install "minilora[train]"')
    assert not out.exists()


def test_pretrain_without_tqdm_runs_with_no_progress(without, tmp_path):
    succeeds(run_minilora("pretrain", "--steps", "2", *TINY, "--out", tmp_path / "out", path_first=without("tqdm")))


def test_a_tokenizer_json_without_the_tokenizers_package(tiny_model, without, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "char_tokenizer.json").unlink()
    (model / "tokenizer.json").write_text("{}")
    fails_in_one_line(run_minilora("generate", "--model", model, path_first=without("tokenizers")), 1,
                      "tokenizers", "minilora[train]")


def test_an_unknown_minilora_backend_is_still_an_error_in_python():
    """The variable no longer breaks `import minilora`, but the first tensor raises: never a silent switch to numpy."""
    code = "import minilora\ntry:\n    minilora.Tensor([1.0])\nexcept ValueError as error:\n    print(error)\n"
    env = {**os.environ, "MINILORA_BACKEND": "foo", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "MINILORA_BACKEND='foo'" in out
