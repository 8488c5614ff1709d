"""The seam between the engine and a backend: requests in, text chunks out.

The engine writes the prompt, counts its tokens with ``LoadedModel.tokenize``, guards the
context and hands the backend a ``GenerationRequest``; the backend owns everything after
that (scheduling, sampling, constraints, KV reuse, routing to servers). The engine never
touches a backend's own objects, so the in-process llama.cpp backend and the server
backend (``serapeum-backend-server``) are interchangeable behind ``LlamaCPP``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen

from serapeum.core.cancellation import CancelToken
from serapeum.core.llms.types import FinishReason, Timing, Usage
from serapeum.core.plugins.model_info import ModelInfo, names, read_only

__all__ = [
    "BackendCapabilities",
    "BackendChunk",
    "BackendResult",
    "ChunkStream",
    "GenerationRequest",
    "LoadedModel",
]


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


@frozen
class GenerationRequest:
    """One generation: the prompt as token ids and everything that steers sampling.

    ``cancel`` is set by the caller to stop generation at the next token.
    ``prompt_text``, when given, is the text ``prompt_tokens`` came from: a backend that
    keeps earlier turns evaluated may use it to keep their token ids (a re-tokenised
    answer can differ from the tokens the model generated) and then evaluates only the
    text that is new; a backend that sends text over the wire sends it.
    ``session`` names the conversation the request continues: a backend with
    ``capabilities.sessions`` keeps each session's evaluated tokens apart from the
    others'; other backends may ignore it.
    """

    prompt_tokens: tuple[int, ...] = field(converter=_ints)
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = field(default=(), converter=names)
    options: Mapping[str, Any] = field(factory=dict, converter=read_only, eq=False)
    cancel: CancelToken | None = field(default=None, eq=False)
    prompt_text: str | None = field(default=None, eq=False)
    session: str | None = field(default=None, eq=False)


@frozen
class BackendCapabilities:
    """What a loaded model can do beyond plain generation; the engine asks nothing else.

    ``json_schema``/``grammar``: ``options["json_schema"]`` (a dict) or ``options["grammar"]``
    (GBNF text) constrain decoding. ``logprobs``: ``options["logprobs"]`` is honoured.
    ``concurrent``: the model serves several requests at once (a pool of servers), so the
    engine gives each async call its own thread instead of queueing them on one worker.
    ``sessions``: ``GenerationRequest.session`` keeps each named conversation's evaluated
    tokens (its KV cache) across turns and across other conversations' turns.
    """

    json_schema: bool = False
    grammar: bool = False
    logprobs: bool = False
    concurrent: bool = False
    sessions: bool = False


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


ChunkStream = Generator[BackendChunk, None, None]
"""What ``LoadedModel.stream`` returns: iterate it; ``close()`` stops generation."""


@runtime_checkable
class LoadedModel(Protocol):
    """A model a backend has loaded: everything the engine uses, and nothing more.

    Made by ``BackendSpec.load`` and shared by every ``LlamaCPP`` with the same model and
    load options (the engine caches it per process). Methods are called from any thread:
    the caller's for sync calls, a worker thread for async ones (one worker per model,
    unless ``capabilities.concurrent``). The model serialises or schedules concurrent use
    itself. Errors are ``SerapeumError`` subclasses: ``ConfigurationError`` for requests it
    cannot follow, the backend's own typed errors for failures while generating.
    """

    @property
    def n_ctx(self) -> int:
        """Context size in tokens for one request. Read once after loading, and per call."""
        ...

    @property
    def name(self) -> str:
        """A readable name for messages and ``Metadata.model_name`` (a file, or a server)."""
        ...

    @property
    def info(self) -> ModelInfo:
        """What the model says about itself (architecture, chat template, special tokens).

        Read after loading when the caller chose no prompt format, to detect one; may be
        computed lazily and must then be cached.
        """
        ...

    @property
    def capabilities(self) -> BackendCapabilities:
        """What the model can do; constant for its lifetime. Read at construction and per call."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model will see ``text`` as a prompt, BOS exactly once.

        Called for every request before generation (the engine's context guard), and by
        ``LlamaCPP.tokenize``: on the caller's thread, or for an async call on the event
        loop's thread unless ``capabilities.concurrent`` (then a worker thread, since a
        server's tokenizer is a network call). May raise ``ContextWindowExceededError`` early for a text
        that cannot fit, and the backend's typed errors (a server that cannot be reached).
        """
        ...

    def check_options(self, request: GenerationRequest) -> None:
        """Raise ``ConfigurationError`` for options this backend cannot follow.

        Called for every request after it is built and before ``complete``/``stream``, on
        the caller's thread (before any lock is taken), and once at construction with the
        instance's ``generate_kwargs``. Cheap: compiled constraints are cached.
        """
        ...

    def complete(self, request: GenerationRequest) -> BackendResult:
        """Generate the whole completion; a set ``request.cancel`` ends it early.

        A cancelled request returns what was generated with ``FinishReason.CANCELLED``.
        """
        ...

    def stream(self, request: GenerationRequest) -> ChunkStream:
        """Generate chunk by chunk; the last chunk carries usage, timing and finish reason.

        Nothing runs until the first ``next()``. ``close()`` on the generator (the engine
        calls it when the consumer stops early) stops generation and frees what it holds
        before returning.
        """
        ...

    def close(self) -> None:
        """Free the model's resources (native memory, connections) now. Idempotent.

        The engine frees a model by dropping its last reference (the model cache holds
        models weakly); ``close()`` is for a caller that needs it freed at a known moment
        (``LlamaCPP.loaded_model.close()``), after dropping every ``LlamaCPP`` that shares
        it: they and any new instance with the same model and options would get the closed
        model while it stays referenced. Later calls on a closed model may raise.
        """
        ...
