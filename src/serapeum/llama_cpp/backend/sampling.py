"""Sampler settings for the built-in backend, built as one native llama.cpp sampler chain.

The chain is create_completion's (logit bias included), and its defaults are
``create_completion``'s, so the same settings and seed pick the same tokens as the raw
call. Over a large vocabulary the loop runs ``fast_sampler.FastSampler`` instead where it
applies: the same truncation samplers (``add_truncation``), given only the top-k logits.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.shown import shown
from serapeum.llama_cpp.backend.structured import (
    JsonConstraints,
    grammar_from_gbnf,
    schema_from_options,
)

__all__ = [
    "SUPPORTED_OPTIONS",
    "SamplerSettings",
    "add_truncation",
    "build_sampler",
    "check_against_vocabulary",
    "sampler_settings",
]

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1

# Options a request may carry besides temperature, max_tokens and stop.
_NUMERIC_DEFAULTS: dict[str, float] = {
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat_mode": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}
_OTHER_OPTIONS = (
    "seed",
    "logit_bias",
    "grammar",
    "logprobs",
    "logits_processor",
    "stopping_criteria",
    "json_schema",
    "response_format",
    # Accepted for create_completion compatibility; they change nothing here.
    "tfs_z",
    "penalize_nl",
)
SUPPORTED_OPTIONS = (*_NUMERIC_DEFAULTS, *_OTHER_OPTIONS)


def _refuse(name: str, accepted: str, value: Any) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {accepted}; got {shown(value)}")


def _real(value: Any) -> float | None:
    """``value`` as a finite float if it is a real number (numpy's too; not a bool), else None.

    An int too large for a float (``10**400``) is not finite, so it is None, never an
    ``OverflowError``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def _finite(value: Any) -> bool:
    return _real(value) is not None


def _to_float(value: Any) -> Any:
    """A real number as a float (numpy scalars included); anything else unchanged, for the
    validator to refuse."""
    number = _real(value)
    return value if number is None else number


def _integral(value: Any) -> Any:
    """An integer of any integral type (numpy's too, not a bool) as an int; else unchanged."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return operator.index(value)
    return value


_Validator = Callable[[Any, Any, Any], None]


def _number(
    accepted: str, low: float = -math.inf, high: float = math.inf, *, above: bool = False
) -> _Validator:
    """A validator: a finite number in [low, high] (``above``: strictly more than ``low``)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        number = _real(value)
        if number is None or not low <= number <= high or (above and number == low):
            raise _refuse(attribute.name, accepted, value)

    return check


def _integer(accepted: str, low: int, high: int, *, none: bool = False) -> _Validator:
    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _refuse(attribute.name, accepted, value)

    return check


def _whole(value: Any) -> Any:
    """40.0 -> 40 (the seed accepted floats for integer options); numpy integers -> int;
    anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _integral(value)


_LOGIT_BIAS_ACCEPTED = (
    "a dict of token id (an integer >= 0, or its decimal string as in OpenAI's JSON) "
    "-> finite bias, e.g. {42: -100.0}"
)


def _bias_pairs(value: Any) -> Any:
    """The (token, bias) pairs of a logit_bias mapping, or of one already converted."""
    if isinstance(value, tuple) and all(
        isinstance(item, tuple) and len(item) == 2 for item in value
    ):
        return value  # already converted (attrs.evolve)
    if not isinstance(value, Mapping):
        raise _refuse("logit_bias", _LOGIT_BIAS_ACCEPTED, value)
    return value.items()


def _token_id(token: Any) -> Any:
    if isinstance(token, str) and token.isascii() and token.isdigit():
        # a token id spelled as in OpenAI's JSON; more digits than any vocabulary needs are
        # not converted (int() refuses over 4,300 digits with a ValueError of its own)
        return int(token) if len(token) <= 10 else INT32_MAX + 1
    return _integral(token)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    biases: list[tuple[int, float]] = []
    for key, bias in _bias_pairs(value):
        token = _token_id(key)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= INT32_MAX:
            raise ConfigurationError(
                f"logit_bias keys must be token ids (integers from 0 to the vocabulary size "
                f"- 1); got {shown(key)}"
            )
        number = _real(bias)
        if number is None:
            raise ConfigurationError(
                f"logit_bias values must be finite numbers (use -100 to ban a token); "
                f"token {token} has {shown(bias)}"
            )
        biases.append((token, number))
    return tuple(biases)


@lru_cache(maxsize=64)
def _gbnf(text: str) -> str:
    return grammar_from_gbnf(text)


def _grammar(value: Any) -> str | None:
    """A GBNF grammar (a str or a ``llama_cpp.LlamaGrammar``) as an llguidance grammar.

    Grammars run through llguidance like JSON schemas do, never through llama.cpp's grammar
    sampler, which aborts the process when a grammar reaches a dead end mid-generation.
    """
    if value is None:
        return None
    if isinstance(value, _Compiled):
        return value
    from llama_cpp import LlamaGrammar

    text = value._grammar if isinstance(value, LlamaGrammar) else value  # its GBNF text
    if not isinstance(text, str):
        raise ConfigurationError(
            'grammar must be a GBNF grammar: a str such as \'root ::= "yes" | "no"\' or a '
            f"llama_cpp.LlamaGrammar; got {shown(value)}"
        )
    return _Compiled(_gbnf(text))


class _Compiled(str):
    """A grammar already converted for llguidance (so converting again is a no-op)."""

    __slots__ = ()


@frozen
class _ProcessorChain:
    """A plain list of logits processors, applied in order (as ``LogitsProcessorList`` does)."""

    processors: tuple[Callable[..., Any], ...]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for processor in self.processors:
            scores = processor(input_ids, scores)
        return scores


@frozen
class _AnyCriterion:
    """A plain list of stopping criteria: stop when any says so (as ``StoppingCriteriaList``)."""

    criteria: tuple[Callable[..., Any], ...]

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        return any(criterion(input_ids, logits) for criterion in self.criteria)


def _callables(name: str, value: Any) -> tuple[Callable[..., Any], ...] | Any:
    """``value`` if callable (or None), the tuple of a non-empty list of callables, else refused."""
    if value is None or callable(value):
        return value
    if isinstance(value, list | tuple) and value and all(callable(item) for item in value):
        return tuple(value)
    raise ConfigurationError(
        f"{name} must be a callable(input_ids, logits) or a non-empty list of them; "
        f"got {shown(value)}"
    )


def _logits_processor(value: Any) -> Callable[..., Any] | None:
    checked = _callables("logits_processor", value)
    return _ProcessorChain(checked) if isinstance(checked, tuple) else checked


def _stopping_criteria(value: Any) -> Callable[..., Any] | None:
    checked = _callables("stopping_criteria", value)
    return _AnyCriterion(checked) if isinstance(checked, tuple) else checked


@frozen
class SamplerSettings:
    """How to pick each token; ``temperature == 0`` is greedy.

    Every value is checked here, so a request fails before it waits for the model. Ranges
    are llama.cpp's: ``top_k`` is a C int (0 keeps every token; above the vocabulary size it
    changes nothing), the probabilities are fractions, the seed a C uint32. Token ids in
    ``logit_bias`` and ``logprobs`` are bounded by the vocabulary in
    ``check_against_vocabulary`` (the model is needed for that).
    """

    temperature: float = field(converter=_to_float, validator=_number("a finite number >= 0", 0.0))
    top_k: int = field(
        default=40,
        converter=_whole,
        validator=_integer(f"an integer from 0 (no limit) to {INT32_MAX}", 0, INT32_MAX),
    )
    top_p: float = field(
        default=0.95, converter=_to_float, validator=_number("a number from 0.0 to 1.0", 0.0, 1.0)
    )
    min_p: float = field(
        default=0.05, converter=_to_float, validator=_number("a number from 0.0 to 1.0", 0.0, 1.0)
    )
    typical_p: float = field(
        default=1.0,
        converter=_to_float,
        validator=_number("a number from 0.0 to 1.0 (1.0 = off)", 0.0, 1.0),
    )
    repeat_penalty: float = field(
        default=1.0,
        converter=_to_float,
        validator=_number("a finite number > 0 (1.0 = off)", 0.0, above=True),
    )
    frequency_penalty: float = field(
        default=0.0, converter=_to_float, validator=_number("a finite number (0.0 = off)")
    )
    presence_penalty: float = field(
        default=0.0, converter=_to_float, validator=_number("a finite number (0.0 = off)")
    )
    mirostat_mode: int = field(
        default=0, converter=_whole, validator=_integer("0 (off), 1 or 2", 0, 2)
    )
    mirostat_tau: float = field(
        default=5.0, converter=_to_float, validator=_number("a finite number >= 0", 0.0)
    )
    mirostat_eta: float = field(
        default=0.1, converter=_to_float, validator=_number("a finite number >= 0", 0.0)
    )
    seed: int | None = field(
        default=None,
        converter=_integral,
        validator=_integer(f"None or an integer from 0 to {UINT32_MAX}", 0, UINT32_MAX, none=True),
    )
    logit_bias: tuple[tuple[int, float], ...] = field(default=(), converter=_logit_bias)
    # llguidance's form of a GBNF grammar (given as a str or a llama_cpp.LlamaGrammar)
    grammar: str | None = field(default=None, converter=_grammar)
    logprobs: int | None = field(
        default=None,
        converter=_integral,
        validator=_integer(
            "None or an integer >= 0 (alternatives per token, at most the vocabulary size)",
            0,
            INT32_MAX,
            none=True,
        ),
    )
    logits_processor: Callable[..., Any] | None = field(default=None, converter=_logits_processor)
    stopping_criteria: Callable[..., Any] | None = field(default=None, converter=_stopping_criteria)
    json_schema: dict[str, Any] | None = None  # constrain the answer to JSON matching it

    def __attrs_post_init__(self) -> None:
        if self.grammar is not None and self.json_schema is not None:
            raise ConfigurationError("give grammar or json_schema (or response_format), not both")

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reshapes the logits: the pick is just their argmax."""
        return (
            self.temperature == 0.0
            and self.repeat_penalty == 1.0
            and self.frequency_penalty == 0.0
            and self.presence_penalty == 0.0
            and not self.logit_bias
            and self.grammar is None
        )


