"""LoRALinear, LoraConfig and LoraModel on a tiny GPT: init, injection, training, merging, several adapters."""
import numpy as np
import pytest

import minilora
from minilora import Tensor, backend, no_grad, to_numpy
from minilora.models.gpt import GPT, GPTConfig
from minilora.lora import LoraConfig, LoRALinear, count_parameters, get_peft_model, lora_layers, mark_only_lora_as_trainable
from minilora.nn import Linear
from minilora.optim import AdamW

IDX = np.random.default_rng(0).integers(0, 20, (2, 6))
TARGETS = np.random.default_rng(1).integers(0, 20, (2, 6))


@pytest.fixture
def float64():
    with minilora.backend.using_default_dtype("float64"):
        yield


def tiny_gpt(n_layer=2, n_embd=16):
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=16, vocab_size=20, seed=1))


def logits(model):
    with no_grad():
        return model(IDX)[0].numpy()


def train(model, steps=3, lr=0.05):
    """A few AdamW steps on the trainable parameters; returns the optimizer."""
    model.train()
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        _, loss = model(IDX, TARGETS)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


# ---- initialisation ---------------------------------------------------------
def test_at_init_the_output_is_the_base_models_and_only_B_gets_a_gradient(float64):
    """docs/lora.md: B = 0 at init, so dA = 0 and the first step's gradient moves only B; but A's
    gradient is zeros, not None, so AdamW's decoupled decay still shrinks A by (1 - lr wd)."""
    lr = 0.05
    for weight_decay, factor in ((0.0, 1.0), (None, 1 - lr * 0.01)):  # None: AdamW's default, 0.01
        gpt = tiny_gpt()
        before = logits(gpt)
        model = get_peft_model(gpt, LoraConfig(r=4))
        np.testing.assert_array_equal(logits(model), before)  # B = 0, so B A x = 0 exactly
        layers = lora_layers(model.model)
        A0 = [layer.lora_A["default"].numpy().copy() for _, layer in layers]
        _, loss = model(IDX, TARGETS)
        loss.backward()
        for name, layer in layers:
            assert not np.any(to_numpy(layer.lora_A["default"].grad)), name  # dA = s (dY B)^T X = 0 while B = 0
            assert np.any(to_numpy(layer.lora_B["default"].grad)), name  # dB = s dY^T (X A^T) is not
        trainable = [p for p in model.parameters() if p.requires_grad]
        (AdamW(trainable, lr=lr) if weight_decay is None else AdamW(trainable, lr=lr, weight_decay=weight_decay)).step()
        for (name, layer), a0 in zip(layers, A0):
            assert np.any(layer.lora_B["default"].numpy()), name  # B moved off zero
            A = layer.lora_A["default"].numpy()
            if factor == 1.0:
                np.testing.assert_array_equal(A, a0, err_msg=name)  # no decay: A stays exactly
            else:
                assert not np.array_equal(A, a0), name
                np.testing.assert_allclose(A, a0 * factor, rtol=1e-12, atol=0, err_msg=name)  # only the decay


def test_kaiming_and_gaussian_inits():
    base = Linear(400, 300, rng=np.random.default_rng(0))
    layer = LoRALinear(base, rng=np.random.default_rng(1))
    layer.add_adapter("kaiming", 4, 4, 1.0, init=True)
    layer.add_adapter("gauss", 4, 4, 1.0, init="gaussian")
    A = layer.lora_A["kaiming"].numpy()
    assert np.abs(A).max() <= 1 / np.sqrt(400) and np.abs(A).max() > 0.9 / np.sqrt(400)
    assert abs(layer.lora_A["gauss"].numpy().std() - 1 / 4) < 0.01  # PEFT's std 1/r
    for name in ("kaiming", "gauss"):
        assert not np.any(layer.lora_B[name].numpy())


def test_pissa_keeps_the_output_and_puts_the_top_directions_in_B_A(float64):
    base = Linear(6, 5, rng=np.random.default_rng(0))
    W0 = base.weight.numpy().copy()
    x = Tensor(np.random.default_rng(1).standard_normal((3, 6)))
    before = base(x).numpy()
    layer = LoRALinear(base)
    layer.add_adapter("default", 2, 4, 2.0, init="pissa")
    np.testing.assert_allclose(layer(x).numpy(), before, atol=1e-12)
    U, S, Vh = np.linalg.svd(W0)
    np.testing.assert_allclose(to_numpy(layer.delta_weight("default")), (U[:, :2] * S[:2]) @ Vh[:2], atol=1e-12)
    np.testing.assert_allclose(base.weight.numpy(), W0 - (U[:, :2] * S[:2]) @ Vh[:2], atol=1e-12)  # the frozen residual


