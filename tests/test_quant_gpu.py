"""The 4-bit base on the GPU: the CuPy dequantization kernels (fused/dequantize.py) and QLoRA under CuPy.

The kernels must give the NumPy references' bits exactly (Q4_1's d q + m is
rounded as NumPy rounds it, no fma), and a quantized model must compute on
the GPU what it computes on the CPU.
"""
import numpy as np
import pytest

from minilora import Tensor, backend, reference_ops
from minilora.lora import LoraConfig, get_peft_model, lora_layers
from minilora.models import Llama, LlamaConfig
from minilora.quant import QuantizedLinear, nf4, q4_1, quantize_base

pytestmark = pytest.mark.gpu
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)


def random_blocks(format, rows, cols, seed):
    """Every code value, and scales of both signs and many magnitudes (float16 subnormals included for Q4_1)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    n_blocks = cols // {"q4_1": 32, "nf4": 64}[format]
    magnitudes = np.exp(rng.uniform(-18, 4, (rows, n_blocks))) * rng.choice([-1, 1], (rows, n_blocks))
    if format == "nf4":
        return codes, np.abs(magnitudes).astype(np.float32)
    return codes, magnitudes.astype(np.float16), (rng.standard_normal((rows, n_blocks)) * 3).astype(np.float16)


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
@pytest.mark.parametrize("seed", range(3))
def test_the_kernel_gives_the_numpy_references_bits(format, seed):
    import cupy
    from minilora.fused import FUSED
    module = {"q4_1": q4_1, "nf4": nf4}[format]
    blocks = random_blocks(format, 7, 384, seed)
    expected = module.dequantize(*blocks)
    on_gpu = [cupy.asarray(a) for a in blocks]
    got = FUSED[module.dequantize](*on_gpu)
    assert got.dtype == np.float32 and got.shape == (7, 384)
    np.testing.assert_array_equal(got.get().view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(module.dequantize(*on_gpu).get(), expected)  # the reference runs on CuPy arrays too


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_quantized_linear_runs_the_kernel_unless_reference_ops(format, monkeypatch):
    from minilora import autograd
    from minilora.fused import FUSED
    reference = {"q4_1": q4_1, "nf4": nf4}[format].dequantize
    calls = []

    def counting_kernel(*blocks):
        calls.append(1)
        return FUSED[reference](*blocks)
    monkeypatch.setitem(autograd._fast_variants, (reference, "cupy"), counting_kernel)
    with backend.using_backend("cupy"):
        layer = quantize_base(Llama(LlamaConfig(**SMALL)), format).model.layers[0].mlp.down_proj
    assert isinstance(layer, QuantizedLinear) and backend.is_cupy_array(layer.qweight.data)
    fast = layer.dequantize()
    assert len(calls) == 1
    with reference_ops():
        slow = layer.dequantize()
    assert len(calls) == 1
    np.testing.assert_array_equal(fast.get(), slow.get())


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
def test_qlora_step_on_the_gpu_equals_the_cpu(format, dtype, tolerance):
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, SMALL["vocab_size"], (2, 9)), rng.integers(0, SMALL["vocab_size"], (2, 9))
    results = []
    for name in ("numpy", "cupy"):
        with backend.using_default_dtype(dtype):
            model = quantize_base(Llama(LlamaConfig(**SMALL)), format)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), rng=np.random.default_rng(1))
        model.to(name)
        assert {backend.backend_of(p.data) for p in model.parameters()} == {name}  # the 4-bit blocks moved too
        logits, loss = model(idx, targets)
        loss.backward()
        grads = [backend.to_numpy(layer.lora_A["default"].grad) for _, layer in lora_layers(model)]
        results.append((backend.to_numpy(logits.data), grads))
    (cpu_logits, cpu_grads), (gpu_logits, gpu_grads) = results
    scale = np.abs(cpu_logits).max()
    assert np.abs(gpu_logits - cpu_logits).max() <= tolerance * scale
    for a, b in zip(gpu_grads, cpu_grads):
        assert np.abs(a - b).max() <= tolerance * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("format", ["q4_1", "nf4"])
def test_blocks_left_on_the_host_are_named_with_the_fix(format):
    """A 4-bit layer not moved to the GPU: one clear error, not CuPy's about a numpy.ndarray inside matmul."""
    with backend.using_backend("numpy"):
        layer = QuantizedLinear.from_weight(np.ones((4, 64), np.float32), format)
    with backend.using_backend("cupy"):
        x = Tensor(np.ones((3, 64), np.float32))
        with pytest.raises(TypeError, match=r"QuantizedLinear: inputs live on different backends \(cupy array of shape "
                                            r"\(3, 64\), numpy array of shape \(4, 32\)\).*model.to\('cupy'\)"):
            layer(x)
