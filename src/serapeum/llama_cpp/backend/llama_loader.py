"""Construct ``llama_cpp.Llama`` without letting it touch the GGUF's chat templates, and
tokenize without a buffer the file sizes.

llama-cpp-python compiles every chat template a GGUF carries with its own, unbounded
Jinja environment while it loads, even when the caller never uses them: a hostile
template (``{{ 'a' * 1000000000 }}``, 5 MB of nested blocks, a syntax error) costs
gigabytes, a minute, or makes the model unloadable. The templates are ours to render,
in the bounded sandbox of ``chat_template.py``; here they are taken out of the metadata
llama-cpp-python sees and kept aside, so it never compiles or renders them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE_KEY", "chat_templates_of", "new_llama", "tokenize"]

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def _is_template_key(key: str) -> bool:
    return key == CHAT_TEMPLATE_KEY or key.startswith(CHAT_TEMPLATE_KEY + ".")


@cache
def _llama_class() -> type:
    from llama_cpp import Llama

    class TemplateFreeLlama(Llama):  # type: ignore[misc]
        """``Llama`` whose ``metadata`` never shows the chat templates (kept aside)."""

        @property  # type: ignore[override]
        def metadata(self) -> dict[str, str]:
            return self.__dict__.get("_serapeum_metadata", {})

        @metadata.setter
        def metadata(self, value: Mapping[str, str]) -> None:
            self.__dict__["_serapeum_templates"] = {
                k: v for k, v in value.items() if _is_template_key(k)
            }
            self.__dict__["_serapeum_metadata"] = {
                k: v for k, v in value.items() if not _is_template_key(k)
            }

        def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
            return tokenize(self._model.vocab, text, add_bos=add_bos, special=special)

    return TemplateFreeLlama


# Tokens a text can take beyond one per byte: the BOS/EOS/SEP the tokenizer adds and the
# SentencePiece prefix space. A larger need is asked for again, at its exact size.
_TOKEN_SLACK = 16


def tokenize(vocab: Any, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
    """``llama_tokenize`` into a buffer sized by the text.

    llama-cpp-python sizes its buffer by the model's trained context length, a field of
    the file: every call allocates and zeroes 4 bytes per token of it (``context_length``
    2**31 - 1 means 8 GiB a call, 2**32 - 1 a ``ValueError``; a 10M-token model, 40 MB).
    """
    from llama_cpp import llama_token, llama_tokenize

    size = len(text) + _TOKEN_SLACK
    for _ in range(2):
        tokens = (llama_token * size)()
        count = llama_tokenize(vocab, text, len(text), tokens, size, add_bos, special)
        if count >= 0:
            return list(tokens[:count])
        size = -count
    raise RuntimeError(f"llama_tokenize failed on a text of {len(text)} bytes")


def new_llama(
    path: Path, options: Mapping[str, Any], *, sequences: int = 1, unified: bool = False
) -> Any:
    """``llama_cpp.Llama(model_path=path, **options)`` that leaves the chat templates alone.

    ``sequences`` > 1 makes a context for that many sequences, for batched generation: each
    in a KV stream of its own (``n_ctx`` is split between them), or with ``unified`` all in
    one buffer of ``n_ctx`` cells.
    """
    if sequences == 1:
        return _llama_class()(model_path=str(path), **options)
    with _context_defaults(n_seq_max=sequences, kv_unified=unified):
        return _llama_class()(model_path=str(path), **options)


_defaults_lock = threading.Lock()


@contextmanager
def _context_defaults(**fields: Any) -> Iterator[None]:
    """Make ``llama_context_default_params`` return ``fields`` set, while ``Llama`` is built.

    ``Llama`` takes no ``n_seq_max`` nor ``kv_unified``: it starts from llama.cpp's defaults,
    which this changes for the one construction (serialised: the module is shared).
    """
    import llama_cpp.llama_cpp as native

    original = native.llama_context_default_params

    def defaults() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    with _defaults_lock:
        native.llama_context_default_params = defaults
        try:
            yield
        finally:
            native.llama_context_default_params = original


def chat_templates_of(llama: Any) -> dict[str, str]:
    """The chat templates the file carries (``tokenizer.chat_template`` and named ones)."""
    return dict(llama.__dict__.get("_serapeum_templates", {}))