# ---- injection and counting -------------------------------------------------
def test_q_v_parameter_count_is_the_papers_formula():
    n_layer, d, r = 3, 16, 4
    model = get_peft_model(tiny_gpt(n_layer, d), LoraConfig(r=r))
    trainable, total = count_parameters(model)
    L_hat = 2 * n_layer  # Wq and Wv in each layer
    assert trainable == 2 * L_hat * d * r
    assert total == tiny_gpt(n_layer, d).num_parameters() + trainable
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"model.blocks.{i}.attn.{m}.lora_{f}.default" for i in range(n_layer) for m in "qv" for f in "AB"}


@pytest.mark.parametrize("targets, expected", [
    (["q"], {"blocks.0.attn.q", "blocks.1.attn.q"}),
    (["1.attn.v", "c_fc"], {"blocks.1.attn.v", "blocks.0.mlp.c_fc", "blocks.1.mlp.c_fc"}),
    (r"blocks\.0\.attn\.[kv]", {"blocks.0.attn.k", "blocks.0.attn.v"}),
    ("all-linear", {f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.c_fc", "mlp.c_proj")}),
])
def test_target_modules_forms(targets, expected):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=targets))
    assert {n for n, _ in lora_layers(model.model)} == expected  # all-linear leaves lm_head alone


def test_exclude_modules():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules="all-linear", exclude_modules=["mlp.c_fc", "mlp.c_proj", "o"]))
    assert {n for n, _ in lora_layers(model.model)} == {f"blocks.{i}.attn.{m}" for i in range(2) for m in "qkv"}


def test_no_match_lists_the_linear_layers():
    with pytest.raises(ValueError, match=r"matches no Linear.*attn \(CausalSelfAttention\).*blocks\.0\.attn\.q"):
        get_peft_model(tiny_gpt(), LoraConfig(target_modules=["attn"]))
    with pytest.raises(ValueError, match=r"query.*Linear layers are: \[.*blocks\.1\.mlp\.c_proj"):
        get_peft_model(tiny_gpt(), LoraConfig(target_modules=["query"]))


def test_rank_above_min_in_out_names_the_layer():
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn\.q'.*r=17 exceeds min\(in, out\) = 16"):
        get_peft_model(gpt, LoraConfig(r=17))
    assert not lora_layers(gpt)  # nothing was injected


def test_rank_and_alpha_patterns():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, lora_alpha=4, rank_pattern={r"1\.attn\.v": 8}, alpha_pattern={"q": 1}))
    v1, q0, v0 = (model.model.get_submodule(n) for n in ("blocks.1.attn.v", "blocks.0.attn.q", "blocks.0.attn.v"))
    assert (v1.r["default"], v1.scaling["default"]) == (8, 0.5)
    assert (q0.r["default"], q0.scaling["default"]) == (2, 0.5)
    assert (v0.r["default"], v0.scaling["default"]) == (2, 2.0)
    rs = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8, use_rslora=True))
    assert rs.model.blocks[0].attn.q.scaling["default"] == 8 / 2  # alpha / sqrt(r)


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, r"r=0 must be a positive integer"),
    ({"r": 2.5}, r"r=2.5 must be a positive integer"),
    ({"lora_alpha": 0}, r"lora_alpha=0 must be a finite positive number"),
    ({"lora_alpha": -1.0}, r"lora_alpha=-1.0 must be a finite positive number"),
    ({"bias": "some"}, r"bias='some' is not one of \('none', 'all', 'lora_only'\)"),
    ({"lora_dropout": 1.0}, r"lora_dropout=1.0 must be in \[0, 1\)"),
    ({"init_lora_weights": "olora"}, r"init_lora_weights='olora' is not one of"),
    ({"rank_pattern": {"q": 0}}, r"rank_pattern\['q'\]=0"),
    ({"target_modules": 3}, r"target_modules=3 must be"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_bias_modes():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, bias="lora_only"))
    biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert biases == {f"model.blocks.{i}.attn.{m}.base_layer.bias" for i in range(2) for m in "qv"}
    mark_only_lora_as_trainable(model.model, bias="all")
    assert {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")} == {
        n for n, _ in model.named_parameters() if n.endswith("bias")}
    mark_only_lora_as_trainable(model.model, bias="none")
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="bias='some'"):
        mark_only_lora_as_trainable(model.model, bias="some")


