"""Load options (``model_kwargs``) checked before llama.cpp sees them.

``llama_cpp.Llama`` takes ``**kwargs`` and drops names it does not know, and passes the
rest to C structs through ctypes, which wraps out-of-range integers silently; a few values
(an unknown KV-cache type, a thread count past ggml's limit) make llama.cpp abort the whole
process. So every name must be a ``Llama.__init__`` parameter (a typo gets a suggestion),
and every value a type and range llama.cpp handles; anything else is a
``ConfigurationError`` that says what is accepted.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import operator
import os
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.shown import shown

__all__ = ["KV_CACHE_TYPES", "check_load_options"]

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
# The largest finite C float: the rope, YaRN and LoRA settings are floats in llama.cpp's
# structs, where a larger double becomes infinity.
FLT_MAX = 3.4028234663852886e38
# ggml's GGML_MAX_N_THREADS: more threads overrun its fixed-size per-thread arrays.
MAX_THREADS = 512
# The largest context llama.cpp's 32-bit positions and our checks accept.
MAX_CONTEXT = INT32_MAX

# The KV-cache types llama.cpp supports (its ``kv_cache_types`` list in common/arg.cpp):
# ggml type id -> name. Any other id aborts the process when the context is created.
KV_CACHE_TYPES: dict[int, str] = {
    0: "f32",
    1: "f16",
    30: "bf16",
    8: "q8_0",
    2: "q4_0",
    3: "q4_1",
    20: "iq4_nl",
    6: "q5_0",
    7: "q5_1",
}
_KV_TYPE_IDS = {name: type_id for type_id, name in KV_CACHE_TYPES.items()}
_QUANTIZED_KV = {type_id for type_id, name in KV_CACHE_TYPES.items() if name[0] in "qi"}
_KV_ACCEPTED = (
    "None (f16) or a KV-cache type llama.cpp supports, as a ggml type id or name: "
    + ", ".join(f"{type_id} ({name})" for type_id, name in KV_CACHE_TYPES.items())
)
# kv_overrides keys and string values live in 128-byte C buffers, NUL-terminated.
_OVERRIDE_BYTES = 127
# Metadata that describes the file's tensors (or how to read them): an override that
# disagrees with the tensors cannot load, and some (block_count 0, expert_count on a dense
# model) make llama.cpp abort. The GGUF check vouches for the file's own values.
_SHAPE_KEYS = (
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.model",
    ".block_count",
    ".embedding_length",
    ".feed_forward_length",
    ".attention.head_count",
    ".attention.head_count_kv",
    ".attention.key_length",
    ".attention.value_length",
    ".rope.dimension_count",
    ".expert_count",
    ".expert_shared_count",
    ".vocab_size",
)

_ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


class _Refused(Exception):
    """A value outside what an option accepts (turned into ConfigurationError by the caller)."""


@frozen
class _Option:
    accepted: str  # what the message says is accepted
    convert: Callable[[Any], Any]  # returns the value to pass on, or raises _Refused


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(low: int, high: int, accepted: str, *, none: bool = False) -> _Option:
    """An integer (numpy's too, not a bool) in [low, high], passed on as an int."""

    def convert(value: Any) -> Any:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Refused
        value = operator.index(value)
        if not low <= value <= high:
            raise _Refused
        return value

    return _Option(accepted, convert)


def _number(
    accepted: str, low: float = -math.inf, high: float = math.inf, *, above: bool = False
) -> _Option:
    """A finite number in [low, high] (or (low, high] with ``above``)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Refused
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):  # 10**400: no float holds it
            raise _Refused from None
        if not math.isfinite(number) or number > high or number < low:
            raise _Refused
        if above and number == low:
            raise _Refused
        return number

    return _Option(accepted, convert)


def _flag(*, none: bool = False) -> _Option:
    def convert(value: Any) -> Any:
        if (value is None and none) or isinstance(value, bool):
            return value
        raise _Refused

    return _Option("None or True or False" if none else "True or False", convert)


def _choice(values: Mapping[int, str], *, none: bool = False) -> _Option:
    listed = ", ".join(f"{key} ({name})" for key, name in values.items())

    def convert(value: Any) -> Any:
        if value is None and none:
            return None
        if not _is_int(value) or value not in values:
            raise _Refused
        return value

    return _Option(("None or " if none else "") + f"one of {listed}", convert)


def _instance(accepted: str, check: Callable[[Any], bool]) -> _Option:
    def convert(value: Any) -> Any:
        if value is None or check(value):
            return value
        raise _Refused

    return _Option(accepted, convert)


def _kv_type(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in _KV_TYPE_IDS:
        return _KV_TYPE_IDS[value.lower()]
    if _is_int(value) and value in KV_CACHE_TYPES:
        return value
    raise _Refused


def _tensor_split(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise _Refused
    parts = [_number("").convert(part) for part in value]
    if any(part < 0 for part in parts) or len(parts) > _max_devices():
        raise _Refused
    return parts


def _kv_overrides(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _Refused
    checked: dict[str, bool | int | float | str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _fits_c_buffer(key) or not key:
            raise _Refused
        if key.startswith(_SHAPE_KEYS[:3]) or key.endswith(_SHAPE_KEYS[3:]):
            raise ConfigurationError(
                f"kv_overrides may not change {key!r}: it describes the model file's tensors, "
                "and llama.cpp cannot load (or aborts on) a model whose metadata disagrees "
                "with them"
            )
        if not _override_value_fits(item):
            raise _Refused
        if key.endswith(".rope.scaling.type") and item not in _ROPE_SCALING_TYPES:
            # llama.cpp asserts that it knows the name (SIGABRT), case included
            raise ConfigurationError(
                f"kv_overrides {key!r} must be one of {', '.join(_ROPE_SCALING_TYPES)}; "
                f"got {shown(item)}"
            )
        checked[key] = item
    return checked


def _override_value_fits(item: Any) -> bool:
    """Metadata numbers are counts, ids, sizes and scales: never negative (a negative
    layer-norm epsilon aborts llama.cpp), never NaN or infinite."""
    if isinstance(item, bool):
        return True
    if _is_int(item):
        return bool(0 <= item <= INT64_MAX)
    if isinstance(item, float):
        return math.isfinite(item) and item >= 0.0
    return isinstance(item, str) and _fits_c_buffer(item)


def _fits_c_buffer(text: str) -> bool:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(data) <= _OVERRIDE_BYTES and b"\0" not in data


def _path_or_none(value: Any) -> Any:
    if value is None or isinstance(value, str | os.PathLike):
        return None if value is None else os.fspath(value)
    raise _Refused


def _numa(value: Any) -> Any:
    if isinstance(value, bool) or (_is_int(value) and 0 <= value <= 4):
        return value
    raise _Refused


@cache
def _max_devices() -> int:
    import llama_cpp

    return int(llama_cpp.LLAMA_MAX_DEVICES)


def _is_draft_model(value: Any) -> bool:
    from llama_cpp.llama_speculative import LlamaDraftModel

    return isinstance(value, LlamaDraftModel)


def _is_tokenizer(value: Any) -> bool:
    from llama_cpp.llama_tokenizer import BaseLlamaTokenizer

    return isinstance(value, BaseLlamaTokenizer)


_C_FLOAT = "a finite number (within +-3.4e38: a C float)"
_C_FLOAT_AT_LEAST_0 = "a finite number >= 0 (at most 3.4e38: a C float)"

_THREADS = _integer(
    1, MAX_THREADS, f"None (every usable CPU) or an integer from 1 to {MAX_THREADS}", none=True
)

# What each Llama.__init__ parameter accepts. A parameter that a newer llama-cpp-python adds
# and this table does not know yet is passed on unchecked.
_OPTIONS: dict[str, _Option] = {
    # model
    "n_gpu_layers": _integer(-1, INT32_MAX, "an integer >= -1 (-1 offloads every layer)"),
    "split_mode": _choice({0: "none", 1: "layer", 2: "row", 3: "tensor"}),
    "main_gpu": _integer(0, INT32_MAX, "an integer >= 0 (a GPU index)"),
    "tensor_split": _Option(
        "None or a list of finite fractions >= 0, one per GPU (at most LLAMA_MAX_DEVICES)",
        _tensor_split,
    ),
    "vocab_only": _Option(
        "False (a vocabulary-only model has no weights to generate with)",
        lambda value: value if value is False else _refuse(),
    ),
    "use_mmap": _flag(),
    "use_mlock": _flag(),
    "kv_overrides": _Option(
        "None or a dict of GGUF key -> bool, int (0 to 2**63-1), finite float >= 0 or str, "
        f"keys and strings at most {_OVERRIDE_BYTES} UTF-8 bytes",
        _kv_overrides,
    ),
    # context
    "seed": _integer(-1, UINT32_MAX, f"an integer from -1 (random) to {UINT32_MAX}"),
    "n_ctx": _integer(
        0, MAX_CONTEXT, f"an integer from 0 (the model's training context) to {MAX_CONTEXT}"
    ),
    "n_batch": _integer(1, INT32_MAX, f"an integer from 1 to {INT32_MAX}"),
    "n_ubatch": _integer(1, INT32_MAX, f"an integer from 1 to {INT32_MAX}"),
    "n_threads": _THREADS,
    "n_threads_batch": _THREADS,
    "rope_scaling_type": _choice(
        {-1: "unspecified", 0: "none", 1: "linear", 2: "yarn", 3: "longrope"}, none=True
    ),
    "pooling_type": _choice(
        {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
    ),
    "attention_type": _choice({-1: "unspecified", 0: "causal", 1: "non-causal"}),
    "rope_freq_base": _number(_C_FLOAT_AT_LEAST_0 + " (0: the model's)", 0.0, FLT_MAX),
    "rope_freq_scale": _number(_C_FLOAT_AT_LEAST_0 + " (0: the model's)", 0.0, FLT_MAX),
    "yarn_ext_factor": _number(_C_FLOAT + " (negative: the model's)", -FLT_MAX, FLT_MAX),
    "yarn_attn_factor": _number(_C_FLOAT_AT_LEAST_0, 0.0, FLT_MAX),
    "yarn_beta_fast": _number(_C_FLOAT_AT_LEAST_0, 0.0, FLT_MAX),
    "yarn_beta_slow": _number(_C_FLOAT_AT_LEAST_0, 0.0, FLT_MAX),
    "yarn_orig_ctx": _integer(0, UINT32_MAX, f"an integer from 0 (the model's) to {UINT32_MAX}"),
    "logits_all": _flag(),
    "embedding": _Option(
        "False (LlamaCPP generates text; an embedding context has no logits to sample)",
        lambda value: value if value is False else _refuse(),
    ),
    "offload_kqv": _flag(),
    "flash_attn": _flag(),
    "op_offload": _flag(none=True),
    "swa_full": _flag(none=True),
    # sampling
    "no_perf": _flag(),
    "last_n_tokens_size": _integer(0, INT32_MAX, f"an integer from 0 to {INT32_MAX}"),
    # LoRA
    "lora_base": _Option("None or a path", _path_or_none),
    "lora_scale": _number(_C_FLOAT, -FLT_MAX, FLT_MAX),
    "lora_path": _Option("None or a path", _path_or_none),
    # backend
    "numa": _Option("True, False or a ggml NUMA strategy from 0 to 4", _numa),
    # chat (llama-cpp-python's own chat API; LlamaCPP writes prompts itself)
    "chat_format": _instance("None or a str", lambda value: isinstance(value, str)),
    "chat_handler": _instance("None or a callable", callable),
    "draft_model": _instance("None or a llama_cpp LlamaDraftModel", _is_draft_model),
    "tokenizer": _instance("None or a llama_cpp BaseLlamaTokenizer", _is_tokenizer),
    # KV cache
    "type_k": _Option(_KV_ACCEPTED, _kv_type),
    "type_v": _Option(_KV_ACCEPTED, _kv_type),
    # misc
    "spm_infill": _flag(),
    "verbose": _flag(),
}

# Set by LlamaCPP itself; in model_kwargs it would clash with its own argument.
_OURS = {"model_path": "model_path= (or model_url= / hf_model_id=) of LlamaCPP"}


def _refuse() -> Any:
    raise _Refused


@cache
def llama_parameters() -> frozenset[str]:
    """The keyword parameters of this llama-cpp-python's ``Llama.__init__``."""
    from llama_cpp import Llama

    signature = inspect.signature(Llama.__init__)
    return frozenset(
        name
        for name, parameter in signature.parameters.items()
        if name != "self"
        and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    )


def _unknown_name(name: Any, known: frozenset[str]) -> ConfigurationError:
    if not isinstance(name, str):
        return ConfigurationError(f"model_kwargs keys must be str, got {shown(name)}")
    if name in _OURS:
        return ConfigurationError(f"do not pass {name!r} in model_kwargs; use {_OURS[name]}")
    # difflib compares every pair of characters: only a name of a plausible length gets hints
    close = (
        difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6) if len(name) < 64 else []
    )
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ConfigurationError(
        f"unknown load option {shown(name)} in model_kwargs (llama_cpp.Llama would ignore it)"
        f"{hint} Accepted: {', '.join(sorted(known - set(_OURS)))}"
    )


def check_load_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options checked (and normalised: KV-cache type names become ids), ready for ``Llama``.

    Raises ``ConfigurationError`` naming the option and what it accepts.
    """
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"model_kwargs must be a dict, got {type(options).__name__}")
    known = llama_parameters()
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name not in known or name in _OURS:
            raise _unknown_name(name, known)
        option = _OPTIONS.get(name)
        if option is None:  # a parameter newer than this table: llama-cpp-python checks it
            checked[name] = value
            continue
        try:
            checked[name] = option.convert(value)
        except _Refused:
            raise ConfigurationError(
                f"load option {name} must be {option.accepted}; got {shown(value)}"
            ) from None
    _check_combinations(checked)
    return checked


def _check_combinations(options: Mapping[str, Any]) -> None:
    type_v = options.get("type_v")
    if type_v in _QUANTIZED_KV and options.get("flash_attn") is not True:
        raise ConfigurationError(
            f"load option type_v={type_v} ({KV_CACHE_TYPES[type_v]}) is a quantized KV-cache "
            "type, which llama.cpp supports only with flash_attn=True; add flash_attn=True or "
            "use type_v=1 (f16)"
        )
