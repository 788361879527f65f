"""The GPT model: whole-model gradient check, seeding, input errors, tied weights, the KV cache and generation."""
import dataclasses

import numpy as np
import pytest

import minilora
from minilora import backend
from minilora.generate import sample_next
from minilora.models import GPT, GPTConfig
from module_gradcheck import assert_module_gradcheck, default_dtype

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11, dropout=0.0, seed=0)


def tiny_gpt(**changes):
    with default_dtype(np.float64):
        return GPT(dataclasses.replace(TINY, **changes))


def sharpened(model, scale=25.0):
    """Scale the N(0, 0.02) matrices up so that logits differ clearly (near-ties would make argmax fragile)."""
    for name, p in model.named_parameters():
        if p.ndim == 2:
            p.data = p.data * scale
    return model


def tokens(shape, seed=0, vocab=TINY.vocab_size):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def test_loss_gradcheck_every_parameter():
    model = tiny_gpt()
    for name, p in model.named_parameters():  # move off the init (zero biases, unit LayerNorms) so every term shows
        p.data = p.data + backend.asarray(np.random.default_rng(len(name)).normal(0, 0.1, p.shape))
    idx, targets = tokens((2, 5), seed=1), tokens((2, 5), seed=2)
    targets[0, 1] = -100
    assert_module_gradcheck(model, lambda: model(idx, targets)[1])


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = tiny_gpt(), tiny_gpt(), tiny_gpt(seed=1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy(), err_msg=name)
        if pa.ndim == 2:
            assert not np.array_equal(pa.numpy(), pc.numpy()), name


def test_gpt2_init_statistics():
    model = GPT(dataclasses.replace(TINY, n_layer=8, n_embd=64, vocab_size=500))
    assert abs(model.wte.weight.data.std() - 0.02) < 0.002
    assert abs(model.blocks[0].attn.o.weight.data.std() - 0.02 / 4) < 0.001  # 1/sqrt(2 * 8) = 1/4
    assert abs(model.blocks[0].mlp.c_proj.weight.data.std() - 0.02 / 4) < 0.001
    assert not model.blocks[0].attn.q.bias.data.any() and (model.ln_f.weight.data == 1).all()
    assert model.wte.weight.dtype == np.float32


def test_tied_weights_share_one_parameter():
    model = tiny_gpt()
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and names.count("wte.weight") == 1
    untied = tiny_gpt(tie_weights=False)
    assert untied.lm_head.weight is not untied.wte.weight and "lm_head.weight" in dict(untied.named_parameters())
    assert model.num_parameters() + TINY.vocab_size * TINY.n_embd == untied.num_parameters()


def test_loss_is_mean_cross_entropy_over_kept_targets():
    model = tiny_gpt()
    idx, targets = tokens((2, 4), seed=3), tokens((2, 4), seed=4)
    targets[1, 2:] = -100
    logits, loss = model(idx, targets)
    logp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    keep = targets != -100
    expected = -logp[keep, targets[keep]].mean()
    assert logits.shape == (2, 4, TINY.vocab_size)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    assert model(idx)[1] is None


def test_sequence_longer_than_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"9 tokens .* longer than block_size=8"):
        tiny_gpt()(tokens((1, 9)))


def test_token_outside_vocabulary_raises_index_error():
    idx = tokens((1, 4))
    idx[0, 2] = TINY.vocab_size
    with pytest.raises(IndexError, match=r"ids \[11\] are outside \[0, 11\)"):
        tiny_gpt()(idx)


def test_idx_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"idx must be \(B, T\)"):
        tiny_gpt()(np.arange(4))


def test_right_padding_leaves_real_positions_unchanged():
    model = sharpened(tiny_gpt())
    short = tokens((1, 3), seed=5)
    padded = np.concatenate([short, [[0, 0]]], axis=1)  # (1, 5)
    mask = np.array([[1, 1, 1, 0, 0]])
    np.testing.assert_allclose(model(padded, attention_mask=mask)[0].numpy()[:, :3], model(short)[0].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(padded, attention_mask=mask[:, :4])


def test_kv_cache_forward_equals_full_forward():
    model = sharpened(tiny_gpt())
    idx = tokens((2, 7), seed=6)
    cache = model.new_kv_cache()
    chunks = [model(idx[:, a:b], kv_cache=cache)[0].numpy() for a, b in ((0, 4), (4, 5), (5, 7))]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), model(idx)[0].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"7 cached \+ 2 new"):
        model(idx[:, :2], kv_cache=cache)


def test_greedy_generation_with_cache_equals_recomputing():
    model = sharpened(tiny_gpt())
    prompt = tokens((2, 3), seed=7)
    with_cache = model.generate(prompt, 9, greedy=True)  # runs past block_size=8, so the window slides
    assert with_cache.shape == (2, 12)
    np.testing.assert_array_equal(with_cache[:, :3], prompt)
    np.testing.assert_array_equal(with_cache, model.generate(prompt, 9, greedy=True, use_cache=False))
    assert len(set(with_cache[:, 3:].ravel().tolist())) > 1  # not a degenerate constant


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = sharpened(tiny_gpt(), scale=5.0)
    prompt = tokens((3, 2), seed=8)
    a = model.generate(prompt, 6, temperature=1.5, rng=123)
    np.testing.assert_array_equal(a, model.generate(prompt, 6, temperature=1.5, rng=np.random.default_rng(123)))
    np.testing.assert_array_equal(a, model.generate(prompt, 6, temperature=1.5, rng=123, use_cache=False))
    assert not np.array_equal(a, model.generate(prompt, 6, temperature=1.5, rng=124))
    np.testing.assert_array_equal(model.generate(prompt, 6, top_k=1, rng=0), model.generate(prompt, 6, greedy=True))


def test_top_k_only_samples_the_k_most_likely():
    logits = np.array([[0.0, 3.0, 1.0, 2.0]])
    picks = {int(sample_next(logits, top_k=2, rng=np.random.default_rng(i))[0]) for i in range(200)}
    assert picks == {1, 3}


def test_generate_runs_without_grad_in_eval_mode_and_restores_the_mode():
    model = tiny_gpt(dropout=0.3)
    model.train()
    seen = []
    forward = model.forward
    model.forward = lambda *a, **k: seen.append((minilora.is_grad_enabled(), model.drop.training)) or forward(*a, **k)
    model.generate(tokens((1, 2)), 3, greedy=True)
    assert seen == [(False, False)] * 3
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), r"temperature must be > 0, got -1.0"),
    (dict(temperature=float("nan")), r"temperature must be > 0, got nan"),
    (dict(top_k=0), r"top_k must be an integer in \[1, vocab_size=11\], got 0"),
    (dict(top_k=-2), r"top_k must be an integer in \[1, vocab_size=11\], got -2"),
    (dict(top_k=2.5), r"top_k must be an integer in \[1, vocab_size=11\], got 2.5"),
    (dict(max_new_tokens=-3), r"generate: max_new_tokens must be an integer >= 0, got -3"),
    (dict(max_new_tokens=2.5), r"generate: max_new_tokens must be an integer >= 0, got 2.5"),
])
def test_generate_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt().generate(tokens((1, 2)), **{"max_new_tokens": 2, **kwargs})
    assert tiny_gpt().generate(tokens((1, 2)), max_new_tokens=np.int64(0)).shape == (1, 2)


def test_generate_rejects_a_flat_prompt():
    with pytest.raises(ValueError, match=r"idx must be \(B, T\) integer token ids"):
        tiny_gpt().generate(np.arange(3), 2)
