"""Mixed precision: autocast's cast policy, GradScaler, a half-precision frozen base, and training in bf16/fp16.

The oracle is torch.autocast on the CPU (bfloat16 and float16) for the policy, and
fp32 training for the numerics.
"""
import numpy as np
import pytest
from conftest import require_oracle
from hypothesis import given

import minilora
import minilora.functional as F
from minilora import Tensor, amp, backend, data, testing, to_numpy
from minilora.lora import LoraConfig, get_peft_model
from minilora.models import GPT, GPTConfig
from minilora.optim import SGD, AdamW, clip_grad_norm


LOW = ["float16", "bfloat16"]


def host(t):
    """A tensor's (or a gradient's) values as a NumPy array, on either backend."""
    return to_numpy(t.data if isinstance(t, Tensor) else t)


def tensor(shape, seed, requires_grad=True):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), requires_grad=requires_grad)


@pytest.mark.parametrize("dtype", LOW)
def test_matmuls_run_low_and_reductions_run_in_float32(dtype):
    x, w, g, b = tensor((4, 6, 8), 0), tensor((5, 8), 1), tensor((5,), 2), tensor((5,), 3)
    with amp.autocast(dtype):
        y = F.linear(x, w)
        z = F.layer_norm(y, g, b)
        h = F.gelu(y)
        square = y * y
        loss = F.cross_entropy(z.reshape(-1, 5), np.arange(24) % 5)
    assert y.dtype.name == dtype and square.dtype.name == dtype  # arithmetic keeps its inputs' dtype
    assert z.dtype == np.float32 and h.dtype == np.float32 and loss.dtype == np.float32
    assert np.isfinite(host(h)).all()
    loss.backward()
    assert {t.grad.dtype for t in (x, w, g, b)} == {np.dtype(np.float32)}  # the master weights get fp32 gradients


def test_outside_autocast_and_when_disabled_nothing_is_cast():
    x, w = tensor((3, 4), 0), tensor((2, 4), 1)
    with amp.autocast("float16", enabled=False):
        assert F.linear(x, w).dtype == np.float32
    with amp.autocast("float16"):
        with amp.autocast("float16", enabled=False):
            assert F.linear(x, w).dtype == np.float32
        assert F.linear(x, w).dtype == np.float16
    assert F.linear(x, w).dtype == np.float32


