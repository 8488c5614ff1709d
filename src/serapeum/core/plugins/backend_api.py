"""The seam between the engine and a backend: requests in, text chunks out.

The engine speaks token ids and requests, never a backend's own objects, so the same
``LlamaCPP`` API can later drive a batching in-process loop or a remote server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen

from serapeum.core.cancellation import CancelToken
from serapeum.core.plugins.descriptors import ModelInfo, _names, _read_only

__all__ = ["BackendChunk", "BackendResult", "GenerationRequest", "LoadedModel"]


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


@frozen
class GenerationRequest:
    """One generation: the prompt as token ids and everything that steers sampling.

    ``cancel`` is set by the caller to stop generation at the next token.
    """

    prompt_tokens: tuple[int, ...] = field(converter=_ints)
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = field(default=(), converter=_names)
    options: Mapping[str, Any] = field(factory=dict, converter=_read_only, eq=False)
    cancel: CancelToken | None = field(default=None, eq=False)


@frozen
class BackendResult:
    """A whole completion: its text and the backend's raw response."""

    text: str
    raw: Any


@frozen
class BackendChunk:
    """One streamed piece: the new text and the backend's raw chunk."""

    delta: str
    raw: Any


@runtime_checkable
class LoadedModel(Protocol):
    """A model a backend has loaded. It serialises its own use across threads."""

    @property
    def n_ctx(self) -> int:
        """Context size in tokens."""
        ...

    @property
    def name(self) -> str:
        """A readable name (usually the file it came from)."""
        ...

    @property
    def info(self) -> ModelInfo:
        """What the model says about itself (architecture, chat template, special tokens)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model will see ``text`` as a prompt (BOS exactly once)."""
        ...

    def complete(self, request: GenerationRequest) -> BackendResult:
        """Generate the whole completion."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[BackendChunk]:
        """Generate chunk by chunk; closing the iterator stops generation."""
        ...