def sampler_settings(temperature: float, options: Mapping[str, Any]) -> SamplerSettings:
    """Checked settings from a request's options; unknown names are a configuration error."""
    unknown = sorted(set(options) - set(SUPPORTED_OPTIONS), key=str)
    if "echo" in unknown or "suffix" in unknown:
        raise ConfigurationError(
            "echo and suffix are not supported by the llama-cpp backend; "
            "put the prompt text in front of the answer yourself"
        )
    if unknown:
        raise ConfigurationError(
            f"unknown generation option(s) {', '.join(map(repr, unknown))}; "
            f"the llama-cpp backend accepts: temperature, max_new_tokens, stop, "
            f"{', '.join(SUPPORTED_OPTIONS)}"
        )
    values: dict[str, Any] = {}
    for name in _NUMERIC_DEFAULTS:
        if name in options:
            values[name] = options[name]
    tfs_z = options.get("tfs_z")
    if tfs_z is not None and not _finite(tfs_z):
        raise _refuse("tfs_z", "None or a finite number (it is accepted and ignored)", tfs_z)
    penalize_nl = options.get("penalize_nl")
    if penalize_nl is not None and not isinstance(penalize_nl, bool):
        raise _refuse("penalize_nl", "None, True or False (accepted and ignored)", penalize_nl)
    return SamplerSettings(
        temperature=temperature,
        seed=options.get("seed"),
        logit_bias=options.get("logit_bias"),
        grammar=options.get("grammar"),
        logprobs=options.get("logprobs"),
        logits_processor=options.get("logits_processor"),
        stopping_criteria=options.get("stopping_criteria"),
        json_schema=schema_from_options(options),
        **values,
    )