def test_autocast_names_the_dtypes_it_takes():
    with pytest.raises(ValueError, match="'float64' is not a low precision.*bfloat16"):
        with amp.autocast("float64"):
            pass


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", LOW)
def test_linear_softmax_chain_matches_torch_autocast_on_the_cpu(dtype, torch):
    """Values and float32 gradients of a linear -> gelu -> linear -> log_softmax -> nll chain, against torch.autocast."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(16, 32), (24, 32), (24,), (10, 24)]]
    targets = rng.integers(0, 10, 16)

    ours = [Tensor(a, requires_grad=True) for a in arrays]
    with amp.autocast(dtype):
        h = F.gelu(F.linear(ours[0], ours[1], ours[2]))
        logits = F.linear(h, ours[3])
        loss = F.cross_entropy(logits, targets)
    loss.backward()

    theirs = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in arrays]
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        h_t = torch.nn.functional.gelu(torch.nn.functional.linear(theirs[0], theirs[1], theirs[2]))
        logits_t = torch.nn.functional.linear(h_t, theirs[3])
        loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(targets))
    loss_t.backward()

    assert str(logits_t.dtype) == f"torch.{dtype}" and logits.dtype.name == dtype
    tolerance = 2e-2 if dtype == "bfloat16" else 2e-3  # a few ulps of bf16 (2^-8) and fp16 (2^-11)
    np.testing.assert_allclose(host(logits).astype(np.float32), logits_t.float().detach().numpy(), rtol=tolerance,
                               atol=tolerance * np.abs(logits_t.float().detach().numpy()).max())
    assert abs(float(loss.data) - loss_t.item()) < tolerance * abs(loss_t.item())
    for ours_t, theirs_t in zip(ours, theirs):
        expected = theirs_t.grad.numpy()
        np.testing.assert_allclose(host(ours_t.grad), expected, atol=2 * tolerance * np.abs(expected).max())


def test_cast_passes_the_gradient_through_in_the_inputs_dtype():
    x = tensor((3, 4), 0)
    y = amp.Cast.apply(x, np.float16)
    (y * y).sum().backward()
    assert y.dtype == np.float16 and x.grad.dtype == np.float32
    np.testing.assert_allclose(host(x.grad), 2 * host(x).astype(np.float16).astype(np.float32), rtol=1e-3)


def one_parameter_step(scaler, grad_value):
    p = minilora.nn.Parameter(np.ones(3, dtype=np.float32))
    optimizer = SGD([p], lr=0.1)
    loss = scaler.scale((p * Tensor(np.full(3, grad_value, dtype=np.float32))).sum())
    loss.backward()
    stepped = scaler.step(optimizer)
    scaler.update()
    return p, stepped


def test_grad_scaler_skips_a_step_with_an_inf_gradient_and_halves_the_scale():
    scaler = amp.GradScaler(init_scale=1024.0)
    p, stepped = one_parameter_step(scaler, np.inf)
    assert not stepped and np.all(host(p) == 1.0) and scaler.get_scale() == 512.0
    p, stepped = one_parameter_step(scaler, np.nan)
    assert not stepped and np.all(host(p) == 1.0) and scaler.get_scale() == 256.0


def test_grad_scaler_unscales_before_the_step_and_grows_after_a_run_of_good_steps():
    scaler = amp.GradScaler(init_scale=8.0, growth_interval=3)
    for step in range(3):
        assert scaler.get_scale() == 8.0
        p, stepped = one_parameter_step(scaler, 2.0)
        assert stepped
        np.testing.assert_allclose(host(p.grad), 2.0)  # the gradient the optimizer saw is the true one, not 8 times it
        np.testing.assert_allclose(host(p), 1.0 - 0.1 * 2.0)
    assert scaler.get_scale() == 16.0


def test_unscale_before_clipping_happens_once():
    scaler = amp.GradScaler(init_scale=4.0)
    p = minilora.nn.Parameter(np.array([3.0, 4.0], dtype=np.float32))
    optimizer = SGD([p], lr=1.0)
    scaler.scale((p * p).sum() / 2).backward()  # true gradient p = (3, 4), norm 5
    scaler.unscale_(optimizer)
    assert float(clip_grad_norm([p], 1.0)) == pytest.approx(5.0)  # a 0-d array of p's backend
    scaler.step(optimizer)  # must not divide by the scale a second time
    np.testing.assert_allclose(host(p), [3.0 - 0.6, 4.0 - 0.8], rtol=1e-6)


def test_grad_scaler_refuses_bad_settings_and_update_before_step():
    with pytest.raises(ValueError, match="backoff_factor=2.*0 < backoff_factor < 1"):
        amp.GradScaler(backoff_factor=2)
    with pytest.raises(RuntimeError, match="before step"):
        amp.GradScaler().update()


def test_loss_scaling_keeps_fp16_gradients_that_would_flush_to_zero():
    """Each output's gradient is 1e-8, below half of fp16's smallest subnormal (6e-8): it rounds to zero."""
    w = tensor((1000, 8), 0)
    x = Tensor(np.ones((1, 8), dtype=np.float32))
    grads = []
    for scaler in (amp.GradScaler(enabled=False), amp.GradScaler(init_scale=2.0 ** 16)):
        w.grad = None
        with amp.autocast("float16"):
            loss = F.linear(x, w).sum() * 1e-8
        scaler.scale(loss).backward()
        scaler.unscale_(SGD([w], lr=0.0))
        grads.append(host(w.grad))
    assert np.all(grads[0] == 0.0)  # underflow: the step would not move
    np.testing.assert_allclose(grads[1], 1e-8, rtol=1e-3)


def tiny_gpt():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=len(data.PRINTABLE), dropout=0.0,
                       seed=0)
    return GPT(config)


def train(precision, steps=200):
    """Train the tiny GPT on the demo's data-to-text task; returns the validation loss (evaluated in float32)."""
    tok = data.CharTokenizer.printable()
    splits = data.e2e_task(seed=0)
    idx, targets = data.encode_examples(splits.train, tok, block_size=64)
    val_idx, val_targets = data.encode_examples(splits.validation[:64], tok, block_size=64)
    model = tiny_gpt()
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scaler = amp.GradScaler(init_scale=2.0 ** 12, enabled=precision == "float16")
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x, y = data.random_rows(idx, targets, 16, rng)
        with amp.autocast(precision or "float16", enabled=precision is not None):
            _, loss = model(x, y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        clip_grad_norm(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    with minilora.no_grad():
        return float(model(val_idx, val_targets)[1].data)


@pytest.mark.slow
def test_200_training_steps_in_bf16_and_fp16_reach_the_fp32_loss():
    fp32 = train(None)
    assert fp32 < 1.6  # it learned: the loss starts at ln(96) = 4.6
    for precision in LOW:
        # A stated tolerance: within 5 % of the fp32 run's validation loss, from the same batches and init.
        assert abs(train(precision) - fp32) < 0.05 * fp32, precision


def test_a_lora_model_on_a_bf16_base_trains_its_float32_factors():
    model = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian"))
    before = sum(p.data.nbytes for _, p in model.named_parameters())
    saved = amp.cast_frozen(model, "bfloat16")
    linear_layers = {"base_layer", "k", "o", "c_fc", "c_proj"}  # the blocks' Linear modules (q and v wrapped by LoRA)
    linear_weights = [p for n, p in model.named_parameters() if n.split(".")[-2] in linear_layers]
    assert saved == sum(p.data.nbytes for p in linear_weights) > 0  # half of what they took in float32
    assert before - saved == sum(p.data.nbytes for _, p in model.named_parameters())
    assert all(p.dtype.name == "bfloat16" for p in linear_weights)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == np.float32 for p in trainable)
    # the embeddings (wte is also the tied lm_head) and the norms keep float32 for the residual stream
    others = [p for p in model.parameters() if not p.requires_grad and all(p is not q for q in linear_weights)]
    assert others and all(p.dtype == np.float32 for p in others)

    tok = data.CharTokenizer.printable()
    idx, targets = data.encode_examples(data.e2e_task(seed=0).train[:32], tok, block_size=64)
    optimizer = AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(10):
        with amp.autocast("bfloat16"):
            _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.data))
    assert losses[-1] < losses[0]
    assert all(p.grad.dtype == np.float32 for p in trainable)
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=4))  # added after the cast: float32 beside the bf16 W0
    layer = model.get_submodule("model.blocks.0.attn.q")
    assert layer.lora_A["second"].dtype == layer.lora_B["second"].dtype == np.float32


