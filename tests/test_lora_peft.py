"""PEFT as the oracle: its LoRA Linear layer, and its GPT-2 adapter files, both ways."""
import numpy as np
import pytest

import minilora
from minilora import Tensor, backend, no_grad, to_numpy
from minilora.lora import LoraConfig, LoRALinear, get_peft_model, load_peft_gpt2, lora_layers, save_peft_gpt2
from minilora.models.gpt import GPT, GPTConfig
from minilora.nn import Linear
from conftest import require_oracle

pytestmark = pytest.mark.oracle


@pytest.fixture
def float64():
    with minilora.backend.using_default_dtype("float64"):
        yield


class _Holder:
    """Builds a torch module with one Linear called "q", so PEFT's get_peft_model can target it."""

    @staticmethod
    def make(torch, k, d):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.q = torch.nn.Linear(k, d)

            def forward(self, x):
                return self.q(x)

        return M()


@pytest.mark.parametrize("r, alpha, rslora", [(2, 4, False), (3, 5, True)])
def test_same_factors_same_outputs_and_gradients_as_peft_linear(torch, float64, r, alpha, rslora):
    peft = require_oracle("peft")
    k, d = 5, 4
    rng = np.random.default_rng(0)
    W0, b = rng.standard_normal((d, k)), rng.standard_normal(d)
    A, B, x = rng.standard_normal((r, k)), rng.standard_normal((d, r)), rng.standard_normal((2, 3, k))
    g = rng.standard_normal((2, 3, d))

    base = Linear(k, d)
    base.weight.data, base.bias.data = backend.asarray(W0), backend.asarray(b)
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora)
    ours = LoRALinear(base)
    ours.add_adapter("default", r, alpha, config.scaling(r, alpha))
    ours.base_layer.requires_grad_(False)
    ours.lora_A["default"].data, ours.lora_B["default"].data = backend.asarray(A), backend.asarray(B)
    xt = Tensor(x, requires_grad=True)
    h = ours(xt)
    h.backward(g)

    theirs = _Holder.make(torch, k, d)
    with torch.no_grad():
        theirs.q.weight.copy_(torch.tensor(W0))
        theirs.q.bias.copy_(torch.tensor(b))
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["q"]))
    layer = theirs.base_model.model.q
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor(A))
        layer.lora_B["default"].weight.copy_(torch.tensor(B))
    xt_t = torch.tensor(x, requires_grad=True)
    ht = theirs(xt_t)
    ht.backward(torch.tensor(g))

    assert ours.scaling["default"] == pytest.approx(layer.scaling["default"], rel=1e-15)
    np.testing.assert_allclose(h.numpy(), ht.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(xt.grad), xt_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(ours.lora_A["default"].grad), layer.lora_A["default"].weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(ours.lora_B["default"].grad), layer.lora_B["default"].weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert base.weight.grad is None and layer.base_layer.weight.grad is None


def test_pissa_matches_peft(torch):
    peft = require_oracle("peft")
    rng = np.random.default_rng(1)
    W0 = rng.standard_normal((6, 8)).astype(np.float32)
    base = Linear(8, 6)
    base.weight.data = backend.asarray(W0)
    ours = LoRALinear(base)
    ours.add_adapter("default", 2, 4, 2.0, init="pissa")

    theirs = _Holder.make(torch, 8, 6).float()
    with torch.no_grad():
        theirs.q.weight.copy_(torch.tensor(W0))
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights="pissa", target_modules=["q"]))
    layer = theirs.base_model.model.q
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().numpy() * 2.0
    np.testing.assert_allclose(to_numpy(ours.delta_weight("default")), delta, atol=1e-5)  # B A is unique; signs of U, V are not
    np.testing.assert_allclose(base.weight.numpy(), layer.base_layer.weight.detach().numpy(), atol=1e-5)


# ---- GPT-2 adapter files ----------------------------------------------------------
IDX = np.random.default_rng(0).integers(0, 50, (2, 7))


@pytest.fixture
def gpt2_folder(tmp_path, float64):
    """A tiny random GPT-2 written as a Hugging Face folder, and its minilora twin."""
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=50, seed=3))
    gpt.save_pretrained(tmp_path / "base")
    return tmp_path, gpt


def hf_peft_logits(torch, base_path, adapter_path):
    transformers, peft = require_oracle("transformers"), require_oracle("peft")
    hf = transformers.GPT2LMHeadModel.from_pretrained(base_path, dtype=torch.float64).eval()
    model = peft.PeftModel.from_pretrained(hf, adapter_path).eval()
    with torch.no_grad():
        return model(torch.tensor(IDX)).logits.numpy(), model


def our_logits(model):
    with no_grad():
        return model.eval()(IDX)[0].numpy()


