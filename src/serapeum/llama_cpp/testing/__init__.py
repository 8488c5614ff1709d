"""Test helpers for the engine and for plugin authors (need the ``test`` extra: gguf, numpy)."""

from serapeum.llama_cpp.testing.tiny_model import SPECIAL_TOKENS, TinyModelSpec, build_tiny_gguf

__all__ = ["SPECIAL_TOKENS", "TinyModelSpec", "build_tiny_gguf"]
