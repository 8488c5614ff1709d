"""What a loaded model says about itself: the value formatter plugins recognise models by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from attrs import field, frozen

__all__ = ["ModelInfo", "names", "read_only"]


def names(values: Sequence[str] | str) -> tuple[str, ...]:
    """One name or several, as a tuple (an attrs converter)."""
    return (values,) if isinstance(values, str) else tuple(values)


def read_only(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy of a mapping (an attrs converter for frozen values)."""
    return MappingProxyType(dict(value or {}))


@frozen
class ModelInfo:
    """What a loaded model says about itself (from its GGUF metadata and vocabulary).

    Formatter plugins look at it to recognise the models they are for. The architecture
    alone rarely identifies a prompt format (Mistral, Zephyr, TinyLlama... all say "llama").
    """

    architecture: str = ""
    name: str = ""
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    eot_token: str = ""  # end-of-turn marker, when the vocabulary names one
    special_tokens: tuple[str, ...] = field(default=(), converter=names)
    metadata: Mapping[str, Any] = field(factory=dict, converter=read_only, eq=False)
