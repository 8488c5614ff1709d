"""Test helpers for the engine and for plugin authors (need the ``test`` extra: gguf, numpy)."""

from serapeum.llama_cpp.testing.tiny_model import (
    SPECIAL_TOKENS,
    TinyModelSpec,
    Vocabulary,
    build_tiny_gguf,
    sentencepiece_vocabulary,
)

__all__ = [
    "SPECIAL_TOKENS",
    "TinyModelSpec",
    "Vocabulary",
    "build_tiny_gguf",
    "sentencepiece_vocabulary",
]
