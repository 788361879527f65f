"""The 4-bit frozen base (minilora.quant): Q4_1 against gguf, NF4 against QLoRA's code book, the LoRA op over it.

Q4_1 blocks are checked byte for byte against gguf.quants (the reference llama.cpp
ships in Python); NF4's constants against the construction that defines them.
The ops over a 4-bit W0 are gradient-checked in float64 and must equal the same
op over the dequantized float W0, and PyTorch's autograd. Real SmolLM2 tensors:
tests/test_quant_smollm2.py. The CuPy kernels: tests/test_quant_gpu.py.
"""
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require_oracle
from minilora import Tensor, backend
from minilora.lora import LoraConfig, get_peft_model, lora_layers
from minilora.lora.layer import LoRALinear
from minilora.lora.function import lora_linear
from minilora.models import Llama, LlamaConfig
from minilora.nn import Linear
from minilora.quant import QuantizedLinear, base_memory, dequantize_base, quantize_base, quantized_lora_linear
from minilora.quant import nf4, q4_1
from minilora.quant.blocks import pack_codes, unpack_codes
from minilora.testing import as_tensor, assert_gradcheck

FORMATS = {"q4_1": q4_1, "nf4": nf4}
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)  # every projection's input splits into blocks of 64


def weight(rng, rows, cols, scale=0.05):
    return (scale * rng.standard_normal((rows, cols))).astype(np.float32)


# ---------------------------------------------------------------- the formats

@given(rows=st.integers(1, 3), blocks=st.integers(1, 3), block=st.sampled_from([32, 64]), seed=st.integers(0, 2**16))
def test_codes_pack_two_to_a_byte_and_unpack_back(rows, blocks, block, seed):
    q = np.random.default_rng(seed).integers(0, 16, (rows, blocks, block)).astype(np.uint8)
    codes = pack_codes(q)
    assert codes.shape == (rows, blocks * block // 2) and codes.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(codes, block), q)
    np.testing.assert_array_equal(codes[:, 0] & 15, q[:, 0, 0])  # byte 0 holds values 0 (low bits) and block/2 (high)
    np.testing.assert_array_equal(codes[:, 0] >> 4, q[:, 0, block // 2])


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(3))
def test_q4_1_blocks_are_ggufs_bytes_and_dequantize_to_its_bits(seed):
    gguf = require_oracle("gguf")
    rng = np.random.default_rng(seed)
    w = weight(rng, 6, 128) + rng.standard_normal((6, 1)).astype(np.float32)  # blocks off zero: m matters
    w[0, :32] = 0.25  # a constant block: d = 0
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)  # (6, 4 * 20) uint8
    codes, d, m = q4_1.quantize(w)
    np.testing.assert_array_equal(q4_1.from_gguf_bytes(raw, w.shape)[0], codes)
    np.testing.assert_array_equal(q4_1.from_gguf_bytes(raw, w.shape)[1].view(np.uint16), d.view(np.uint16))
    np.testing.assert_array_equal(q4_1.from_gguf_bytes(raw, w.shape)[2].view(np.uint16), m.view(np.uint16))
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)  # (6, 128) float32
    np.testing.assert_array_equal(q4_1.dequantize(codes, d, m), expected)


@given(seed=st.integers(0, 2**16), shift=st.floats(-2, 2), scale=st.floats(1e-3, 10))
def test_q4_1_round_trip_error_is_at_most_half_a_step(seed, shift, scale):
    w = (shift + scale * np.random.default_rng(seed).standard_normal((3, 64))).astype(np.float32)
    codes, d, m = q4_1.quantize(w)
    blocks = w.reshape(3, 2, 32)
    step = (blocks.max(-1) - blocks.min(-1)) / 15  # (3, 2): d before float16 rounding
    # half a step, plus float16's rounding of d (times q <= 15) and of m (relative 2^-11 each)
    bound = 0.5 * step + 15 * step * 2**-11 + np.abs(blocks.min(-1)) * 2**-11 + 1e-6 * np.abs(blocks).max(-1)
    error = np.abs(q4_1.dequantize(codes, d, m).reshape(3, 2, 32) - blocks).max(-1)
    assert (error <= bound).all(), (error, bound)


