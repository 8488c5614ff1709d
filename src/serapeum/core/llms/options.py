"""The per-call generation options, typed, so an IDE and mypy know every name.

``complete``, ``chat``, ``acomplete`` and ``achat`` take them as keyword arguments
(``**kwargs: Unpack[GenerationOptions]``): a misspelled name is a type error in the editor.
At run time the backend still checks names and values (an unknown name is a
``ConfigurationError`` that lists the accepted ones), so untyped callers keep that check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from serapeum.core.cancellation import CancelToken

__all__ = ["GenerationOptions"]


class GenerationOptions(TypedDict, total=False):
    """Keyword options of one generation call; each overrides the LLM's setting for that call.

    Sampling follows llama-cpp-python's ``create_completion`` (same names and defaults).
    """

    temperature: float
    """0.0 (greedy) to 1.0."""
    max_new_tokens: int
    """The most tokens to generate (the seed's name; ``max_tokens`` is the same)."""
    max_tokens: int
    """The most tokens to generate (llama-cpp-python's name for ``max_new_tokens``)."""
    stop: str | Sequence[str] | None
    """Stop sequences, added to the prompt format's own end-of-turn markers."""
    top_k: int
    """Sample from the k most likely tokens (default 40; 0 = all)."""
    top_p: float
    """Nucleus sampling: the smallest set of tokens whose probability reaches p (0.95)."""
    min_p: float
    """Drop tokens less likely than min_p times the most likely one (0.05)."""
    typical_p: float
    """Locally typical sampling (1.0 = off)."""
    repeat_penalty: float
    """Penalise recently seen tokens (1.0 = off)."""
    frequency_penalty: float
    """Penalise tokens by how often they appeared (0.0 = off)."""
    presence_penalty: float
    """Penalise tokens that appeared at all (0.0 = off)."""
    mirostat_mode: int
    """0 (off), 1 or 2."""
    mirostat_tau: float
    """Mirostat's target entropy (5.0)."""
    mirostat_eta: float
    """Mirostat's learning rate (0.1)."""
    seed: int | None
    """Sampling seed (0 to 2**32 - 1) for reproducible sampling at temperature > 0."""
    logit_bias: Mapping[int, float] | None
    """Token id -> bias added to its logit."""
    grammar: Any
    """A GBNF grammar (str or ``llama_cpp.LlamaGrammar``) the answer must follow."""
    json_schema: Mapping[str, Any] | None
    """A JSON Schema the answer must match (constrained decoding)."""
    response_format: Mapping[str, Any] | None
    """OpenAI's ``{"type": "json_object", "schema": {...}}`` form of ``json_schema``."""
    logprobs: int | None
    """How many alternatives per token to report with their log-probabilities."""
    logits_processor: Callable[..., Any] | Sequence[Callable[..., Any]] | None
    """llama-cpp-python's logits processor(s), called on every token's logits."""
    stopping_criteria: Callable[..., Any] | Sequence[Callable[..., Any]] | None
    """llama-cpp-python's stopping criteria, asked after every token."""
    tfs_z: float | None
    """Accepted for ``create_completion`` compatibility; changes nothing."""
    penalize_nl: bool | None
    """Accepted for ``create_completion`` compatibility; changes nothing."""
    cancel: CancelToken | None
    """Set it from another thread to stop generation (the answer so far is returned)."""
    session: str | None
    """Name of the conversation whose evaluated prompt a model with sessions keeps."""
