"""LoraConfig: what it accepts (as PEFT does), what it refuses (with the field, the value and the fix), what it writes."""
import json
import math

import numpy as np
import pytest

from minilora import no_grad
from minilora.lora import LoraConfig, LoRALinear, LoraModel, get_peft_model, lora_layers
from minilora.models.gpt import GPT, GPTConfig
from minilora.nn import Linear

IDX = np.random.default_rng(0).integers(0, 20, (2, 5))


def tiny_gpt():
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=20, seed=1))


def logits(model):
    with no_grad():
        return model.eval()(IDX)[0].numpy()


# ---- refused: a non-finite alpha, a bad regex ---------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"lora_alpha": math.inf}, "lora_alpha=inf"),
    ({"lora_alpha": -math.inf}, "lora_alpha=-inf"),
    ({"lora_alpha": math.nan}, "lora_alpha=nan"),
    ({"lora_alpha": np.float32("inf")}, "lora_alpha=np.float32\\(inf\\)|lora_alpha=inf"),
    ({"alpha_pattern": {"q": math.inf}}, "alpha_pattern\\['q'\\]=inf"),
    ({"alpha_pattern": {"q": math.nan}}, "alpha_pattern\\['q'\\]=nan"),
    ({"rank_pattern": {"q": math.inf}}, "rank_pattern\\['q'\\]=inf"),
])
def test_non_finite_alpha_or_rank_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LoraConfig: ({field}) must be a (finite positive number|positive integer).*Fix: "):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field, pattern", [
    ({"rank_pattern": {"attn.(q": 4}}, "rank_pattern key", "attn.(q"),
    ({"alpha_pattern": {"*v": 4}}, "alpha_pattern key", "*v"),
    ({"target_modules": r"blocks\.[0-9"}, "target_modules", r"blocks\.[0-9"),
    ({"exclude_modules": "mlp.(c_fc"}, "exclude_modules", "mlp.(c_fc"),
])
def test_a_bad_regex_names_the_field_the_pattern_and_res_message(kwargs, field, pattern):
    with pytest.raises(ValueError) as info:
        LoraConfig(**kwargs)
    message = str(info.value)
    assert f"LoraConfig: {field} {pattern!r} is not a valid regular expression" in message
    assert "at position" in message and "Fix: " in message  # re's own words, and what to do


# ---- accepted: what PEFT accepts, stored as plain Python --------------------------
def test_a_set_of_target_modules_is_a_sorted_list():
    config = LoraConfig(target_modules={"v", "q"}, exclude_modules=frozenset({"blocks.1.attn.v"}))
    assert config.target_modules == ["q", "v"] and config.exclude_modules == ["blocks.1.attn.v"]
    model = get_peft_model(tiny_gpt(), config)
    assert {n for n, _ in lora_layers(model.model)} == {"blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q"}


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    config = LoraConfig(r=np.int64(4), lora_alpha=np.int32(8), lora_dropout=np.float64(0.1),
                        rank_pattern={"v": np.int16(2)}, alpha_pattern={"q": np.float32(0.5)})
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert type(config.r) is int and type(config.lora_alpha) is int and type(config.lora_dropout) is float
    assert type(config.rank_pattern["v"]) is int and type(config.alpha_pattern["q"]) is float
    assert type(LoraConfig(lora_alpha=np.float64(16.0)).lora_alpha) is float
    model = get_peft_model(tiny_gpt(), config)
    assert model.model.blocks[0].attn.v.r["default"] == 2 and model.model.blocks[0].attn.q.scaling["default"] == 0.5 / 4


@pytest.mark.parametrize("r", [True, 4.0, np.float64(4), "4", np.bool_(True)])
def test_ranks_that_are_not_integers_are_still_refused(r):
    with pytest.raises(ValueError, match=r"must be a positive integer.*Fix: e\.g\. r=8"):
        LoraConfig(r=r)
    with pytest.raises(ValueError, match=r"rank_pattern\['q'\]=.* must be a positive integer"):
        LoraConfig(rank_pattern={"q": r})


def test_saved_configs_are_plain_json_and_round_trip(tmp_path):
    config = LoraConfig(r=np.int64(2), lora_alpha=np.int64(4), target_modules={"q", "v"}, rank_pattern={"1.attn.v": np.int64(3)})
    plain = config.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # json.dumps raises on a set or an np.int64
    assert plain["target_modules"] == ["q", "v"] and type(plain["r"]) is int
    model = get_peft_model(tiny_gpt(), config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == 2 and saved["target_modules"] == ["q", "v"] and saved["rank_pattern"] == {"1.attn.v": 3}
    loaded = LoraModel.from_pretrained(tiny_gpt(), tmp_path)
    assert loaded.peft_config["default"] == config == LoraConfig.from_dict(saved)


# ---- init_lora_weights=False: B random, as PEFT ------------------------------------
def test_init_false_makes_B_random_so_the_adapter_acts_at_init():
    r = 4
    layer = LoRALinear(Linear(400, 300, rng=np.random.default_rng(0)), rng=np.random.default_rng(1))
    layer.add_adapter("default", r, 8, 2.0, init=False)
    A, B = layer.lora_A["default"].numpy(), layer.lora_B["default"].numpy()
    assert 0.9 / np.sqrt(400) < np.abs(A).max() <= 1 / np.sqrt(400)  # A as for init=True
    assert 0.9 / np.sqrt(r) < np.abs(B).max() <= 1 / np.sqrt(r)  # B as torch's default Linear(r, out) init
    assert abs(B.std() - 1 / np.sqrt(3 * r)) < 0.02  # the std of U(-1/sqrt(r), 1/sqrt(r))

    gpt = tiny_gpt()
    before = logits(gpt)
    model = get_peft_model(gpt, LoraConfig(r=2, init_lora_weights=False))
    assert np.abs(logits(model) - before).max() > 1e-3  # not an identity at init
    with model.disable_adapter():
        np.testing.assert_array_equal(logits(model), before)


@pytest.mark.parametrize("init", [0, 1, "true", None])
def test_init_values_that_only_look_like_bools_are_refused(init):
    with pytest.raises(ValueError, match=rf"init_lora_weights={init!r} is not one of \(True, False, 'gaussian', 'pissa'\)"):
        LoraConfig(init_lora_weights=init)


# ---- target_modules=None: the model's own default, as PEFT picks one by model type ------------------
def test_no_target_modules_means_the_models_query_and_value_projections():
    from minilora.models import Llama, LlamaConfig

    gpt = get_peft_model(tiny_gpt(), LoraConfig(r=2))
    assert {n.split(".")[-1] for n, _ in lora_layers(gpt.model)} == {"q", "v"}
    assert gpt.peft_config["default"].target_modules == ["q", "v"]  # saved resolved, as PEFT saves it
    llama = Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    adapted = get_peft_model(llama, LoraConfig(r=2))
    assert {n.split(".")[-1] for n, _ in lora_layers(adapted.model)} == {"q_proj", "v_proj"}


def test_no_target_modules_on_a_model_without_a_default_says_what_to_pass():
    from minilora.nn import Module

    class TwoLayers(Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = Linear(4, 4), Linear(4, 4)

    with pytest.raises(ValueError, match=r"TwoLayers names none.*Fix: pass target_modules"):
        get_peft_model(TwoLayers(), LoraConfig(r=2))
