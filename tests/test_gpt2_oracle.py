"""GPT-2 checkpoints: our GPT against transformers' GPT2LMHeadModel, and clear errors for bad checkpoints.

The oracle model is a small random GPT-2 built locally (nothing is downloaded).
Its weights are all perturbed away from the init (zero biases, unit LayerNorms),
so that a bias or LayerNorm parameter put in the wrong place would show.
"""
import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import require_oracle
from minilora import to_numpy
from minilora.autograd import Tensor
from minilora.models import GPT, GPTConfig
from minilora.models.gpt2_checkpoint import save_gpt2

N_LAYER, N_EMBD, VOCAB = 2, 32, 97
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def hf_gpt2(torch, dtype, tie=True, seed=0):
    """A random transformers GPT-2 with dropout off, in ``dtype``, in eval mode."""
    transformers = require_oracle("transformers")
    config = transformers.GPT2Config(
        n_layer=N_LAYER, n_head=2, n_embd=N_EMBD, n_positions=64, vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_grads_in_our_layout(hf_model):
    """HF gradients renamed and reshaped to our parameters: Conv1D (in, out) transposed, c_attn cut in three."""
    g = {n.removeprefix("transformer."): p.grad.double().numpy() for n, p in hf_model.named_parameters()}
    ours = {n: g[n] for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    C = N_EMBD
    for i in range(N_LAYER):
        h, b = f"h.{i}.", f"blocks.{i}."
        for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            ours[b + n] = g[h + n]
        for j, n in enumerate("qkv"):
            ours[f"{b}attn.{n}.weight"] = g[h + "attn.c_attn.weight"][:, j * C:(j + 1) * C].T
            ours[f"{b}attn.{n}.bias"] = g[h + "attn.c_attn.bias"][j * C:(j + 1) * C]
        for mine, theirs in (("attn.o", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            ours[f"{b}{mine}.weight"], ours[f"{b}{mine}.bias"] = g[f"{h}{theirs}.weight"].T, g[f"{h}{theirs}.bias"]
    if "lm_head.weight" in g:
        ours["lm_head.weight"] = g["lm_head.weight"]
    return ours


def assert_close(ours, theirs, tol, what):
    """Agreement relative to the size of the values: |ours - theirs| <= tol * max(1, max |theirs|)."""
    ours, theirs = to_numpy(ours).astype(np.float64), np.asarray(theirs, dtype=np.float64)  # ours may live on the GPU
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    error = np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())
    assert error <= tol, f"{what}: relative error {error:.3g} > {tol}"


@pytest.mark.oracle
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logits_and_every_gradient_match_transformers(torch, tmp_path, dtype, tie):
    hf = hf_gpt2(torch, dtype, tie=tie)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=dtype)
    assert not ours.training and ours.wte.weight.dtype == np.dtype(dtype)
    assert (ours.lm_head.weight is ours.wte.weight) == tie

    idx = np.random.default_rng(0).integers(0, VOCAB, (3, 11))
    hf_logits = hf(torch.tensor(idx)).logits  # (B, T, V)
    # The next-token loss in the model's own dtype (HF's labels= path computes it in float32).
    hf_loss = torch.nn.functional.cross_entropy(hf_logits[:, :-1].reshape(-1, VOCAB), torch.tensor(idx[:, 1:]).reshape(-1))
    hf_loss.backward()
    targets = np.concatenate([idx[:, 1:], np.full((3, 1), -100)], axis=1)  # we take targets already shifted
    logits, loss = ours(idx, targets)
    loss.backward()

    tol = TOLERANCE[dtype]
    assert_close(logits.data, hf_logits.detach().numpy(), tol, "logits")
    assert_close(loss.data, hf_loss.item(), tol, "loss")
    expected = hf_grads_in_our_layout(hf)
    assert sorted(expected) == sorted(n for n, _ in ours.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, expected[name], tol, f"gradient of {name}")


@pytest.mark.oracle
def test_five_adamw_steps_give_transformers_losses(torch, tmp_path):
    """llm.c's check: the same model, batch and optimizer give the same first losses, step after step."""
    from minilora.optim import AdamW

    hf = hf_gpt2(torch, "float64")
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype="float64").train()
    hf.train()  # dropout is 0 in this config, so train mode changes nothing but the flag
    settings = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    hf_opt, our_opt = torch.optim.AdamW(hf.parameters(), **settings), AdamW(list(ours.parameters()), **settings)
    idx = np.random.default_rng(1).integers(0, VOCAB, (4, 16))
    targets = np.concatenate([idx[:, 1:], np.full((4, 1), -100)], axis=1)
    hf_losses, our_losses = [], []
    for _ in range(5):
        hf_opt.zero_grad()
        logits = hf(torch.tensor(idx)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), torch.tensor(idx[:, 1:]).reshape(-1))
        loss.backward()
        hf_opt.step()
        hf_losses.append(loss.item())
        our_opt.zero_grad()
        _, our_loss = ours(idx, targets)
        our_loss.backward()
        our_opt.step()
        our_losses.append(our_loss.item())
    assert hf_losses[-1] < hf_losses[0]  # the steps really train
    np.testing.assert_allclose(our_losses, hf_losses, rtol=1e-10)


