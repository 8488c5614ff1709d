"""Test helpers for the engine and for plugin authors.

They build tiny GGUF models, which needs the ``testing`` extra (gguf, numpy, pytest):
``pip install 'serapeum-llama-cpp[testing]'``.
"""

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
