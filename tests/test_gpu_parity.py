"""NumPy and CuPy compute the same model: training, moving, saving on one backend and loading on the other.

Every test here needs the cupy backend on an NVIDIA GPU (marker ``gpu``); where
it cannot run, as on CI, conftest skips them and says why. Each test picks its
backends itself and puts the global choice back, so the file runs the same under
MINILORA_BACKEND=numpy or cupy.
"""

import dataclasses

import numpy as np
import pytest

import minilora.functional as F
from minilora import Tensor, backend, no_grad
from minilora.lora import LoraConfig, LoraModel, get_peft_model
from minilora.models import GPT, GPTConfig
from minilora.optim import AdamW

pytestmark = pytest.mark.gpu

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=64, dropout=0.1, seed=0)
BATCHES = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (20, 4, CONFIG.block_size + 1))  # 20 steps of (B, T + 1)


using = backend.using_backend


def train_losses(name):
    """20 AdamW steps of a small GPT (dropout on) on backend ``name``; the losses, read back once at the end."""
    with using(name):
        model = GPT(CONFIG)
        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        losses = []
        for batch in BATCHES:
            _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.data)  # stays on the device: no sync inside the loop
        assert backend.backend_of(model.wte.weight.data) == name
        return np.array([float(backend.to_numpy(x)) for x in losses]), model


def test_same_seed_trains_to_the_same_losses_on_numpy_and_cupy():
    cpu, cpu_model = train_losses("numpy")
    gpu, gpu_model = train_losses("cupy")
    assert cpu[-1] < cpu[0]  # it learns something, so the comparison is not between two constants
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4)  # float32: only summation order differs
    for (name, p), q in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        # The key bias gets a gradient of exactly 0 in exact arithmetic (softmax ignores q.b, the same for
        # every key), so it holds only rounding noise that AdamW normalises; compare it in absolute terms.
        atol = 1e-4 if name.endswith("attn.k.bias") else 1e-5
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-3, atol=atol, err_msg=name)


def test_to_moves_every_parameter_and_back_unchanged():
    with using("numpy"):
        model = GPT(CONFIG).eval()
        idx = BATCHES[0, :, :-1]
        expected = model(idx)[0].numpy()
    host = {name: p.numpy().copy() for name, p in model.named_parameters()}
    model.to("cupy")
    assert {backend.backend_of(p.data) for p in model.parameters()} == {"cupy"}
    assert model.lm_head.weight is model.wte.weight  # tied weights stay one Parameter
    with using("numpy"), no_grad():  # inputs follow the weights, whatever the current backend
        logits = model(idx)[0]
    assert backend.backend_of(logits.data) == "cupy"
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-5)
    model.to("numpy")
    for name, p in model.named_parameters():
        assert backend.backend_of(p.data) == "numpy", name
        np.testing.assert_array_equal(p.numpy(), host[name], err_msg=name)  # bit for bit


@pytest.mark.parametrize("saver, loader", [("cupy", "numpy"), ("numpy", "cupy")])
def test_checkpoint_saved_on_one_backend_loads_on_the_other(tmp_path, saver, loader):
    with using(saver):
        model = GPT(CONFIG)
        model.save_pretrained(tmp_path)
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8))
        for name, p in lora.named_parameters():
            if name.endswith("lora_B.default"):  # B = 0 at init would hide a lost factor
                p.data = p.data + backend.asarray(np.random.default_rng(len(name)).normal(0, 0.1, p.shape), dtype=p.dtype, like=p.data)
        lora.save_pretrained(tmp_path / "adapter")
        saved = {name: p.numpy() for name, p in lora.named_parameters()}
    with using(loader):
        loaded = LoraModel.from_pretrained(GPT.from_pretrained(tmp_path), tmp_path / "adapter")
        assert {backend.backend_of(p.data) for p in loaded.parameters()} == {loader}
        for name, p in loaded.named_parameters():
            np.testing.assert_array_equal(p.numpy(), saved[name], err_msg=name)


def test_scatter_add_accumulates_repeated_indices_in_float64_on_the_gpu():
    rng = np.random.default_rng(0)
    ids = np.array([3, 0, 3, 3, 1, 0, 3])
    values = rng.standard_normal((ids.size, 5))
    expected = np.zeros((4, 5))
    np.add.at(expected, ids, values)
    with using("cupy"):
        target = backend.asarray(np.zeros((4, 5)))
        backend.scatter_add(target, backend.asarray(ids), backend.asarray(values))
        assert backend.backend_of(target) == "cupy" and target.dtype == np.float64
        np.testing.assert_allclose(backend.to_numpy(target), expected, rtol=1e-14, atol=1e-14)
        again = backend.scatter_add(backend.asarray(np.zeros((4, 5))), backend.asarray(ids), backend.asarray(values))
        np.testing.assert_array_equal(backend.to_numpy(again), backend.to_numpy(target))  # no atomics: bit for bit
        # a tuple of index arrays takes cupyx.scatter_add (atomic adds), also in float64
        pairs = backend.scatter_add(backend.asarray(np.zeros((4, 5))), (backend.asarray(ids), backend.asarray(ids % 5)),
                                    backend.asarray(values[:, 0]))
        expected_pairs = np.zeros((4, 5))
        np.add.at(expected_pairs, (ids, ids % 5), values[:, 0])
        np.testing.assert_allclose(backend.to_numpy(pairs), expected_pairs, rtol=1e-14, atol=1e-14)
        # ... and through the Embedding backward that relies on it: repeated ids get the sum of their rows
        weight = Tensor(np.zeros((4, 5)), requires_grad=True)
        F.embedding(ids, weight).backward(values)
        np.testing.assert_allclose(backend.to_numpy(weight.grad), expected, rtol=1e-14, atol=1e-14)


def autocast_run(name, dtype):
    """10 AdamW steps of the small GPT (dropout off) on one batch under autocast on ``name``: losses, the weights' moves."""
    from minilora import amp

    with using(name):
        model = GPT(dataclasses.replace(CONFIG, dropout=0.0))
        start = [p.numpy().copy() for p in model.parameters()]
        opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        scaler = amp.GradScaler(init_scale=2.0 ** 10, enabled=dtype == "float16")
        losses = []
        for batch in [BATCHES[0]] * 10:  # learning one batch by heart: the loss must fall
            with amp.autocast(dtype):
                _, loss = model(batch[:, :-1], batch[:, 1:])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            losses.append(float(backend.to_numpy(loss.data)))
        moves = np.concatenate([(p.numpy() - p0).ravel() for p, p0 in zip(model.parameters(), start)])
        return np.array(losses), moves


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_trains_alike_on_numpy_and_cupy(dtype):
    """The GPU's fused kernels (16-bit inputs, float32 arithmetic) against NumPy's references (float32 inputs).

    Both round every matmul output to the 16-bit dtype; they differ where the GPU
    also keeps the attention probabilities and GELU's output in 16 bits. So the
    losses agree to a few ulps of bf16 (8 bits: 0.4 %), not to float32's 1e-4, and
    the weights move the same way (AdamW's sign-like steps differ where a gradient is near 0).
    """
    cpu, cpu_moves = autocast_run("numpy", dtype)
    gpu, gpu_moves = autocast_run("cupy", dtype)
    assert cpu[-1] < cpu[0]
    np.testing.assert_allclose(gpu, cpu, rtol=5e-2)  # 10 steps of lr 1e-2 amplify one ulp of bf16
    cosine = cpu_moves @ gpu_moves / (np.linalg.norm(cpu_moves) * np.linalg.norm(gpu_moves))
    assert cosine > 0.9, cosine