def test_is_floating_counts_bfloat16():
    import ml_dtypes

    assert backend.is_floating(np.dtype(ml_dtypes.bfloat16)) and backend.is_floating(np.dtype(np.float16))
    assert not backend.is_floating(np.dtype(np.int32))


@given(testing.arrays(testing.shapes()))
def test_cast_gradcheck_in_float64(x):
    """The cast's backward in a float64 chain (a float64 -> float64 cast, so the numerics are exact)."""
    testing.assert_gradcheck(lambda t: amp.Cast.apply(t, np.float64).tanh() * t, x)


@pytest.mark.oracle
@given(testing.arrays(testing.shapes()))
def test_cast_down_matches_torch(x):
    """float64 -> float32 -> a loss: values and the float64 gradient, against torch's .to()."""
    torch = require_oracle("torch")
    ours = testing.as_tensor(x)
    y = amp.Cast.apply(ours, np.float32)
    (y * y).sum().backward()
    theirs = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (theirs.to(torch.float32) ** 2).sum().backward()
    assert y.dtype == np.float32 and ours.grad.dtype == np.float64
    np.testing.assert_allclose(host(ours.grad), theirs.grad.numpy(), rtol=1e-6, atol=1e-6)


def linear_inputs(out):
    """The tensors a linear op read: past the cast of its output (NumPy's bf16 matmul returns float32)."""
    node = out._parents[0] if out._fn is amp.Cast else out
    return node._parents


