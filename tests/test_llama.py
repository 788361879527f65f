"""Llama against transformers' LlamaForCausalLM on a small random model: logits and every gradient.

The oracle is built locally with tiny sizes (nothing is downloaded) and has
grouped-query attention (4 query heads on 2 key/value heads), so a wrong RoPE
layout, head grouping or norm shows at once. Its RMSNorm weights are perturbed
away from 1 so that a norm put in the wrong place would show too.
"""
import copy
import json

import numpy as np
import pytest

from conftest import require_oracle
from minilora import backend, to_numpy
from minilora.autograd import Tensor
from minilora.models import Llama, LlamaConfig

CONFIG = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=100000.0)
TOLERANCE = {"float64": 1e-10, "float32": 2e-6}  # measured: 7e-16 and 3.4e-7 (relative to max(1, max |value|))


def keep_float64(model, torch):
    """transformers computes three things in float32 even in a float64 model: RoPE's angles, RMSNorm and the
    eager attention's softmax. Here the first two are recomputed in float64 and attention runs through SDPA."""
    rotary_emb = model.model.rotary_emb
    D = 2 * rotary_emb.inv_freq.numel()
    inv_freq = 1.0 / rotary_emb.config.rope_parameters["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D)

    def rope_forward(x, position_ids):
        angles = position_ids[..., None].double() * inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rotary_emb.forward = rope_forward

    def rms_norm_forward(norm):
        return lambda x: norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = rms_norm_forward(module)


def hf_llama(torch, dtype, tie=True, seed=0):
    """A random transformers Llama in ``dtype``, eval mode, eager attention, norms away from 1."""
    transformers = require_oracle("transformers")
    config = transformers.LlamaConfig(**CONFIG, tie_word_embeddings=tie, attention_bias=False, mlp_bias=False,
                                      attn_implementation="sdpa" if dtype == "float64" else "eager", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p)) if "norm" in name else p.mul_(5.0)  # weights of std 0.1, norms near 1
    if dtype == "float64":
        keep_float64(model, torch)
    return model


def ours_from(hf, dtype, tie=True):
    """Our Llama with the oracle's weights, copied by name (the names are the same)."""
    with backend.using_default_dtype(dtype):
        model = Llama(LlamaConfig(**CONFIG, tie_word_embeddings=tie))
    state = {n: p.detach().numpy().astype(dtype) for n, p in hf.named_parameters()}
    model.load_state_dict(state)
    return model.eval()


def relative_error(ours, theirs):
    ours = ours.data if isinstance(ours, Tensor) else ours
    ours, theirs = to_numpy(ours).astype(np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} vs {theirs.shape}"
    return np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())


@pytest.mark.oracle
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logits_and_every_gradient_match_transformers(torch, dtype, tie):
    hf = hf_llama(torch, dtype, tie=tie)
    ours = ours_from(hf, dtype, tie=tie)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie

    idx = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (2, 13))
    hf_logits = hf(torch.tensor(idx)).logits  # (B, T, V)
    # The next-token loss in the model's own dtype (transformers' labels= path computes it in float32).
    V = CONFIG["vocab_size"]
    hf_loss = torch.nn.functional.cross_entropy(hf_logits[:, :-1].reshape(-1, V), torch.tensor(idx[:, 1:]).reshape(-1))
    hf_loss.backward()
    logits, loss = ours(idx[:, :-1], targets=idx[:, 1:])
    loss.backward()

    tol = TOLERANCE[dtype]
    assert relative_error(logits, hf_logits.detach().numpy()[:, :-1]) <= tol
    assert relative_error(loss, hf_loss.item()) <= tol
    theirs = dict(hf.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert set(names) == set(theirs), "our parameter names must be transformers' (PEFT's target names depend on them)"
    for name, p in ours.named_parameters():
        assert relative_error(p.grad, theirs[name].grad.numpy()) <= tol, name


@pytest.mark.oracle
def test_kv_cache_continues_the_positions(torch):
    """Feeding a sequence in three pieces through the cache gives the logits of one whole pass (RoPE offset, GQA cache)."""
    hf = hf_llama(torch, "float64")
    ours = ours_from(hf, "float64")
    idx = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], (2, 9))
    whole, _ = ours(idx)
    cache = ours.new_kv_cache()
    pieces = [ours(idx[:, a:b], kv_cache=cache)[0] for a, b in ((0, 4), (4, 5), (5, 9))]
    assert len(cache[0]) == 9 and cache[0].k.shape == (2, CONFIG["num_key_value_heads"], 9, 8)
    np.testing.assert_allclose(np.concatenate([p.numpy() for p in pieces], axis=1), whole.numpy(), rtol=0, atol=1e-12)
    expected = hf.generate(torch.tensor(idx), max_new_tokens=6, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours.generate(idx, 6, greedy=True), expected)


