"""Sampler settings for the built-in backend, built as one native llama.cpp sampler chain.

Everything runs in llama.cpp (logit bias included), so sampling costs no Python per
token. The defaults are llama-cpp-python's ``create_completion`` defaults, so the same
settings pick the same tokens as the raw call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.structured import schema_from_options

__all__ = ["SUPPORTED_OPTIONS", "SamplerSettings", "build_sampler", "sampler_settings"]

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


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"logit_bias must map token ids to biases, e.g. {{42: -100.0}}; got {value!r}"
        )
    return tuple((int(token), float(bias)) for token, bias in value.items())


@frozen
class SamplerSettings:
    """How to pick each token; ``temperature == 0`` is greedy."""

    temperature: float
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = field(default=(), converter=_logit_bias)
    grammar: Any = None  # a llama_cpp.LlamaGrammar
    logprobs: int | None = None
    logits_processor: Callable[..., Any] | None = None
    stopping_criteria: Callable[..., Any] | None = None
    json_schema: dict[str, Any] | None = None  # constrain the answer to JSON matching it

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
    unknown = sorted(set(options) - set(SUPPORTED_OPTIONS))
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
    for name, default in _NUMERIC_DEFAULTS.items():
        value = options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{name} must be a number, got {value!r}")
        values[name] = type(default)(value) if name in ("top_k", "mirostat_mode") else value
    logprobs = options.get("logprobs")
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0
    ):
        raise ConfigurationError(
            f"logprobs must be a non-negative integer (how many alternatives per token), got {logprobs!r}"
        )
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
    return SamplerSettings(
        temperature=float(temperature),
        seed=seed,
        logit_bias=options.get("logit_bias"),
        grammar=options.get("grammar"),
        logprobs=logprobs,
        logits_processor=options.get("logits_processor"),
        stopping_criteria=options.get("stopping_criteria"),
        json_schema=schema_from_options(options),
        **values,
    )


def build_sampler(
    settings: SamplerSettings, *, vocab: Any, n_vocab: int, seed: int, last_n: int
) -> Any:
    """A native sampler chain (free it with ``llama_sampler_free``), as create_completion builds it."""
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
    if settings.grammar is not None:
        add(
            lib.llama_sampler_init_grammar(
                vocab,
                settings.grammar._grammar.encode("utf-8"),
                settings.grammar._root.encode("utf-8"),
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
        add(lib.llama_sampler_init_top_k(settings.top_k))
        add(lib.llama_sampler_init_typical(settings.typical_p, 1))
        add(lib.llama_sampler_init_top_p(settings.top_p, 1))
        add(lib.llama_sampler_init_min_p(settings.min_p, 1))
        add(lib.llama_sampler_init_temp(temperature))
        add(lib.llama_sampler_init_dist(ctypes.c_uint32(seed).value))
    return chain
