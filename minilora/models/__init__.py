"""Whole models built from minilora.nn layers, and the loaders that read published checkpoints into them."""
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