@pytest.mark.parametrize("config", [
    LoraConfig(r=2, lora_alpha=4),  # the paper's q, v -> c_attn of rank 4
    LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", rank_pattern={r"1\.attn\.v": 3}, alpha_pattern={"q": 1}),
    LoraConfig(r=4, lora_alpha=2, use_rslora=True, target_modules=["k", "mlp.c_proj"]),
    LoraConfig(r=np.int64(2), lora_alpha=np.int64(3), target_modules={"q", "c_fc"}),  # as PEFT accepts them
])
def test_exported_adapter_gives_peft_the_same_logits(torch, gpt2_folder, config):
    tmp_path, gpt = gpt2_folder
    model = get_peft_model(gpt, config)
    rng = np.random.default_rng(7)
    for _, layer in lora_layers(model.model):
        layer.lora_B["default"].data = backend.asarray(rng.standard_normal(layer.lora_B["default"].shape) * 0.3)
    save_peft_gpt2(model, tmp_path / "adapter")
    theirs, _ = hf_peft_logits(torch, tmp_path / "base", tmp_path / "adapter")
    np.testing.assert_allclose(our_logits(model), theirs, rtol=1e-9, atol=1e-10)


def test_peft_adapter_imports_with_the_same_logits(torch, gpt2_folder):
    transformers, peft = require_oracle("transformers"), require_oracle("peft")
    tmp_path, _ = gpt2_folder
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base", dtype=torch.float64)
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                             init_lora_weights=False, alpha_pattern={"h.1.attn.c_attn": 2})  # B random
    theirs = peft.get_peft_model(hf, config).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = theirs(torch.tensor(IDX)).logits.numpy()
    ours = load_peft_gpt2(GPT.from_pretrained(tmp_path / "base", dtype="float64"), tmp_path / "adapter")
    np.testing.assert_allclose(our_logits(ours), expected, rtol=1e-9, atol=1e-10)
    q, k = ours.model.blocks[0].attn.q, ours.model.blocks[0].attn.k
    np.testing.assert_array_equal(q.lora_A["default"].numpy(), k.lora_A["default"].numpy())  # c_attn's A, shared
    assert q.r["default"] == 3 and ours.model.blocks[1].attn.v.scaling["default"] == 2 / 3

    # ... and back out again: PEFT reads what we write.
    save_peft_gpt2(ours, tmp_path / "again")
    again, _ = hf_peft_logits(torch, tmp_path / "base", tmp_path / "again")
    np.testing.assert_allclose(again, expected, rtol=1e-9, atol=1e-10)


def test_peft_features_we_cannot_load_are_named(gpt2_folder):
    from minilora.lora import from_peft_gpt2

    with pytest.raises(ValueError, match=r"use_dora=True.*bias='all'"):
        from_peft_gpt2({"peft_type": "LORA", "use_dora": True, "bias": "all", "lora_alpha": 8}, {})
    with pytest.raises(ValueError, match=r"'base_model\.model\.lm_head\.lora_A\.weight' is not a LoRA factor of a GPT-2 block"):
        from_peft_gpt2({"peft_type": "LORA", "lora_alpha": 8}, {"base_model.model.lm_head.lora_A.weight": np.zeros((2, 16))})


def test_export_refuses_a_layer_gpt2_lacks(gpt2_folder):
    _, gpt = gpt2_folder
    model = get_peft_model(gpt, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match=r"layer 'lm_head' has no GPT-2 counterpart"):
        save_peft_gpt2(model, "/nonexistent")


# ---- PiSSA across the boundary: PEFT's portable form, a plain LoRA adapter on GPT-2's own weights ----
def perturb(model, scale=0.3, seed=7):
    """Move every A and B as training would, so that a wrong base or a lost factor shows in the logits."""
    rng = np.random.default_rng(seed)
    for _, layer in lora_layers(model.model):
        for factor in (layer.lora_A["default"], layer.lora_B["default"]):
            factor.data = factor.data + backend.asarray(rng.standard_normal(factor.shape) * scale, like=factor.data)


@pytest.mark.parametrize("config", [
    LoraConfig(r=2, lora_alpha=4, init_lora_weights="pissa", target_modules=["q", "v", "c_fc"]),
    LoraConfig(r=3, lora_alpha=2, init_lora_weights="pissa", use_rslora=True, target_modules=["k", "o"],
               rank_pattern={r"1\.attn\.k": 2}),
])
def test_pissa_adapter_exports_as_a_plain_lora_adapter_that_peft_reads_on_the_original_gpt2(torch, gpt2_folder, config):
    tmp_path, gpt = gpt2_folder  # the folder holds the original GPT-2, saved before PiSSA
    model = get_peft_model(gpt, config)
    perturb(model)
    save_peft_gpt2(model, tmp_path / "adapter")
    theirs, peft_model = hf_peft_logits(torch, tmp_path / "base", tmp_path / "adapter")
    np.testing.assert_allclose(our_logits(model), theirs, rtol=1e-9, atol=1e-10)
    saved = peft_model.peft_config["default"]
    assert saved.init_lora_weights is True  # PEFT must not redo PiSSA on load: these factors fit W0 itself
    qkv = [layer.r["default"] for name, layer in lora_layers(model.model) if name in ("blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v")]
    assert peft_model.base_model.model.transformer.h[0].attn.c_attn.r["default"] == 2 * sum(qkv)  # [A; A0]: rank 2r each