def test_bad_configs_and_inputs_name_the_fix():
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        LlamaConfig(**{**CONFIG, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="even size"):
        LlamaConfig(**{**CONFIG, "hidden_size": 36, "num_attention_heads": 4})
    model = Llama(LlamaConfig(**{**CONFIG, "max_position_embeddings": 8}))
    with pytest.raises(ValueError, match=r"9 tokens .* max_position_embeddings=8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"idx must be \(B, T\)"):
        model(Tensor(np.zeros(3, dtype=np.int64)))


def test_names_match_peft_targets():
    model = Llama(LlamaConfig(**CONFIG))
    names = {n for n, _ in model.named_modules()}
    for leaf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert f"model.layers.1.{leaf}" in names


@pytest.mark.oracle
@pytest.mark.parametrize("saved_as", ["float32", "bfloat16"])
@pytest.mark.parametrize("tie", [True, False])
def test_from_pretrained_reads_a_transformers_folder(torch, tmp_path, saved_as, tie):
    hf = hf_llama(torch, "float32", tie=tie)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(getattr(torch, saved_as)).float())  # the values the file can hold
    copy.deepcopy(hf).to(getattr(torch, saved_as)).save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path, dtype="float32")
    assert not ours.training and (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    for name, p in hf.named_parameters():  # bfloat16 widens to float32 exactly
        np.testing.assert_array_equal(to_numpy(dict(ours.named_parameters())[name].data), p.detach().numpy(), err_msg=name)
    idx = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (2, 9))
    with torch.no_grad():
        expected = hf(torch.tensor(idx)).logits.numpy()
    assert relative_error(ours(idx)[0], expected) <= TOLERANCE["float32"]


def test_from_pretrained_names_what_it_cannot_read(tmp_path):
    from minilora.models.llama_checkpoint import config_from_hf
    hf = {"model_type": "llama", "hidden_act": "gelu", "attention_bias": True, "rope_scaling": {"rope_type": "llama3"},
          "hidden_size": 32, "num_attention_heads": 4}
    with pytest.raises(ValueError, match=r"hidden_act='gelu'.*attention_bias=True.*'llama3'.*Fix"):
        config_from_hf(hf, LlamaConfig)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match=r"missing field\(s\) \['vocab_size'"):
        Llama.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        Llama.from_pretrained(tmp_path)


@pytest.mark.oracle
def test_from_pretrained_refuses_a_truncated_file(torch, tmp_path):
    hf_llama(torch, "float32").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file.*truncated.*Fix"):
        Llama.from_pretrained(tmp_path)


def test_lora_all_linear_adapts_every_projection_but_not_the_head():
    from minilora.lora import LoraConfig, get_peft_model, lora_layers
    model = get_peft_model(Llama(LlamaConfig(**CONFIG)), LoraConfig(r=2, target_modules="all-linear"))
    adapted = {name.split(".")[-1] for name, _ in lora_layers(model)}
    assert len(lora_layers(model)) == 7 * CONFIG["num_hidden_layers"]
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
