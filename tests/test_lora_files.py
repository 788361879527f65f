"""Adapter files: only A and B are written, read back exactly, and bad files are refused with the reasons."""
import json
import os

import numpy as np
import pytest

from minilora import backend, no_grad
from minilora.io import save_json
from minilora.lora import LoraConfig, LoraModel, count_parameters, get_peft_model, lora_layers
from minilora.models.gpt import GPT, GPTConfig

IDX = np.random.default_rng(0).integers(0, 20, (2, 5))


def tiny_gpt(n_embd=16):
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=16, vocab_size=20, seed=1))


def trained(config=None, name="default"):
    """A LoRA'd GPT whose B's are non-zero, so a lost or swapped factor shows in the logits."""
    model = get_peft_model(tiny_gpt(), config or LoraConfig(r=2, lora_alpha=4), adapter_name=name)
    rng = np.random.default_rng(5)
    for _, layer in lora_layers(model.model):
        B = layer.lora_B[name]
        B.data = backend.asarray(rng.standard_normal(B.shape), dtype=B.dtype)
    return model.eval()


def logits(model):
    with no_grad():
        return model(IDX)[0].numpy()


def test_round_trip(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = LoraModel.from_pretrained(tiny_gpt(), tmp_path).eval()
    np.testing.assert_array_equal(logits(loaded), logits(model))
    assert loaded.peft_config["default"] == model.peft_config["default"]
    assert count_parameters(loaded) == count_parameters(model)


def test_file_holds_only_the_adapter_without_its_name(tmp_path):
    from safetensors.numpy import load_file

    trained(name="mine").save_pretrained(tmp_path)
    keys = sorted(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == sorted(f"blocks.{i}.attn.{m}.lora_{f}.weight" for i in range(2) for m in "qv" for f in "AB")


def test_load_adapter_under_another_name_then_switch(tmp_path):
    source = trained()
    source.save_pretrained(tmp_path)
    model = get_peft_model(tiny_gpt(), LoraConfig(r=3, target_modules=["k"]), adapter_name="other")
    model.load_adapter(tmp_path, "task").eval()
    assert model.active_adapter == "other"
    model.set_adapter("task")
    np.testing.assert_array_equal(logits(model), logits(source))


def test_trained_biases_travel_with_the_adapter(tmp_path):
    model = trained(LoraConfig(r=2, bias="lora_only"))
    for _, layer in lora_layers(model.model):
        layer.base_layer.bias.data = layer.base_layer.bias.data + 0.25
    model.save_pretrained(tmp_path)
    loaded = LoraModel.from_pretrained(tiny_gpt(), tmp_path).eval()
    np.testing.assert_array_equal(logits(loaded), logits(model))


def test_unknown_config_fields_are_listed(tmp_path):
    trained().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    save_json(tmp_path / "adapter_config.json", {**config, "use_dora": True, "fan_in_fan_out": False})
    with pytest.raises(ValueError, match=r"unknown LoraConfig field\(s\) \['fan_in_fan_out', 'use_dora'\].*Known fields"):
        LoraModel.from_pretrained(tiny_gpt(), tmp_path)


def test_other_shapes_are_listed_and_nothing_loads(tmp_path):
    trained().save_pretrained(tmp_path)
    wide = tiny_gpt(n_embd=24)
    with pytest.raises(ValueError, match=r"shape mismatches: \['blocks\.0\.attn\.q\.lora_A\.weight: file \(2, 16\) vs model \(2, 24\)"):
        LoraModel.from_pretrained(wide, tmp_path)
    assert not lora_layers(wide)
    other = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=["k"]))
    os.remove(tmp_path / "adapter_model.safetensors")
    from minilora.io import save_safetensors
    save_safetensors(tmp_path / "adapter_model.safetensors", {"blocks.0.attn.q.lora_A.weight": np.zeros((2, 16), np.float32)})
    with pytest.raises(ValueError, match=r"missing: \['blocks\.0\.attn\.q\.lora_B\.weight', 'blocks\.0\.attn\.v\.lora_A\.weight'"):
        other.load_adapter(tmp_path, "broken")
    assert list(other.peft_config) == ["default"]


def test_missing_folder_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        LoraModel.from_pretrained(tiny_gpt(), tmp_path)


def test_adapter_size_beside_the_full_checkpoint(tmp_path):
    model = trained()
    size = model.adapter_size()
    trainable, total = count_parameters(model)
    assert size["adapter_bytes"] == trainable * 4  # float32
    assert size["full_bytes"] == (total - trainable) * 4
    assert size["ratio"] == size["full_bytes"] / size["adapter_bytes"]
    model.save_pretrained(tmp_path)
    on_disk = os.path.getsize(tmp_path / "adapter_model.safetensors")
    assert size["adapter_bytes"] < on_disk < size["adapter_bytes"] + 2048  # the payload plus a small header
