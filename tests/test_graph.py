"""CUDA graphs (minilora.fused.graph): a recorded forward and backward replays to the eager step's numbers.

The tests marked ``gpu`` need the GPU; off it, conftest skips them and says why.
"""
import numpy as np
import pytest

from minilora import amp, backend
from minilora.fused import cuda_graph
from minilora.lora import LoraConfig, get_peft_model
from minilora.models import GPT, GPTConfig
from minilora.optim import AdamW

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=64, dropout=0.0, seed=0)
BATCHES = np.random.default_rng(3).integers(0, CONFIG.vocab_size, (6, 4, CONFIG.block_size + 1))  # (steps, B, T + 1)


def lora_model():
    return get_peft_model(GPT(CONFIG), LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"))


def forward_backward(model, optimizer, precision):
    def step(idx, targets):
        optimizer.zero_grad()
        with amp.autocast(precision or "bfloat16", enabled=precision is not None):
            _, loss = model(idx, targets)
        loss.backward()
        return loss
    return step


def train(precision, graphed):
    """Six AdamW steps of a small LoRA GPT, eager or replayed from a graph: the losses and the trained weights."""
    with backend.using_backend("cupy"):
        model = lora_model()
        optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        step = forward_backward(model, optimizer, precision)
        if graphed:  # the warm-up runs train nothing: no optimizer step between them
            step = cuda_graph(step, BATCHES[0, :, :-1], BATCHES[0, :, 1:], warmup=2)
        losses = []
        for batch in BATCHES:
            loss = step(batch[:, :-1], batch[:, 1:])
            losses.append(float(backend.to_numpy(loss.data)))  # read before the next replay overwrites it
            optimizer.step()
        return np.array(losses), [p.numpy() for p in model.parameters() if p.requires_grad]


@pytest.mark.gpu
def test_a_replayed_float32_step_gives_the_eager_steps_bits():
    eager, eager_weights = train(None, graphed=False)
    replayed, replayed_weights = train(None, graphed=True)
    assert eager[-1] < eager[0]
    np.testing.assert_array_equal(replayed, eager)  # the same kernels on the same inputs, in the same order
    for ours, theirs in zip(replayed_weights, eager_weights):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.gpu
def test_a_replayed_bf16_step_trains_as_the_eager_one():
    eager, _ = train("bfloat16", graphed=False)
    replayed, _ = train("bfloat16", graphed=True)
    # flash attention's dq sums with float32 atomics, whose order varies from run to run
    np.testing.assert_allclose(replayed, eager, rtol=1e-2)


@pytest.mark.gpu
def test_a_graph_refuses_another_shape_and_a_function_that_waits():
    with backend.using_backend("cupy"):
        model = lora_model()
        optimizer = AdamW([p for p in model.parameters() if p.requires_grad])
        step = cuda_graph(forward_backward(model, optimizer, None), BATCHES[0, :, :-1], BATCHES[0, :, 1:])
        with pytest.raises(ValueError, match=r"input 0 is \(2, 32\).*recorded with \(4, 32\).*fixed shapes"):
            step(BATCHES[0, :2, :-1], BATCHES[0, :2, 1:])

        def waits(idx, targets):
            _, loss = model(idx, targets)
            return float(backend.to_numpy(loss.data))  # a host read: a recording cannot wait for the GPU
        with pytest.raises(RuntimeError, match="cuda_graph: recording 'waits' failed.*Fix: move such reads"):
            cuda_graph(waits, BATCHES[0, :, :-1], BATCHES[0, :, 1:])
        loss = step(BATCHES[1, :, :-1], BATCHES[1, :, 1:])  # the first graph still replays after the failed one
        assert np.isfinite(float(backend.to_numpy(loss.data)))


def test_cuda_graph_needs_the_cupy_backend():
    with backend.using_backend("numpy"), pytest.raises(RuntimeError, match="needs the cupy backend"):
        cuda_graph(lambda x: x, np.zeros(3))
