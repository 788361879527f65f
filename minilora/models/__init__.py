"""Whole models built from minilora.nn layers, and the loaders that read published checkpoints into them."""
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .llama_tokenizer import LlamaTokenizer

__all__ = ["GPT", "GPTConfig", "Llama", "LlamaConfig", "LlamaTokenizer"]
