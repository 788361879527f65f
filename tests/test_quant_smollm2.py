"""The 4-bit base on SmolLM2-135M-Instruct's own Q4_1 tensors (the 98 MB file, tests/smollm2.py).

Llama.from_gguf(path, quantized="q4_1") keeps the file's blocks; every forward
dequantizes them with minilora's code, the float model with gguf's. Both must
give the same bits: per tensor, in the logits and in the LoRA gradients.
"""
import numpy as np
import pytest

from conftest import require_oracle
from minilora.lora import LoraConfig, get_peft_model, lora_layers
from minilora.models import Llama
from minilora.models.llama_gguf import open_gguf
from minilora.quant import QuantizedLinear, base_memory, q4_1
from smollm2 import gguf_path

pytestmark = [pytest.mark.oracle, pytest.mark.slow]
PROMPT = np.array([[1, 504, 3000, 42, 7, 99, 12000, 5]])  # (1, T)


@pytest.fixture(scope="module")
def path():
    return gguf_path()


def test_every_q4_1_tensor_dequantizes_to_ggufs_bits(path):
    gguf = require_oracle("gguf")
    tensors = [t for t in open_gguf(path).tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1]
    assert len(tensors) == 210
    for t in tensors:
        rows, cols = (int(n) for n in reversed(t.shape))
        codes, d, m = q4_1.from_gguf_bytes(np.asarray(t.data).reshape(rows, -1), (rows, cols), t.name)
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(rows, cols)
        assert np.array_equal(q4_1.dequantize(codes, d, m), expected), t.name


def test_the_q4_1_base_gives_the_float_models_logits_and_lora_gradients(path):
    float_model = Llama.from_gguf(path, dtype="float32")
    model = Llama.from_gguf(path, dtype="float32", quantized="q4_1")
    memory = base_memory(model)
    assert memory["quantized_layers"] == 210 and memory["float32_bytes"] == 424_673_280
    assert memory["quantized_bytes"] == 66_355_200  # 5 bits a weight: 20 bytes per 32
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)
    targets = PROMPT[:, 1:]
    results = []
    for m in (float_model, model):
        peft_model = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False), rng=np.random.default_rng(0))
        logits, loss = peft_model(PROMPT[:, :-1], targets)
        loss.backward()
        grads = [(layer.lora_A["default"].grad, layer.lora_B["default"].grad) for _, layer in lora_layers(peft_model)]
        results.append((logits.numpy(), grads))
    (float_logits, float_grads), (logits, grads) = results
    np.testing.assert_array_equal(logits, float_logits)  # the same numbers through the same ops
    for (a, b), (fa, fb) in zip(grads, float_grads):
        np.testing.assert_array_equal(a, fa)
        np.testing.assert_array_equal(b, fb)


def test_the_nf4_base_stays_close_to_the_float_model(path):
    from minilora.models import LlamaTokenizer
    text = ("The capital of France is Paris. It is known for the Eiffel Tower, which was built in 1889 for the "
            "World's Fair. Many tourists visit the city every year to see its museums.")
    ids = np.array([LlamaTokenizer.from_gguf(path).encode(text)])  # (1, 37)
    float_logits, float_loss = Llama.from_gguf(path, dtype="float32")(ids[:, :-1], ids[:, 1:])
    model = Llama.from_gguf(path, dtype="float32", quantized="nf4")
    assert base_memory(model)["quantized_bytes"] == 59_719_680  # 4.5 bits a weight: 36 bytes per 64
    logits, loss = model(ids[:, :-1], ids[:, 1:])
    # NF4 re-quantizes the file's Q4_1 weights (a second rounding: 9% relative error per weight), so the
    # model drifts a little. Measured: loss 1.854 -> 2.035 on this text, 76% of next-token argmaxes equal.
    assert loss.item() <= 1.15 * float_loss.item()
    assert (logits.numpy().argmax(-1) == float_logits.numpy().argmax(-1)).mean() >= 0.66