def test_dropout_only_on_the_low_rank_path():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, lora_dropout=0.5))
    base = logits(model)
    model.train()
    with no_grad():  # B = 0: whatever the mask, the low-rank path adds nothing
        np.testing.assert_array_equal(model(IDX)[0].numpy(), base)
    for _, layer in lora_layers(model.model):
        layer.lora_B["default"].data = layer.lora_B["default"].data + 0.5
    with no_grad():
        train_out = model(IDX)[0].numpy()
    assert not np.allclose(train_out, logits(model.eval()))  # masks differ in train mode, none in eval


# ---- training, merging ------------------------------------------------------
def test_training_touches_only_A_and_B_and_merging_agrees(float64):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8))
    frozen = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.requires_grad}
    opt = train(model)
    lora_ids = {id(layer.lora_A["default"]) for _, layer in lora_layers(model.model)} | {
        id(layer.lora_B["default"]) for _, layer in lora_layers(model.model)}
    assert {id(opt.params[i]) for i in opt.state} == lora_ids  # AdamW state for A and B alone
    for n, p in model.named_parameters():
        if n in frozen:
            np.testing.assert_array_equal(p.numpy(), frozen[n], err_msg=n)  # bit for bit

    model.eval()
    unmerged = logits(model)
    assert_unmerge_within_one_ulp(model, check=lambda: np.testing.assert_allclose(logits(model), unmerged, rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(logits(model), unmerged, rtol=1e-12, atol=1e-12)


def assert_unmerge_within_one_ulp(model, check=lambda: None):
    """Merge, run ``check``, unmerge; W0 must come back within one ulp of max(|W0|, |W0 + ΔW|).

    Rounding W0 + ΔW drops the bits of W0 below the merged value's ulp; no
    subtraction can recover them. For a small update (|ΔW| well below |W0|, the
    usual case) this is one ulp of W0 itself.
    """
    layers = lora_layers(model.model)
    W0 = [layer.base_layer.weight.numpy().copy() for _, layer in layers]
    model.merge_adapter()
    check()
    merged = [layer.base_layer.weight.numpy().copy() for _, layer in layers]
    model.unmerge_adapter()
    for w0, w, (name, layer) in zip(W0, merged, layers):
        restored = layer.base_layer.weight.numpy()  # on the host: CuPy has no np.spacing
        assert restored.dtype == w.dtype
        assert np.all(np.abs(restored - w0) <= np.spacing(np.maximum(np.abs(w0), np.abs(w)))), name


def test_unmerge_restores_float32_weights_within_one_ulp():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8))
    before = [layer.base_layer.weight.numpy().copy() for _, layer in lora_layers(model.model)]
    train(model, steps=2, lr=0.01)
    assert_unmerge_within_one_ulp(model)
    small = get_peft_model(tiny_gpt(), LoraConfig(r=4))
    for _, layer in lora_layers(small.model):  # a small update: W0 comes back within one ulp of W0 itself
        layer.lora_B["default"].data = backend.asarray(np.full(layer.lora_B["default"].shape, 1e-4, dtype=np.float32))
    small.merge_adapter()
    small.unmerge_adapter()
    for w0, (_, layer) in zip(before, lora_layers(small.model)):
        assert np.all(np.abs(layer.base_layer.weight.numpy() - w0) <= np.spacing(np.abs(w0)))


def test_merge_errors():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2))
    with pytest.raises(RuntimeError, match="nothing is merged"):
        model.unmerge_adapter()
    model.merge_adapter()
    with pytest.raises(RuntimeError, match="already merged.*unmerge_adapter\\(\\) first"):
        model.merge_adapter()
    model.train()
    with pytest.raises(RuntimeError, match="merged into the base weight.*no gradient.*unmerge_adapter"):
        model(IDX, TARGETS)
    logits(model.eval())  # inference while merged is fine
    for action in (lambda: model.set_adapter("default"), lambda: model.delete_adapter("default"),
                   lambda: model.disable_adapter().__enter__()):
        with pytest.raises(RuntimeError, match="merged into.*unmerge_adapter\\(\\) first"):
            action()
    model.train(True)  # train()/eval() never merge or unmerge
    assert all(layer.merged_adapter == "default" for _, layer in lora_layers(model.model))