def test_nf4_code_book_is_normal_quantiles_scaled_to_one_with_an_exact_zero():
    """QLoRA's NF4 construction: 8 positive and 7 negative quantiles of N(0, 1), then 0, over the largest."""
    ppf = statistics.NormalDist().inv_cdf
    offset = 1 - (1 / 32 + 1 / 30) / 2  # 0.9677...: halfway between the 16- and the 15-value ends (QLoRA, Appendix)
    positive = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]  # 8 values
    negative = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]  # 7 values
    values = np.sort(positive + [0.0] + negative)
    values /= values.max()
    np.testing.assert_allclose(nf4.CODE, values, rtol=0, atol=2e-7)  # bitsandbytes rounded them to float32
    assert nf4.CODE[7] == 0 and nf4.CODE[0] == -1 and nf4.CODE[15] == 1 and (np.diff(nf4.CODE) > 0).all()


@given(seed=st.integers(0, 2**16), scale=st.floats(1e-4, 10))
def test_nf4_picks_the_nearest_code_and_round_trips_within_half_a_gap(seed, scale):
    w = (scale * np.random.default_rng(seed).standard_normal((2, 128))).astype(np.float32)
    codes, absmax = nf4.quantize(w)
    assert codes.shape == (2, 64) and absmax.shape == (2, 2) and absmax.dtype == np.float32
    blocks = w.reshape(2, 2, 64)
    np.testing.assert_array_equal(absmax, np.abs(blocks).max(-1))
    q = unpack_codes(codes, 64)  # (2, 2, 64)
    nearest = np.abs(blocks[..., None] / absmax[..., None, None] - nf4.CODE).argmin(-1)  # brute force over 16 codes
    np.testing.assert_array_equal(q, nearest)
    half_gap = np.diff(nf4.CODE).max() / 2  # the widest gap, between 0.7230 and 1
    error = np.abs(nf4.dequantize(codes, absmax).reshape(2, 2, 64) - blocks)
    assert (error <= absmax[..., None] * (half_gap + 1e-6)).all()


def test_nf4_keeps_code_values_and_zero_blocks_exactly():
    absmax = np.float32(0.37)
    w = np.concatenate([np.tile(nf4.CODE * absmax, 4), np.zeros(64, np.float32)])[None]  # (1, 128)
    np.testing.assert_array_equal(nf4.dequantize(*nf4.quantize(w)), w)


@pytest.mark.parametrize("format, block", [("q4_1", 32), ("nf4", 64)])
def test_a_weight_that_does_not_split_into_blocks_is_refused(format, block):
    w = np.ones((4, block + 16), np.float32)
    with pytest.raises(ValueError, match=rf"{format}.quantize: a weight of shape \(4, {block + 16}\) does not split "
                                         rf"into blocks of {block}.*Fix"):
        FORMATS[format].quantize(w)
    with pytest.raises(ValueError, match=rf"blocks of {block}"):
        QuantizedLinear.from_linear(Linear(block + 16, 4), format)


def test_an_unknown_format_and_mismatched_blocks_are_refused():
    with pytest.raises(ValueError, match=r"QuantizedLinear.from_linear: unknown 4-bit format 'q8_0'.*Fix: choose one of \['nf4', 'q4_1'\]"):
        QuantizedLinear.from_linear(Linear(64, 4), "q8_0")
    with pytest.raises(ValueError, match=r"quantize_base: unknown 4-bit format 'int4'"):
        quantize_base(Llama(LlamaConfig(**SMALL)), "int4")
    codes, absmax = nf4.quantize(np.ones((4, 128), np.float32))
    with pytest.raises(ValueError, match=r"QuantizedLinear\('nf4'\): qweight \(4, 64\) needs scales of shape \(4, 2\)"):
        QuantizedLinear("nf4", codes, absmax[:, :1])
    with pytest.raises(ValueError, match=r"and no mins"):
        QuantizedLinear("nf4", codes, absmax, mins=absmax)
    with pytest.raises(ValueError, match=r"from_gguf_bytes \(blk.0.attn_q.weight\): expected 80 bytes"):
        q4_1.from_gguf_bytes(np.zeros((1, 79), np.uint8), (1, 128), "blk.0.attn_q.weight")


# ---------------------------------------------------------------- the ops over a 4-bit W0