@pytest.mark.oracle
def test_padding_mask_matches_transformers_on_real_tokens(torch, tmp_path):
    hf = hf_gpt2(torch, "float64")
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype="float64")
    idx = np.random.default_rng(1).integers(0, VOCAB, (2, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # right padding
    with torch.no_grad():
        expected = hf(torch.tensor(idx), attention_mask=torch.tensor(mask)).logits.numpy()
    logits = ours(idx, attention_mask=mask)[0].numpy()
    real = mask.astype(bool)
    assert_close(logits[real], expected[real], 1e-10, "logits of real tokens")


@pytest.mark.oracle
@pytest.mark.parametrize("tie", [True, False])
def test_minilora_checkpoint_loads_in_transformers(torch, tmp_path, tie):
    transformers = require_oracle("transformers")
    ours = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=32, vocab_size=50, tie_weights=tie, seed=3))
    ours.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert next(hf.parameters()).dtype == torch.float32 and hf.config.tie_word_embeddings == tie
    idx = np.random.default_rng(2).integers(0, 50, (2, 9))
    with torch.no_grad():
        expected = hf(torch.tensor(idx)).logits.numpy()
    assert_close(ours(idx)[0].data, expected, 1e-5, "logits")


@pytest.mark.oracle
def test_bfloat16_checkpoint_loads_as_its_float32_rounding(torch, tmp_path):
    """A bf16 model.safetensors gives the model of the float32 checkpoint whose weights are those bf16 values."""
    hf = hf_gpt2(torch, "float32", tie=False)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.bfloat16().float())  # exactly representable in bf16 from now on
    hf.save_pretrained(tmp_path / "float32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bfloat16")
    hf.float()  # back without loss: every weight is a bf16 value
    header_size = int.from_bytes((tmp_path / "bfloat16" / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "bfloat16" / "model.safetensors").read_bytes()[8:8 + header_size])
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"BF16"}

    ours = GPT.from_pretrained(tmp_path / "bfloat16")
    reference = GPT.from_pretrained(tmp_path / "float32")
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        assert p.dtype == np.float32, name
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    idx = np.random.default_rng(3).integers(0, VOCAB, (2, 7))
    logits = ours(idx)[0].numpy()
    np.testing.assert_array_equal(logits, reference(idx)[0].numpy())
    with torch.no_grad():
        assert_close(logits, hf(torch.tensor(idx)).logits.numpy(), 1e-5, "logits")


# ---- bad checkpoints give clear errors (no oracle needed: we write them ourselves) ----

def saved_tiny(path, **changes):
    config = dict(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=20, seed=1) | changes
    GPT(GPTConfig(**config)).save_pretrained(path)
    return path


def rewrite_weights(path, edit):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(os.path.join(path, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def test_round_trip_keeps_every_weight(tmp_path):
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=20, dropout=0.1, seed=1))
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.config == dataclasses.replace(model.config, seed=0)  # the seed is ours, GPT-2's config has none
    for (name, p), q in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