def test_merge_and_unload_gives_a_plain_model(float64):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules="all-linear"))
    train(model, steps=2)
    expected = logits(model.eval())
    plain = model.merge_and_unload()
    assert isinstance(plain, GPT) and not lora_layers(plain)
    assert type(plain.blocks[0].attn.q) is Linear
    np.testing.assert_allclose(logits(plain), expected, rtol=1e-10, atol=1e-12)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in tiny_gpt().named_parameters()]  # order kept


# ---- several adapters ---------------------------------------------------------
def test_several_adapters_on_one_base(float64):
    gpt = tiny_gpt()
    base = logits(gpt)
    model = get_peft_model(gpt, LoraConfig(r=2), adapter_name="task_a")
    train(model, steps=2)
    a_out = logits(model.eval())
    model.add_adapter("task_b", LoraConfig(r=3, target_modules=["q", "k"]))
    np.testing.assert_array_equal(logits(model), a_out)  # a new adapter waits for set_adapter
    model.set_adapter("task_b")
    assert {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad} == {"task_b"}
    np.testing.assert_array_equal(logits(model), base)  # task_b's B = 0; task_a is off (v has no task_b: base)
    train(model, steps=2)
    b_out = logits(model.eval())
    with model.disable_adapter():
        np.testing.assert_array_equal(logits(model), base)
    np.testing.assert_array_equal(logits(model), b_out)
    model.set_adapter("task_a")
    np.testing.assert_array_equal(logits(model), a_out)  # training task_b left task_a alone
    model.delete_adapter("task_b")
    assert type(model.model.blocks[0].attn.k) is Linear  # k held only task_b
    assert list(model.peft_config) == ["task_a"]
    np.testing.assert_array_equal(logits(model), a_out)
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("task_a", LoraConfig())
    with pytest.raises(KeyError, match="no adapter named 'task_c'"):
        model.set_adapter("task_c")
    with pytest.raises(ValueError, match="must be a Python identifier"):
        model.add_adapter("my.adapter", LoraConfig())


def random_B(model, adapter_name, seed=5):
    """Give ``adapter_name`` random B's, so that it changes the logits (its B's are zero at init)."""
    rng = np.random.default_rng(seed)
    for _, layer in lora_layers(model.model):
        if adapter_name in layer.lora_B:
            B = layer.lora_B[adapter_name]
            B.data = backend.asarray(rng.standard_normal(B.shape), dtype=B.dtype)


def test_deleting_the_active_adapter_falls_back_to_the_first_remaining_one(float64):
    model = get_peft_model(tiny_gpt(), LoraConfig(r=2), adapter_name="a")
    train(model, steps=2)
    a_out = logits(model.eval())
    model.add_adapter("b", LoraConfig(r=2))
    model.add_adapter("c", LoraConfig(r=2))
    model.set_adapter("b")
    model.delete_adapter("b")
    assert model.active_adapter == "a"  # the first one added that is left, as PEFT
    assert all(layer.active_adapter == "a" for _, layer in lora_layers(model.model))
    assert {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad} == {"a"}  # and it trains
    np.testing.assert_array_equal(logits(model), a_out)
    model.delete_adapter("a")
    assert model.active_adapter == "c" and count_parameters(model)[0] > 0
    model.delete_adapter("c")
    assert model.active_adapter is None and not lora_layers(model.model)
    np.testing.assert_array_equal(logits(model), logits(tiny_gpt()))


# ---- disable_adapter(): a flag, so what happens inside the block keeps its meaning ---------
@pytest.fixture
def two_adapters(float64):
    """A model with adapters a (active) and b, both non-zero; the logits of the base, of a and of b."""
    gpt = tiny_gpt()
    base = logits(gpt)
    model = get_peft_model(gpt, LoraConfig(r=2), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["q", "k"]))
    random_B(model, "a", seed=1)
    random_B(model, "b", seed=2)
    model.eval()
    a_out = logits(model)
    model.set_adapter("b")
    b_out = logits(model)
    model.set_adapter("a")
    assert not np.allclose(a_out, base) and not np.allclose(b_out, base) and not np.allclose(a_out, b_out)
    return model, base, a_out, b_out


