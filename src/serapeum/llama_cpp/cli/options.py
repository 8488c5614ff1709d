"""Generation options as the command line spells them: ``-o KEY VALUE``, flags, ``/set``.

One table (``GENERATION_OPTIONS``) says, for each per-call option the library takes, the key
``-o`` and the REPL's ``/set`` accept, the flag that sets it, the keyword the library takes
and how a string from the command line becomes its value. ``parse_option`` turns one
``KEY VALUE`` pair into ``(keyword, value)`` for ``LlamaCPP.complete``/``chat``, refusing
unknown keys (with a did-you-mean) and bad values in the command line's words.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.cli.inputs import read_text_file
from serapeum.llama_cpp.load_options import INT32_MAX, UINT32_MAX

__all__ = [
    "GENERATION_OPTIONS",
    "OptionSpec",
    "flag_for",
    "option_spec",
    "parse_option",
    "read_json",
]


# -- value parsers: a string from the command line -> the library's value, or ValueError ------


def _number(low: float = -math.inf, high: float = math.inf, *, above: bool = False) -> Any:
    def parse(text: str) -> float:
        number = float(text)  # ValueError for "warm"
        if not math.isfinite(number) or not low <= number <= high or (above and number == low):
            raise ValueError
        return number

    return parse


def _integer(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        number = int(text.strip().replace("_", ""), 10)
        if not low <= number <= high:
            raise ValueError
        return number

    return parse


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _stop(text: str) -> list[str]:
    r"""One stop sequence; ``\n``, ``\t``, ``\r`` and ``\\`` are read as escapes (a shell
    cannot easily pass a newline)."""
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            following = next(chars, "")
            out.append(_ESCAPES.get(following, "\\" + following))
        else:
            out.append(ch)
    value = "".join(out)
    if not value:
        raise ValueError
    return [value]


def read_json(text: str, what: str) -> Any:
    """``text`` as JSON, or one ``ConfigurationError`` line naming ``what``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigurationError(f"{what}: nested too deeply to read") from None
    except ValueError as exc:
        raise ConfigurationError(f"{what}: not JSON ({exc})") from None


def _json_text(text: str, what: str) -> Any:
    """JSON given inline or as ``@FILE``."""
    if text.startswith("@"):
        text = read_text_file(text[1:], f"{what} file {text[1:]}")
    return read_json(text, what)


def _schema(text: str) -> Any:
    schema = _json_text(text, "json_schema")
    if not isinstance(schema, dict | bool):
        raise ValueError
    return schema


def _logit_bias(text: str) -> dict[int, float]:
    value = _json_text(text, "logit_bias")
    if not isinstance(value, dict):
        raise ValueError
    biases: dict[int, float] = {}
    for key, bias in value.items():
        token = int(key)
        if token < 0 or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise ValueError
        biases[token] = float(bias)
    return biases


def _grammar(text: str) -> str:
    if text.startswith("@"):
        text = read_text_file(text[1:], f"grammar file {text[1:]}")
    if not text.strip():
        raise ValueError
    return text


@frozen
class OptionSpec:
    """One generation option: how the command line names it and reads its value.

    ``key`` is what ``-o KEY VALUE`` and ``/set KEY VALUE`` take; ``keyword`` the name
    ``LlamaCPP`` takes (for ``max_tokens`` it is ``max_new_tokens``); ``flag`` the option
    that sets it on the command line ("" when only ``-o`` does); ``accepted`` says in
    words what a value may be; ``repeatable`` options (``stop``) add a value each time.
    """

    key: str
    keyword: str
    flag: str
    accepted: str
    help: str
    convert: Callable[[str], Any]
    repeatable: bool = False
    metavar: str = "VALUE"

    @property
    def name(self) -> str:
        """How messages name it: the flag when there is one, else ``-o KEY``."""
        return self.flag or f"-o {self.key}"

    def parse(self, value: str, name: str | None = None) -> Any:
        """``value`` as the library wants it, or ``ConfigurationError`` in the CLI's words
        (naming the option ``name``, by default its flag)."""
        try:
            return self.convert(value)
        except ConfigurationError:
            raise
        except (ValueError, TypeError, OverflowError):
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise ConfigurationError(
                f"{name or self.name} must be {self.accepted}; got {shown!r}"
            ) from None


def _spec(
    key: str,
    accepted: str,
    help: str,
    convert: Callable[[str], Any],
    *,
    keyword: str | None = None,
    flag: str = "",
    repeatable: bool = False,
    metavar: str = "VALUE",
) -> OptionSpec:
    return OptionSpec(
        key=key,
        keyword=keyword or key,
        flag=flag,
        accepted=accepted,
        help=help,
        convert=convert,
        repeatable=repeatable,
        metavar=metavar,
    )


