"""PEFT's Llama layout both ways: an adapter saved here loads in PEFT onto transformers' LlamaForCausalLM with our
logits, and a PEFT adapter (random nonzero A and B) loads here with PEFT's logits.

Fast on a small random Llama built locally (float64), slow on SmolLM2-135M-Instruct from its GGUF file (float32).
"""
import copy
import json
import os

import numpy as np
import pytest

from conftest import require_oracle
from minilora import backend
from minilora.lora import LoraConfig, get_peft_model, load_peft_llama, lora_layers, save_peft_gpt2, save_peft_llama
from minilora.models import GPT, GPTConfig, Llama, LlamaConfig, LlamaTokenizer
from smollm2 import gguf_path
from test_llama import CONFIG, hf_llama, ours_from, relative_error

pytestmark = pytest.mark.oracle
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}  # relative to max(1, max |logit|); measured below each test's use


def randomize(lora_model, rng, std=0.1):
    """Nonzero B (and a fresh A) in every adapted layer, so that the adapter changes the logits."""
    for _, layer in lora_layers(lora_model.model):
        for factor in (layer.lora_A["default"], layer.lora_B["default"]):
            factor.data = backend.asarray(std * rng.standard_normal(factor.shape), dtype=factor.dtype)


def peft_logits(torch, peft_model, idx):
    with torch.no_grad():
        return peft_model(torch.tensor(idx)).logits.numpy()


IDX = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (2, 11))
CONFIGS = {  # ours -> PEFT: the paper's q and v; every projection with a rank and an alpha of their own
    "q_v": LoraConfig(r=4, lora_alpha=8),
    "all_linear_patterns": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", rank_pattern={"v_proj": 2},
                                      alpha_pattern={"down_proj": 3}),
    "layer_0_only": LoraConfig(r=3, lora_alpha=5, target_modules=r"model\.layers\.0\.self_attn\.(q|k)_proj"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_our_adapter_loads_in_peft_with_our_logits(torch, tmp_path, name):
    peft = require_oracle("peft")
    hf = hf_llama(torch, "float64")
    ours = get_peft_model(ours_from(hf, "float64"), CONFIGS[name], rng=np.random.default_rng(0))
    randomize(ours, np.random.default_rng(1))
    save_peft_llama(ours, tmp_path, base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["base_model_name_or_path"]) == ("LORA", "CAUSAL_LM", "tiny")
    if name == "q_v":
        assert config["target_modules"] == ["q_proj", "v_proj"]

    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path))
    expected = peft_logits(torch, theirs, IDX)
    with theirs.disable_adapter(), torch.no_grad():
        base = theirs(torch.tensor(IDX)).logits.numpy()
    assert relative_error(base, expected) > 1e-3  # the adapter does change the logits
    assert relative_error(ours(IDX)[0], expected) <= TOLERANCE["float64"]  # measured: 4e-16
    n_adapted = sum(1 for n, m in theirs.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert n_adapted == len(lora_layers(ours.model))


@pytest.mark.parametrize("target_modules, patterns", [(["q_proj", "v_proj"], {}),
                                                      ("all-linear", {"rank_pattern": {"k_proj": 2}, "alpha_pattern": {"up_proj": 6}})])
def test_peft_adapter_loads_here_with_peft_logits(torch, tmp_path, target_modules, patterns):
    peft = require_oracle("peft")
    hf = hf_llama(torch, "float64")
    ours = ours_from(hf, "float64")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules,
                                                     init_lora_weights=False, **patterns))  # random A and B, both nonzero
    theirs.save_pretrained(str(tmp_path))
    expected = peft_logits(torch, theirs, IDX)
    loaded = load_peft_llama(ours, tmp_path)
    assert relative_error(loaded(IDX)[0], expected) <= TOLERANCE["float64"]  # measured: 4e-16
    with loaded.disable_adapter():
        assert relative_error(loaded(IDX)[0], expected) > 1e-3


def test_a_gpt2_adapter_is_refused_with_the_file_and_the_fix(tmp_path):
    gpt = get_peft_model(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=11)), LoraConfig(r=2))
    save_peft_gpt2(gpt, tmp_path)
    with pytest.raises(ValueError) as error:
        load_peft_llama(Llama(tiny_config()), tmp_path)
    message = str(error.value)
    assert str(tmp_path / "adapter_config.json") in message and "base_model.model.transformer.h.0.attn.c_attn" in message
    assert "GPT-2 adapter: load it with minilora.lora.load_peft_gpt2" in message and "Fix:" in message


def test_an_adapter_of_another_size_is_refused_with_the_file_and_the_fix(tmp_path):
    wide = Llama(LlamaConfig(**{**CONFIG, "hidden_size": 48}))
    save_peft_llama(get_peft_model(wide, LoraConfig(r=2)), tmp_path)
    model = Llama(tiny_config())
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as error:
        load_peft_llama(model, tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: the adapter does not fit this model (shape mismatches: ")
    assert "model.layers.0.self_attn.q_proj.lora_A.weight: file (2, 48) vs model (2, 32)" in message
    assert "Fix: load it onto the model it was trained on" in message
    assert all(np.array_equal(a, before[n]) for n, a in model.state_dict().items())  # nothing changed


def test_unsupported_peft_features_are_named(tmp_path):
    ours = get_peft_model(Llama(tiny_config()), LoraConfig(r=2))
    save_peft_llama(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "init_lora_weights": "olora"}))
    with pytest.raises(ValueError, match=r"PEFT features minilora cannot load: use_dora=True, init_lora_weights='olora'"):
        load_peft_llama(Llama(tiny_config()), tmp_path)


def tiny_config():
    return LlamaConfig(**CONFIG)


# ---- SmolLM2-135M-Instruct from its GGUF file (slow) ---------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    """(path, transformers' LlamaForCausalLM from the file, float32, eval)."""
    path = gguf_path()
    require_oracle("accelerate")
    transformers, torch = require_oracle("transformers"), require_oracle("torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return path, hf.eval()


@pytest.mark.slow
def test_smollm2_adapter_both_ways(smollm2, tmp_path):
    """Ours -> PEFT and PEFT -> ours on the real model: LoRA r=8 on q_proj and v_proj, every A and B nonzero."""
    torch, peft = require_oracle("torch"), require_oracle("peft")
    path, hf = smollm2
    tokenizer = LlamaTokenizer.from_gguf(path)
    prompt = np.array([tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Hi there!"}],
                                                                      add_generation_prompt=True))])  # (1, T)
    ours = get_peft_model(Llama.from_gguf(path, dtype="float32"), LoraConfig(r=8, lora_alpha=16),
                          rng=np.random.default_rng(0))
    randomize(ours, np.random.default_rng(1), std=0.02)
    save_peft_llama(ours, tmp_path / "ours", base_model_name_or_path=path.name)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "ours"))
    expected = peft_logits(torch, theirs, prompt)
    with torch.no_grad():
        assert relative_error(hf(torch.tensor(prompt)).logits.numpy(), expected) > 1e-3
    assert relative_error(ours(prompt)[0], expected) <= TOLERANCE["float32"]  # measured: see docs/llama.md

    torch.manual_seed(0)
    made = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                                   init_lora_weights=False))
    for name, p in made.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.02)
    made.save_pretrained(str(tmp_path / "peft"))
    expected = peft_logits(torch, made, prompt)
    loaded = load_peft_llama(Llama.from_gguf(path, dtype="float32"), tmp_path / "peft")
    assert relative_error(loaded(prompt)[0], expected) <= TOLERANCE["float32"]
