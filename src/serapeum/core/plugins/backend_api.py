"""The seam between the engine and a backend: requests in, text chunks out.

The engine speaks token ids and requests, never a backend's own objects, so the same
``LlamaCPP`` API can later drive a batching in-process loop or a remote server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen

from serapeum.core.cancellation import CancelToken
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins.descriptors import ModelInfo, _names, _read_only

__all__ = ["BackendChunk", "BackendResult", "GenerationRequest", "LoadedModel"]


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


@frozen
class GenerationRequest:
    """One generation: the prompt as token ids and everything that steers sampling.

    ``cancel`` is set by the caller to stop generation at the next token.
    ``prompt_text``, when given, is the text ``prompt_tokens`` came from: a backend that
    keeps earlier turns evaluated may use it to keep their token ids (a re-tokenised
    answer can differ from the tokens the model generated) and then evaluates only the
    text that is new.
    """

    prompt_tokens: tuple[int, ...] = field(converter=_ints)
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = field(default=(), converter=_names)
    options: Mapping[str, Any] = field(factory=dict, converter=_read_only, eq=False)
    cancel: CancelToken | None = field(default=None, eq=False)
    prompt_text: str | None = field(default=None, eq=False)


@frozen
class BackendResult:
    """A whole completion: its text, the backend's raw response and its figures."""

    text: str
    raw: Any
    usage: Usage | None = None
    timing: Timing | None = None
    finish_reason: FinishReason | None = None


@frozen
class BackendChunk:
    """One streamed piece: the new text and the backend's raw chunk.

    The last chunk of a stream carries ``usage``, ``timing`` and ``finish_reason``.
    """

    delta: str
    raw: Any
    usage: Usage | None = None
    timing: Timing | None = None
    finish_reason: FinishReason | None = None


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