def quantized_layer(format, d, k, seed=0, bias=False):
    linear = Linear(k, d, bias=bias, rng=np.random.default_rng(seed))
    return QuantizedLinear.from_linear(linear, format)


@st.composite
def problems(draw):
    """x (..., k), a QuantizedLinear (d, k), A (r, k), B (d, r), float64, and a scaling."""
    format = draw(st.sampled_from(["q4_1", "nf4"]))
    k = draw(st.sampled_from([64, 128]))
    d, r = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    with backend.using_default_dtype("float64"):
        layer = quantized_layer(format, d, k, seed=draw(st.integers(0, 2**16)), bias=draw(st.booleans()))
    arrays = [rng.standard_normal(lead + (k,)), rng.standard_normal((r, k)), rng.standard_normal((d, r))]
    return layer, arrays, draw(st.floats(0.1, 4.0))


@given(problem=problems())
def test_quantized_lora_linear_gradchecks_for_x_a_and_b(problem):
    layer, (x, A, B), s = problem
    assert layer.dequantize().dtype == np.float64
    assert_gradcheck(lambda x, A, B: quantized_lora_linear(x, layer, layer.bias, A, B, s), x, A, B)


@given(problem=problems())
def test_quantized_linear_gradchecks_for_x(problem):
    layer, (x, _, _), _ = problem
    assert_gradcheck(lambda x: layer(x), x)


@given(problem=problems())
def test_quantized_lora_linear_equals_lora_linear_on_the_dequantized_base(problem):
    layer, (x, A, B), s = problem
    W0 = Tensor(layer.dequantize())  # float64, frozen
    ours = [as_tensor(a) for a in (x, A, B)]
    theirs = [as_tensor(a) for a in (x, A, B)]
    h = quantized_lora_linear(ours[0], layer, layer.bias, ours[1], ours[2], s)
    expected = lora_linear(theirs[0], W0, layer.bias, theirs[1], theirs[2], s)
    np.testing.assert_array_equal(h.numpy(), expected.numpy())  # the same numbers through the same code
    cotangent = np.random.default_rng(1).standard_normal(h.shape)
    h.backward(cotangent)
    expected.backward(cotangent)
    for mine, reference in zip(ours, theirs):
        np.testing.assert_array_equal(backend.to_numpy(mine.grad), backend.to_numpy(reference.grad))


@pytest.mark.oracle
@given(problem=problems())
def test_quantized_lora_linear_matches_pytorch(problem):
    torch = require_oracle("torch")
    layer, (x, A, B), s = problem
    ours = [as_tensor(a) for a in (x, A, B)]
    theirs = [torch.from_numpy(a).requires_grad_(True) for a in (x, A, B)]
    W0 = torch.from_numpy(backend.to_numpy(layer.dequantize()))
    h = quantized_lora_linear(ours[0], layer, layer.bias, ours[1], ours[2], s)
    expected = theirs[0] @ W0.T + s * (theirs[0] @ theirs[1].T) @ theirs[2].T
    if layer.bias is not None:
        expected = expected + torch.from_numpy(layer.bias.numpy())
    np.testing.assert_allclose(h.numpy(), expected.detach().numpy(), rtol=1e-9, atol=1e-9)
    cotangent = np.random.default_rng(2).standard_normal(h.shape)
    h.backward(cotangent)
    expected.backward(torch.from_numpy(cotangent))
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(mine.grad), reference.grad.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_the_graph_keeps_the_4_bit_blocks_not_the_float_weight(format):
    layer = quantized_layer(format, 8, 64)
    lora = LoRALinear(layer)
    lora.add_adapter("default", 2, 4, 2.0, init=False)
    x = Tensor(np.ones((3, 64), np.float32), requires_grad=True)
    for h in (lora(x), layer(x)):
        kept = [v for v in vars(h._ctx).values() if isinstance(v, np.ndarray) or backend.is_cupy_array(v)]
        assert all(a.shape != (8, 64) for a in kept), "a float (d, k) W0 outlived the forward"
        h.sum().backward()
    assert layer.qweight.grad is None and not layer.qweight.requires_grad
    assert lora.lora_A["default"].grad.shape == (2, 64) and lora.lora_B["default"].grad.shape == (8, 2)
    assert lora.lora_A["default"].dtype == np.float32


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_merging_or_pissa_on_a_4_bit_base_is_refused_with_the_fix(format):
    lora = LoRALinear(quantized_layer(format, 8, 64))
    lora.add_adapter("default", 2, 4, 2.0, init=False)
    with pytest.raises(RuntimeError, match=rf"merge: this layer's base weight is {format} \(4-bit\).*Fix: keep the adapter unmerged"):
        lora.merge()
    with pytest.raises(RuntimeError, match=r"init_lora_weights='pissa'.*dequantize_base"):
        lora.add_adapter("pissa", 2, 4, 2.0, init="pissa")
    assert lora.merged_adapter is None and "pissa" not in lora.lora_A