_SPECS = (
    _spec(
        "temperature",
        "a number from 0.0 to 1.0",
        "randomness, 0.0 (always the likeliest token) to 1.0 (default 0.75)",
        _number(0.0, 1.0),
        flag="--temperature",
        metavar="T",
    ),
    _spec(
        "max_tokens",
        "a positive integer",
        "most tokens to generate (default 256)",
        _integer(1, INT32_MAX),
        keyword="max_new_tokens",
        flag="--max-tokens",
        metavar="N",
    ),
    _spec(
        "top_p",
        "a number from 0.0 to 1.0",
        "nucleus sampling: keep the likeliest tokens up to this probability (default 0.95)",
        _number(0.0, 1.0),
        flag="--top-p",
        metavar="P",
    ),
    _spec(
        "top_k",
        f"an integer from 0 (no limit) to {INT32_MAX}",
        "keep only the K likeliest tokens, 0 for no limit (default 40)",
        _integer(0, INT32_MAX),
        flag="--top-k",
        metavar="K",
    ),
    _spec(
        "min_p",
        "a number from 0.0 to 1.0",
        "drop tokens less likely than this fraction of the likeliest (default 0.05)",
        _number(0.0, 1.0),
    ),
    _spec(
        "typical_p",
        "a number from 0.0 to 1.0",
        "locally typical sampling, 1.0 for off (default 1.0)",
        _number(0.0, 1.0),
    ),
    _spec(
        "repeat_penalty",
        "a number > 0",
        "penalise repeated tokens, 1.0 for off (default 1.0)",
        _number(0.0, above=True),
    ),
    _spec(
        "frequency_penalty",
        "a finite number",
        "penalise tokens by how often they appeared, 0.0 for off (default 0.0)",
        _number(),
    ),
    _spec(
        "presence_penalty",
        "a finite number",
        "penalise tokens that appeared at all, 0.0 for off (default 0.0)",
        _number(),
    ),
    _spec(
        "mirostat_mode",
        "0 (off), 1 or 2",
        "Mirostat sampling version, 0 for off (default 0)",
        _integer(0, 2),
    ),
    _spec(
        "mirostat_tau",
        "a finite number >= 0",
        "Mirostat target entropy (default 5.0)",
        _number(0.0),
    ),
    _spec(
        "mirostat_eta",
        "a finite number >= 0",
        "Mirostat learning rate (default 0.1)",
        _number(0.0),
    ),
    _spec(
        "seed",
        f"an integer from 0 to {UINT32_MAX}",
        "random seed: the same seed and options give the same answer (default: random)",
        _integer(0, UINT32_MAX),
        flag="--seed",
        metavar="N",
    ),
    _spec(
        "stop",
        "a non-empty text",
        "stop when the answer would contain TEXT (repeat for several; \\n is a newline)",
        _stop,
        flag="--stop",
        repeatable=True,
        metavar="TEXT",
    ),
    _spec(
        "json_schema",
        "a JSON Schema (a JSON object), or @FILE",
        "answer with JSON matching this JSON Schema (JSON text or @FILE)",
        _schema,
    ),
    _spec(
        "grammar",
        "a GBNF grammar, or @FILE",
        "constrain the answer to this GBNF grammar (text or @FILE)",
        _grammar,
    ),
    _spec(
        "logit_bias",
        'a JSON object of token id -> bias, e.g. {"42": -100}',
        'bias token ids, e.g. {"42": -100} bans token 42',
        _logit_bias,
    ),
    _spec(
        "logprobs",
        "an integer from 0 to the vocabulary size",
        "return the log-probabilities of the N likeliest tokens at each step",
        _integer(0, INT32_MAX),
    ),
)

GENERATION_OPTIONS: Mapping[str, OptionSpec] = MappingProxyType({s.key: s for s in _SPECS})
_BY_KEYWORD = {s.keyword: s for s in _SPECS}


def _lookup(key: str) -> OptionSpec | None:
    normal = key.strip().lstrip("-").replace("-", "_").lower()
    return GENERATION_OPTIONS.get(normal) or _BY_KEYWORD.get(normal)


def _unknown(key: str) -> ConfigurationError:
    normal = key.strip().lstrip("-").replace("-", "_").lower()
    close = difflib.get_close_matches(normal, list(GENERATION_OPTIONS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigurationError(
        f"unknown option {key!r}; {hint}the options are: {', '.join(GENERATION_OPTIONS)}"
    )


def option_spec(key: str) -> OptionSpec:
    """The option ``key`` names (as ``-o`` takes it, its flag or the library's keyword)."""
    spec = _lookup(key)
    if spec is None:
        raise _unknown(key)
    return spec


def parse_option(key: str, value: str) -> tuple[str, Any]:
    """``("temperature", "0.2")`` -> ``("temperature", 0.2)``: the library keyword and value.

    ``key`` may be written with dashes or as the flag (``max-tokens``, ``--top-p``) or as
    the library's keyword (``max_new_tokens``). ``stop`` gives a one-item list (callers
    that repeat it extend the list). Unknown keys and bad values raise ``ConfigurationError``
    naming the option as the command line does.
    """
    spec = option_spec(key)
    return spec.keyword, spec.parse(value, spec.key)


def flag_for(keyword: str) -> str:
    """The command line's name for a library keyword (``max_new_tokens`` -> ``--max-tokens``);
    the keyword itself when the command line has no name for it."""
    spec = _BY_KEYWORD.get(keyword) or GENERATION_OPTIONS.get(keyword)
    return spec.name if spec is not None else keyword
