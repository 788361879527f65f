"""The minilora command, run as a user runs it (a subprocess): --help, pretrain, resume, generate, and the demo's models."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import minilora
from minilora import backend
from minilora.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(minilora.__file__)))  # this checkout, for the subprocess
TINY = ["--batch-size", "4", "--sentences", "200", "--n-layer", "1", "--n-embd", "16",
        "--n-head", "2", "--block-size", "16", "--eval-every", "5", "--no-progress"]
SUBCOMMANDS = ["pretrain", "generate", "demo", "paper", "finetune", "chat"]


def run_minilora(*argv, env=None, path_first=None):
    """Run ``python -m minilora.cli ARGV`` with this checkout's package (``path_first`` goes before it on PYTHONPATH)."""
    environment = {**os.environ, **(env or {})}
    paths = [path_first, ROOT, environment.get("PYTHONPATH")]
    environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths if p)
    return subprocess.run([sys.executable, "-m", "minilora.cli", *map(str, argv)],
                          capture_output=True, text=True, env=environment, timeout=600)


def succeeds(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def fails_in_one_line(result, status, *fragments):
    """The command failed with ``status`` and one line on stderr that holds every fragment, and no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("minilora"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 5-step tiny model folder written by `minilora pretrain`."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    succeeds(run_minilora("pretrain", "--out", out, "--steps", "5", *TINY))
    return out


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS])
def test_help(argv):
    out = succeeds(run_minilora(*argv)).stdout
    assert out.startswith("usage: minilora")
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "METHODS" not in out  # a name the user cannot see
    for option in re.split(r"\n  -", out):
        assert option.count("default") <= 1, option
    if argv[0] != "--help":
        assert "--backend {numpy,cupy}" in out and "--debug" in out


def test_help_gives_steps_as_a_total():
    assert "total optimizer steps" in succeeds(run_minilora("pretrain", "--help")).stdout


def test_no_subcommand_prints_help():
    result = run_minilora()
    assert result.returncode == 2 and "pretrain" in result.stdout


def test_pretrain_resume_and_generate(tmp_path):
    out = tmp_path / "run"
    printed = succeeds(run_minilora("pretrain", "--out", out, "--steps", "5", *TINY)).stdout
    assert {"config.json", "model.safetensors", "char_tokenizer.json", "checkpoint.safetensors", "history.json"} <= set(os.listdir(out))
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5] and "val_loss" in history[-1]
    assert f"saved the model to {out}" in printed

    printed = succeeds(run_minilora("pretrain", "--out", out, "--steps", "7", *TINY)).stdout
    assert "resuming from" in printed and "at step 5 of 7" in printed
    assert len(json.loads((out / "history.json").read_text())) == 7

    text = succeeds(run_minilora("generate", "--model", out, "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1")).stdout
    assert text.startswith("The ") and len(text.rstrip("\n")) >= 4
    succeeds(run_minilora("generate", "--model", out, "--prompt", "The ", "--max-new-tokens", "5", "--greedy"))


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(tmp_path, tiny_model):
    files = {name: (tiny_model / name).stat().st_mtime_ns for name in os.listdir(tiny_model)}
    again = succeeds(run_minilora("pretrain", "--out", tiny_model, "--steps", "5", *TINY)).stdout
    assert "already trained 5 of 5 steps; nothing to do" in again and "resuming" not in again
    fails_in_one_line(run_minilora("pretrain", "--out", tiny_model, "--steps", "3", *TINY), 2,
                      "already trained 5 of 3 steps; nothing to do (use --steps N with N > 5", "or a new --out")
    assert {name: (tiny_model / name).stat().st_mtime_ns for name in os.listdir(tiny_model)} == files  # nothing rewritten


@pytest.mark.parametrize("where", ["before", "after"])
def test_backend_before_or_after_every_subcommand(where, tiny_model, tmp_path):
    def line(subcommand, *rest):
        return ["--backend", "numpy", subcommand, *rest] if where == "before" else [subcommand, "--backend", "numpy", *rest]

    succeeds(run_minilora(*line("generate", "--model", tiny_model, "--max-new-tokens", "3")))
    succeeds(run_minilora(*line("pretrain", "--out", tiny_model, "--steps", "5", *TINY)))  # nothing to do, but parsed
    parser = build_parser()  # the demo only parses here; tests/test_cli_demo.py runs it
    for subcommand in ("demo", "paper"):  # they only parse here; their own tests run them
        assert parser.parse_args(line(subcommand)).backend == "numpy"
        assert build_parser().parse_args([subcommand]).backend is None  # no default that would hide $MINILORA_BACKEND


@pytest.mark.skipif(backend.cupy_unavailable_reason() is None, reason="cupy runs here, so choosing it is no error")
@pytest.mark.parametrize("argv", [["--backend", "cupy", "generate"], ["generate", "--backend", "cupy"]])
def test_the_backend_after_the_subcommand_is_used(argv, tiny_model):
    fails_in_one_line(run_minilora(*argv, "--model", tiny_model), 2, "cupy backend", "--backend numpy")


def test_generate_opens_a_lora_adapter_on_its_base(tiny_model, tmp_path):
    from minilora.lora import LoraConfig, get_peft_model
    from minilora.models import GPT

    lora_model = get_peft_model(GPT.from_pretrained(tiny_model), LoraConfig(r=2, target_modules=["q", "v"]))
    lora_model.save_pretrained(tmp_path / "adapter")
    base = succeeds(run_minilora("generate", "--model", tiny_model, "--greedy", "--max-new-tokens", "6")).stdout
    # B starts at zero, so the untrained adapter leaves the greedy text as it was
    assert succeeds(run_minilora("generate", "--model", tiny_model, "--adapter", tmp_path / "adapter",
                                 "--greedy", "--max-new-tokens", "6")).stdout == base
    fails_in_one_line(run_minilora("generate", "--model", tmp_path / "adapter"), 2, "holds a LoRA adapter, not a model",
                      f"--adapter {tmp_path / 'adapter'}")


def test_generate_opens_every_model_the_demo_saves(tmp_path):
    out = tmp_path / "demo"
    printed = succeeds(run_minilora("demo", "--out", out, "--pretrain-steps", "1", "--finetune-steps", "1",
                                    "--eval-examples", "1")).stdout
    (pretrained,) = [folder for folder, _, files in os.walk(out / "pretrained") if "config.json" in files]
    for model in (pretrained, out / "full"):
        succeeds(run_minilora("generate", "--model", model, "--max-new-tokens", "5"))
    for adapter in ("lora_r8", "lora_r1"):
        succeeds(run_minilora("generate", "--model", pretrained, "--adapter", out / adapter, "--max-new-tokens", "5"))
    (suggested,) = [line[len("try: "):] for line in printed.splitlines() if line.startswith("try: minilora generate")]
    assert f"--model {pretrained}" in suggested
    succeeds(run_minilora(*shlex.split(suggested)[1:]))