def test_a_tensor_is_cast_once_per_autocast_block_and_a_parameter_at_each_use():
    x, g, b = tensor((4, 8), 0), tensor((8,), 1), tensor((8,), 2)
    w_q, w_k = tensor((8, 8), 3), tensor((8, 8), 4)
    with amp.autocast("bfloat16"):
        h = F.layer_norm(x, g, b)  # float32, then feeding two matmuls
        q, k = F.linear(h, w_q), F.linear(h, w_k)
        q2 = F.linear(h, w_q)
    assert linear_inputs(q)[0] is linear_inputs(k)[0] is linear_inputs(q2)[0]  # one bf16 copy of h, one graph node
    assert linear_inputs(q)[1] is not linear_inputs(q2)[1]  # the weight's is redone: a step may change w in place
    with amp.autocast("bfloat16"):
        assert linear_inputs(F.linear(h, w_q))[0] is not linear_inputs(q)[0]  # a new block, new casts
    (q + k + q2).sum().backward()
    with_casts = host(x.grad)
    x.grad = None
    h = F.layer_norm(x, g, b)
    (F.linear(h, w_q) + F.linear(h, w_k) + F.linear(h, w_q)).sum().backward()
    # the shared cast node passes on the sum of its three consumers' gradients (to bf16's rounding)
    np.testing.assert_allclose(with_casts, host(x.grad), atol=0.05 * np.abs(host(x.grad)).max())


def test_a_gradient_arrives_in_the_dtype_of_the_tensor_it_belongs_to():
    """float32 + bf16 is float32, so Add's backward hands both parents float32; the engine rounds the bf16 one's."""
    seen = []

    class Spy(minilora.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, grad):
            seen.append(grad.dtype)
            return grad

    import ml_dtypes
    w = tensor((3,), 0)
    low = Spy.apply(amp.Cast.apply(w, np.dtype(ml_dtypes.bfloat16)))  # a bf16 node with a float32 leaf behind it
    (low + tensor((3,), 1, requires_grad=False)).sum().backward()
    assert seen == [np.dtype(ml_dtypes.bfloat16)] and w.grad.dtype == np.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOW)
def test_on_the_gpu_fused_kernels_read_16_bit_tensors_without_a_float32_copy(dtype):
    from minilora.fused import FusedCrossEntropy, FusedGeluTanh, FusedScaledDotProductAttention

    with backend.using_backend("cupy"):
        x, w = tensor((2, 4, 16), 0), tensor((16, 16), 1)
        with amp.autocast(dtype):
            y = F.linear(x, w)  # 16-bit
            h = F.gelu(y, approximate="tanh")
            q = h.reshape(2, 1, 4, 16)
            a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
            loss = F.cross_entropy(a.reshape(8, 16), np.arange(8) % 16)
        assert (h._fn, a._fn, loss._fn) == (FusedGeluTanh, FusedScaledDotProductAttention, FusedCrossEntropy)
        assert h._parents[0] is y and h.dtype.name == dtype and a.dtype.name == dtype  # no Cast node between
        assert loss.dtype == np.float32
        with amp.autocast(dtype), minilora.reference_ops():
            reference = F.cross_entropy(
                F.scaled_dot_product_attention(q, q, q, is_causal=True).reshape(8, 16), np.arange(8) % 16)
        assert float(loss.data) == pytest.approx(float(reference.data), rel=1e-2)  # the references run in float32
        loss.backward()
        assert x.grad.dtype == w.grad.dtype == np.float32 and np.isfinite(host(w.grad)).all()