def check_against_vocabulary(
    settings: SamplerSettings, n_vocab: int, constraints: JsonConstraints | None = None
) -> None:
    """Raise ``ConfigurationError`` for what only the loaded model can tell is out of range.

    Token ids in ``logit_bias`` must be below ``n_vocab`` and ``logprobs`` at most
    ``n_vocab``; with ``constraints`` (the model's), a JSON schema or grammar is compiled
    now, so one that cannot be used fails before generation (``SchemaError``).
    """
    outside = [token for token, _ in settings.logit_bias if token >= n_vocab]
    if outside:
        raise ConfigurationError(
            f"logit_bias token id(s) {', '.join(map(str, outside[:5]))} are outside this "
            f"model's vocabulary (ids 0 to {n_vocab - 1})"
        )
    if settings.logprobs is not None and settings.logprobs > n_vocab:
        raise _refuse(
            "logprobs",
            f"None or an integer from 0 to {n_vocab} (this model's vocabulary size)",
            settings.logprobs,
        )
    if constraints is not None:
        if settings.json_schema is not None:
            constraints.check(settings.json_schema)
        elif settings.grammar is not None:
            constraints.check(grammar=settings.grammar)


def build_sampler(
    settings: SamplerSettings, *, vocab: Any, n_vocab: int, seed: int, last_n: int
) -> Any:
    """A native sampler chain (free it with ``llama_sampler_free``), as create_completion builds it.

    The order is create_completion's: logit bias, penalties, then greedy, mirostat or
    top-k, typical, top-p, min-p, temperature and the seeded draw.
    """
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        lib.llama_sampler_chain_add(chain, sampler)

    if settings.logit_bias:
        biases = (lib.llama_logit_bias * len(settings.logit_bias))(
            *(lib.llama_logit_bias(token, bias) for token, bias in settings.logit_bias)
        )
        add(lib.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
    add(
        lib.llama_sampler_init_penalties(
            n_vocab,
            last_n,
            settings.repeat_penalty,
            settings.frequency_penalty,
            settings.presence_penalty,
        )
    )
    temperature = settings.temperature
    if temperature == 0.0:
        add(lib.llama_sampler_init_greedy())
    elif settings.mirostat_mode == 1:
        add(
            lib.llama_sampler_init_mirostat(
                n_vocab, seed, settings.mirostat_tau, settings.mirostat_eta, 100
            )
        )
    elif settings.mirostat_mode == 2:
        add(lib.llama_sampler_init_mirostat_v2(seed, settings.mirostat_tau, settings.mirostat_eta))
    else:
        add_truncation(chain, settings, seed)
    return chain


def add_truncation(chain: Any, settings: SamplerSettings, seed: int) -> None:
    """Add top-k, typical, top-p, min-p, temperature and the seeded draw to ``chain``.

    One function for the full chain and for the fast sampler's chain over the top-k
    candidates, so both apply the same samplers in the same order with the same seed.
    """
    import llama_cpp as lib

    for sampler in (
        lib.llama_sampler_init_top_k(settings.top_k),
        lib.llama_sampler_init_typical(settings.typical_p, 1),
        lib.llama_sampler_init_top_p(settings.top_p, 1),
        lib.llama_sampler_init_min_p(settings.min_p, 1),
        lib.llama_sampler_init_temp(settings.temperature),
        lib.llama_sampler_init_dist(ctypes.c_uint32(seed).value),
    ):
        lib.llama_sampler_chain_add(chain, sampler)