def test_keys_without_prefix_and_mask_buffers_are_accepted(tmp_path):
    reference = GPT.from_pretrained(saved_tiny(tmp_path))

    def strip_prefix_add_buffers(tensors):
        for name in list(tensors):
            tensors[name.removeprefix("transformer.")] = tensors.pop(name)
        tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), dtype=np.float32))  # old GPT-2 files hold these
        tensors["h.0.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
        tensors["lm_head.weight"] = tensors["wte.weight"]
    rewrite_weights(tmp_path, strip_prefix_add_buffers)
    loaded = GPT.from_pretrained(tmp_path)
    idx = np.arange(10)[None]
    np.testing.assert_array_equal(loaded(idx)[0].numpy(), reference(idx)[0].numpy())


def test_truncated_checkpoint_raises_value_error(tmp_path):
    saved_tiny(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GPT.from_pretrained(tmp_path)


def test_missing_and_misshapen_keys_are_all_listed(tmp_path):
    def damage(tensors):
        del tensors["transformer.h.1.mlp.c_fc.bias"], tensors["transformer.ln_f.weight"]
        tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((8, 16), dtype=np.float32)
        tensors["transformer.h.0.attn.rotary"] = np.zeros(3, dtype=np.float32)
    rewrite_weights(saved_tiny(tmp_path), damage)
    with pytest.raises(ValueError) as info:
        GPT.from_pretrained(tmp_path)
    message = str(info.value)
    for part in (str(tmp_path / "model.safetensors"), "missing keys: ln_f.weight, h.1.mlp.c_fc.bias",
                 "unexpected keys: h.0.attn.rotary", "h.0.attn.c_attn.weight (8, 16) (expected (8, 24))", "Fix: "):
        assert part in message


def test_unsupported_config_lists_every_problem(tmp_path):
    config_path = saved_tiny(tmp_path) / "config.json"
    config = json.loads(config_path.read_text())
    config.update(activation_function="relu", scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        GPT.from_pretrained(tmp_path)
    for part in ("activation_function='relu'", "scale_attn_by_inverse_layer_idx=True", "reorder_and_upcast_attn=True"):
        assert part in str(info.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text[:len(text) // 2], "is not valid JSON"),
    (lambda text: "[2, 2, 8]", "is damaged: it holds a JSON list, not an object"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k not in ("n_embd", "vocab_size")}),
     "is damaged: missing field n_embd; missing field vocab_size"),
    (lambda text: json.dumps(json.loads(text) | {"n_head": "2", "n_layer": 0}),
     "is damaged: n_layer=0 (must be a positive integer); n_head='2' (must be a positive integer)"),
], ids=["truncated", "not-an-object", "missing-fields", "bad-sizes"])
def test_damaged_config_json_is_named_with_the_fix(tmp_path, edit, expected):
    config_path = saved_tiny(tmp_path) / "config.json"
    config_path.write_text(edit(config_path.read_text()))
    with pytest.raises(ValueError) as info:
        GPT.from_pretrained(tmp_path)
    message = str(info.value)
    assert message.startswith(str(config_path)) and expected in message and "point to an intact copy" in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        GPT.from_pretrained(tmp_path)


def test_failed_save_overwrites_nothing(tmp_path):
    saved_tiny(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in ("config.json", "model.safetensors")}
    with pytest.raises(ValueError, match="bias=False"):
        save_gpt2(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=20, bias=False)), tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_loaded_model_computes_from_tensors_of_the_requested_dtype(tmp_path):
    model = GPT.from_pretrained(saved_tiny(tmp_path), dtype="float64")
    assert {p.dtype for p in model.parameters()} == {np.dtype("float64")}
    assert model(Tensor(np.arange(4)[None]))[0].dtype == np.float64


def test_saving_a_model_with_lora_layers_says_merge_or_save_the_adapter(tmp_path):
    from minilora.lora import LoraConfig, get_peft_model

    lora_model = get_peft_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=20)), LoraConfig(r=2))
    with pytest.raises(ValueError) as info:
        lora_model.model.save_pretrained(tmp_path)
    message = str(info.value)
    for part in ("unexpected blocks.0.attn.q.base_layer.bias", "lora_A.default", "missing blocks.0.attn.q.bias",
                 "merge_and_unload()", "save the adapter alone with save_pretrained on the LoraModel"):
        assert part in message
    assert os.listdir(tmp_path) == []
    lora_model.merge_and_unload().save_pretrained(tmp_path)  # the fix it names works
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
