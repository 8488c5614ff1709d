"""Construct ``llama_cpp.Llama`` without letting it touch the GGUF's chat templates.

llama-cpp-python compiles every chat template a GGUF carries with its own, unbounded
Jinja environment while it loads, even when the caller never uses them: a hostile
template (``{{ 'a' * 1000000000 }}``, 5 MB of nested blocks, a syntax error) costs
gigabytes, a minute, or makes the model unloadable. The templates are ours to render,
in the bounded sandbox of ``chat_template.py``; here they are taken out of the metadata
llama-cpp-python sees and kept aside, so it never compiles or renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE_KEY", "chat_templates_of", "new_llama"]

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

    return TemplateFreeLlama


def new_llama(path: Path, options: Mapping[str, Any]) -> Any:
    """``llama_cpp.Llama(model_path=path, **options)`` that leaves the chat templates alone."""
    return _llama_class()(model_path=str(path), **options)


def chat_templates_of(llama: Any) -> dict[str, str]:
    """The chat templates the file carries (``tokenizer.chat_template`` and named ones)."""
    return dict(llama.__dict__.get("_serapeum_templates", {}))