# ---------------------------------------------------------------- a whole model

@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_qlora_on_a_small_llama_trains_only_a_and_b_and_equals_its_dequantized_twin(format):
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, SMALL["vocab_size"], (2, 9)), rng.integers(0, SMALL["vocab_size"], (2, 9))
    model = quantize_base(Llama(LlamaConfig(**SMALL)), format)
    assert base_memory(model)["quantized_layers"] == 2 * 7 and type(model.lm_head) is Linear  # the head stays float
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    twin = get_peft_model(dequantize_base(quantize_base(Llama(LlamaConfig(**SMALL)), format)),
                          LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    for (_, ours), (_, theirs) in zip(lora_layers(model), lora_layers(twin)):
        assert isinstance(ours.base_layer, QuantizedLinear) and type(theirs.base_layer) is Linear
        ours.lora_A["default"].data, ours.lora_B["default"].data = theirs.lora_A["default"].data.copy(), theirs.lora_B["default"].data.copy()
    logits, loss = model(idx, targets)
    twin_logits, twin_loss = twin(idx, targets)
    np.testing.assert_array_equal(logits.numpy(), twin_logits.numpy())
    loss.backward()
    twin_loss.backward()
    trained = [name for name, p in model.named_parameters() if p.grad is not None]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    twin_grads = dict(twin.named_parameters())
    for name in trained:
        np.testing.assert_array_equal(backend.to_numpy(dict(model.named_parameters())[name].grad),
                                      backend.to_numpy(twin_grads[name].grad))


def test_base_memory_counts_four_and_a_half_or_five_bits_a_weight():
    for format, bits in (("q4_1", 5.0), ("nf4", 4.5)):
        memory = base_memory(quantize_base(Llama(LlamaConfig(**SMALL)), format))
        weights = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)  # per layer: q, o; k, v (GQA); gate, up, down
        assert memory["float32_bytes"] == 4 * weights
        assert memory["quantized_bytes"] == weights * bits / 8


@pytest.mark.oracle
def test_from_gguf_refuses_an_unknown_format_and_a_layer_that_does_not_split(tmp_path):
    path = _tiny_gguf(tmp_path)  # hidden 32, intermediate 48: down_proj's 48 inputs are not whole blocks of 32
    with pytest.raises(ValueError, match=r"tiny.gguf: Llama.from_gguf\(quantized=...\): unknown 4-bit format 'q2_k'"):
        Llama.from_gguf(path, quantized="q2_k")
    with pytest.raises(ValueError, match=r"a weight of shape \(32, 48\) does not split into blocks of 32.*Fix"):
        Llama.from_gguf(path, quantized="q4_1")


@pytest.mark.oracle
@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_from_gguf_quantized_equals_quantizing_the_loaded_float_model(tmp_path, monkeypatch, format):
    """The quantized loader un-permutes q and k (llama.cpp's rope layout) before quantizing, as the float loader does."""
    import test_llama
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        monkeypatch.setitem(test_llama.CONFIG, key, SMALL[key])
    path = _tiny_gguf(tmp_path)
    idx = np.random.default_rng(0).integers(0, 50, (2, 7))
    expected = quantize_base(Llama.from_gguf(path, dtype="float32"), format)(idx)[0].numpy()
    np.testing.assert_array_equal(Llama.from_gguf(path, dtype="float32", quantized=format)(idx)[0].numpy(), expected)


def _tiny_gguf(tmp_path):
    torch = require_oracle("torch")
    from test_llama import hf_llama
    from test_llama_gguf import write_gguf
    return write_gguf(tmp_path / "tiny.gguf", hf_llama(torch, "float32", tie=False))