def pissa_peft_adapter(torch, tmp_path, **kwargs):
    """PEFT's own PiSSA on GPT-2 (float32: PEFT refuses PiSSA in float64), "trained"; its logits, saved both ways."""
    transformers, peft = require_oracle("transformers"), require_oracle("peft")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights="pissa", fan_in_fan_out=True, **kwargs))
    theirs.save_pretrained(tmp_path / "initial")  # PEFT's recipe: the adapter before training, for the conversion
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
    theirs.eval()
    with torch.no_grad():
        expected = theirs(torch.tensor(IDX)).logits.numpy()
    theirs.save_pretrained(tmp_path / "pissa")  # as trained: PEFT redoes PiSSA's SVD when it loads this
    theirs.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    return expected


@pytest.mark.parametrize("kwargs", [
    dict(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj"]),
    dict(r=2, lora_alpha=3, target_modules=["c_fc", "c_attn"], use_rslora=True),
    dict(r=2, lora_alpha=3, target_modules=["c_fc"], rank_pattern={"h.0.mlp.c_fc": 3}, alpha_pattern={"h.1.mlp.c_fc": 5}),
])  # (PEFT cannot convert rsLoRA with patterns, so that pair is not here)
def test_peft_pissa_adapter_imports_with_peft_logits(torch, gpt2_folder, kwargs):
    tmp_path, _ = gpt2_folder
    expected = pissa_peft_adapter(torch, tmp_path, **kwargs)
    for folder in ("pissa", "converted"):  # both of PEFT's forms give the same model here
        ours = load_peft_gpt2(GPT.from_pretrained(tmp_path / "base", dtype="float64"), tmp_path / folder)
        np.testing.assert_allclose(our_logits(ours), expected, rtol=1e-5, atol=1e-6, err_msg=folder)  # PEFT ran in float32
        config = ours.peft_config["default"]
        assert config.init_lora_weights is True  # as PEFT's conversion writes it: rank 2r, the same scale
        assert {layer.r["default"] for _, layer in lora_layers(ours.model)} == \
            {2 * r for r in [kwargs["r"], *kwargs.get("rank_pattern", {}).values()]}
    # ... and back out: PEFT reads our export on the original GPT-2.
    save_peft_gpt2(ours, tmp_path / "again")
    again, _ = hf_peft_logits(torch, tmp_path / "base", tmp_path / "again")
    np.testing.assert_allclose(again, our_logits(ours), rtol=1e-9, atol=1e-10)


def test_peft_inits_that_change_gpt2s_weights_are_refused_or_need_the_model(gpt2_folder):
    from minilora.lora import from_peft_gpt2

    _, gpt = gpt2_folder
    A = {"base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight": np.zeros((2, 16)),
         "base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight": np.zeros((64, 2))}
    for init in ("pissa_niter_4", "olora", "corda", "loftq"):
        with pytest.raises(ValueError, match=rf"init_lora_weights='{init}' changes GPT-2's own weights.*"
                                             r"path_initial_model_for_weight_conversion"):
            from_peft_gpt2({"peft_type": "LORA", "lora_alpha": 4, "init_lora_weights": init}, A, model=gpt)
    with pytest.raises(ValueError, match=r"PiSSA adapter's factors belong to a residual.*Fix: load_peft_gpt2\(model, path\)"):
        from_peft_gpt2({"peft_type": "LORA", "lora_alpha": 4, "init_lora_weights": "pissa"}, A)
    config, _ = from_peft_gpt2({"peft_type": "LORA", "lora_alpha": 4, "init_lora_weights": "pissa"}, A, model=gpt)
    assert config.r == 4 and config.lora_alpha == 8  # rank 2r, the same scale


def test_init_false_draws_B_as_peft_does(torch):
    peft = require_oracle("peft")
    k, d, r = 300, 400, 4
    ours = LoRALinear(Linear(k, d), rng=np.random.default_rng(0))
    ours.add_adapter("default", r, 8, 2.0, init=False)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(_Holder.make(torch, k, d), peft.LoraConfig(r=r, lora_alpha=8, init_lora_weights=False,
                                                                            target_modules=["q"]))
    layer = theirs.base_model.model.q
    for ours_f, theirs_f in ((ours.lora_A["default"], layer.lora_A["default"].weight),
                             (ours.lora_B["default"], layer.lora_B["default"].weight)):
        a, t = ours_f.numpy(), theirs_f.detach().numpy()
        assert a.shape == t.shape
        assert np.abs(a).max() <= np.abs(t).max() * 1.02 and np.abs(t).max() <= np.abs(a).max() * 1.02  # the same bound
        assert abs(a.std() / t.std() - 1) < 0.05  # the same spread
