"""minilora.nn: the Module API, and gradient checks of every layer over small random configurations."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilora.functional as F
from minilora import backend, nn, to_numpy
from minilora.autograd import Tensor
from minilora.testing import arrays, assert_gradcheck
from module_gradcheck import assert_module_gradcheck, default_dtype


def tiny_block(n_embd=8, n_head=2, seed=0):
    return nn.Block(n_embd, n_head, rng=np.random.default_rng(seed))


# ---- the Module API -------------------------------------------------------------

def test_parameter_of_a_tensor_shares_its_data_as_torch_does():
    t = Tensor(np.array([1.0, 2.0]))
    p = nn.Parameter(t)
    assert p.data is t.data and p.requires_grad and p.is_leaf and p.dtype == np.float64
    p.data[0] = 5.0  # torch.nn.Parameter(t) shares t's storage too
    assert t.numpy()[0] == 5.0
    layer = nn.Linear(2, 1)
    layer.weight = nn.Parameter(layer.weight * 2)  # a computed Tensor becomes a leaf parameter
    assert layer.weight.is_leaf and dict(layer.named_parameters())["weight"] is layer.weight
    frozen = nn.Parameter(t, requires_grad=False, dtype="float32")
    assert not frozen.requires_grad and frozen.dtype == np.float32 and frozen.data is not t.data


def test_named_parameters_and_modules_follow_attribute_names():
    block = tiny_block()
    names = [n for n, _ in block.named_parameters()]
    assert names[:2] == ["ln_1.weight", "ln_1.bias"]
    for proj in "qkvo":
        assert f"attn.{proj}.weight" in names and f"attn.{proj}.bias" in names
    assert names[-4:] == ["mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    modules = dict(block.named_modules())
    assert isinstance(modules[""], nn.Block) and isinstance(modules["attn.q"], nn.Linear)
    assert block.get_submodule("attn.v") is block.attn.v
    with pytest.raises(AttributeError, match="no submodule 'w'"):
        block.get_submodule("attn.w")


def test_shared_parameter_is_listed_once():
    model = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
    model[1].weight = model[0].weight
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.bias"]


def test_state_dict_round_trip():
    a, b = tiny_block(seed=0), tiny_block(seed=1)
    state = {k: to_numpy(v).copy() for k, v in a.state_dict().items()}  # host copies, as a checkpoint file holds
    assert list(state) == [n for n, _ in a.named_parameters()]
    b.load_state_dict(state)
    for name, p in b.named_parameters():
        np.testing.assert_array_equal(p.numpy(), state[name])
    state["ln_1.weight"][0] = 42.0  # load_state_dict copies: the model keeps its own arrays
    assert b.ln_1.weight.numpy()[0] != 42.0


def test_load_state_dict_lists_every_problem_and_loads_nothing():
    block = tiny_block()
    before = {k: to_numpy(v).copy() for k, v in block.state_dict().items()}
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    del bad["attn.q.bias"], bad["mlp.c_fc.weight"]
    bad["attn.k.weight"] = np.zeros((8, 9))
    bad["attn.qkv.weight"] = np.zeros((8, 24))
    with pytest.raises(ValueError) as info:
        block.load_state_dict(bad)
    message = str(info.value)
    for expected in ("nothing was loaded", "attn.q.bias", "mlp.c_fc.weight", "attn.k.weight: checkpoint (8, 9) vs model (8, 8)",
                     "unexpected keys: attn.qkv.weight"):
        assert expected in message
    for name, p in block.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[name])


def test_load_state_dict_not_strict_reports_missing_and_unexpected():
    block = tiny_block()
    state = dict(block.state_dict())
    del state["ln_2.bias"]
    state["extra"] = np.zeros(3)
    assert block.load_state_dict(state, strict=False) == (["ln_2.bias"], ["extra"])


def test_train_eval_reach_every_module_and_switch_dropout():
    mlp = nn.MLP(4, dropout=0.5, rng=np.random.default_rng(0))
    x = Tensor(np.ones((2, 3, 4)))
    mlp.eval()
    assert not any(m.training for m in mlp.modules())
    np.testing.assert_array_equal(mlp(x).numpy(), mlp(x).numpy())
    mlp.train()
    assert all(m.training for m in mlp.modules())
    assert not np.array_equal(mlp(x).numpy(), mlp(x).numpy())  # a fresh dropout mask per call


def test_zero_grad_clears_every_gradient():
    block = tiny_block()
    block(Tensor(np.ones((1, 3, 8), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())


def test_repr_shows_the_tree():
    text = repr(tiny_block())
    assert "(attn): CausalSelfAttention(n_embd=8, n_head=2" in text
    assert "(q): Linear(in_features=8, out_features=8, bias=True)" in text
    assert "(c_fc): Linear(in_features=8, out_features=32, bias=True)" in text


def test_module_must_call_super_init():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="super"):
        Broken()


def test_attention_rejects_heads_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="n_embd=10 is not divisible by n_head=4"):
        nn.CausalSelfAttention(10, 4)


def test_attention_is_causal():
    """Changing a later token leaves every earlier output unchanged."""
    attn = nn.CausalSelfAttention(8, 2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 5, 8))
    y = attn(Tensor(x)).numpy()
    x[:, 3] += 1.0
    y2 = attn(Tensor(x)).numpy()
    np.testing.assert_allclose(y[:, :3], y2[:, :3], atol=1e-12)
    assert not np.allclose(y[:, 3:], y2[:, 3:])


@settings(max_examples=10)
@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**16))
def test_kv_cache_in_chunks_equals_one_pass(B, T, split, seed):
    """Feeding a sequence in two chunks through a KVCache gives the outputs of one pass over all of it."""
    with default_dtype(np.float64):
        attn = nn.CausalSelfAttention(8, 2, rng=np.random.default_rng(seed))
    x = Tensor(np.random.default_rng(seed + 1).standard_normal((B, T + split, 8)))
    cache = nn.KVCache()
    first, second = attn(x[:, :split], kv_cache=cache), attn(x[:, split:], kv_cache=cache)
    assert len(cache) == T + split
    np.testing.assert_allclose(F.concatenate([first, second], axis=1).numpy(), attn(x).numpy(), atol=1e-12)


# ---- gradient checks of every layer (float64, dropout off) ----------------------

@settings(max_examples=10)
@given(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**16))
def test_linear_gradcheck(n_in, n_out, bias, seed):
    with default_dtype(np.float64):
        layer = nn.Linear(n_in, n_out, bias=bias, rng=np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).standard_normal((2, 3, n_in))
    assert_module_gradcheck(layer, lambda x: layer(x), as_input(x))


@settings(max_examples=10)
@given(st.integers(2, 6), st.booleans(), st.integers(0, 2**16))
def test_layer_norm_gradcheck(dim, bias, seed):
    with default_dtype(np.float64):
        layer = nn.LayerNorm(dim, bias=bias)
    rng = np.random.default_rng(seed)
    layer.weight.data = backend.asarray(rng.standard_normal(dim))  # away from the (1, 0) init, so a swapped term would show
    if bias:
        layer.bias.data = backend.asarray(rng.standard_normal(dim))
    assert_module_gradcheck(layer, lambda x: layer(x), as_input(rng.standard_normal((2, 3, dim))))


@settings(max_examples=8)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.booleans(), st.integers(0, 2**16))
def test_causal_self_attention_gradcheck(B, T, n_head, bias, seed):
    with default_dtype(np.float64):
        attn = nn.CausalSelfAttention(2 * n_head, n_head, bias=bias, rng=np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).standard_normal((B, T, 2 * n_head))
    assert_module_gradcheck(attn, lambda x: attn(x), as_input(x))


@settings(max_examples=5)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(0, 2**16))
def test_block_gradcheck(B, T, seed):
    with default_dtype(np.float64):
        block = nn.Block(4, 2, rng=np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).standard_normal((B, T, 4))
    assert_module_gradcheck(block, lambda x: block(x), as_input(x))


@given(arrays((2, 3, 4)))
@settings(max_examples=5)
def test_mlp_gradcheck_in_its_input(x):
    with default_dtype(np.float64):
        mlp = nn.MLP(4, rng=np.random.default_rng(0))
    assert_gradcheck(lambda x: mlp(x), x)


def as_input(x):
    """A float64 input Tensor for assert_module_gradcheck, which then checks its gradient too."""
    return Tensor(x, dtype=np.float64, requires_grad=True)