def test_set_adapter_inside_disable_adapter(two_adapters):
    model, base, a_out, b_out = two_adapters
    with model.disable_adapter():
        model.set_adapter("b")
        assert model.active_adapter == "b"
        np.testing.assert_array_equal(logits(model), base)  # still disabled inside the block
    np.testing.assert_array_equal(logits(model), b_out)  # and b, not a, once it ends


def test_delete_adapter_inside_disable_adapter(two_adapters):
    model, base, a_out, b_out = two_adapters
    with model.disable_adapter():
        model.delete_adapter("a")
        np.testing.assert_array_equal(logits(model), base)
    assert model.active_adapter == "b"
    np.testing.assert_array_equal(logits(model), b_out)


def test_merge_and_unload_inside_disable_adapter_keeps_the_trained_adapter(two_adapters):
    model, base, a_out, b_out = two_adapters
    with model.disable_adapter():
        plain = model.merge_and_unload()
    assert not lora_layers(plain)
    np.testing.assert_allclose(logits(plain), a_out, rtol=1e-10, atol=1e-12)


def test_merge_adapter_inside_disable_adapter_is_refused(two_adapters):
    model, base, a_out, b_out = two_adapters
    with model.disable_adapter():
        with pytest.raises(RuntimeError, match=r"adapters are disabled.*cannot be switched off.*Fix: merge after the with block"):
            model.merge_adapter()
        np.testing.assert_array_equal(logits(model), base)
    np.testing.assert_array_equal(logits(model), a_out)


def test_add_adapter_inside_disable_adapter(two_adapters):
    model, base, a_out, b_out = two_adapters
    with model.disable_adapter():
        with model.disable_adapter():  # nested: the inner end leaves the outer block disabled
            pass
        np.testing.assert_array_equal(logits(model), base)
        model.add_adapter("c", LoraConfig(r=2, target_modules=["v", "attn.o"]))  # v holds a, o is new
        random_B(model, "c", seed=3)
        np.testing.assert_array_equal(logits(model), base)
        assert model.model.blocks[0].attn.o.disable_adapters  # a layer made inside the block starts disabled
        model.set_adapter("c")
        np.testing.assert_array_equal(logits(model), base)
    assert not any(layer.disable_adapters for _, layer in lora_layers(model.model))
    assert not np.allclose(logits(model), base)
    model.set_adapter("a")
    np.testing.assert_array_equal(logits(model), a_out)


# ---- LoRA on GPT-2's tied lm_head -------------------------------------------------
def test_lora_on_the_tied_lm_head_unties_it_so_merging_leaves_the_embedding(float64, tmp_path):
    gpt = tiny_gpt()
    assert gpt.lm_head.weight is gpt.wte.weight
    wte, shared_config = gpt.wte.weight, gpt.config
    E = wte.numpy().copy()
    model = get_peft_model(gpt, LoraConfig(r=2, target_modules=["lm_head"]))
    random_B(model, "default")
    head = model.model.lm_head
    assert head.base_layer.weight is not wte and model.model.wte.weight is wte  # the head got its own copy
    np.testing.assert_array_equal(head.base_layer.weight.numpy(), E)
    assert not head.base_layer.weight.requires_grad and model.model.config.tie_weights is False
    assert shared_config.tie_weights  # a new config: one the user may share with another model is not changed
    unmerged = logits(model.eval())
    model.merge_adapter()
    np.testing.assert_array_equal(model.model.wte.weight.numpy(), E)  # the embedding is untouched
    np.testing.assert_allclose(logits(model), unmerged, rtol=1e-10, atol=1e-12)
    model.unmerge_adapter()
    plain = model.merge_and_unload()
    np.testing.assert_allclose(logits(plain), unmerged, rtol=1e-10, atol=1e-12)
    plain.save_pretrained(tmp_path)  # untied: the merged head is saved beside wte
    np.testing.assert_allclose(logits(GPT.from_pretrained(tmp_path, dtype="float64")), unmerged, rtol=1e-10, atol=1e-12)


def test_pissa_on_the_tied_lm_head_keeps_the_output_at_init(float64):
    gpt = tiny_gpt()
    before = logits(gpt)
    E = gpt.wte.weight.numpy().copy()
    model = get_peft_model(gpt, LoraConfig(r=2, init_lora_weights="pissa", target_modules=["lm_head", "q"]))
    np.testing.assert_allclose(logits(model), before, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(model.model.wte.weight.numpy(), E)  # the residual went into the head's copy only
