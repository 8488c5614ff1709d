"""JSON-Schema-constrained decoding with llguidance, applied inside the generation loop.

Why llguidance and "check first": llama.cpp's own grammar sampler (``LlamaGrammar``) checks
every vocabulary entry against the grammar at every step; with Gemma's 262,144 tokens that
is most of the time of a token. Here the token the model would pick anyway is sampled as
usual and checked against the grammar with ``validate_tokens``; only when the grammar
rejects it is llguidance's token mask computed (in native code, a few hundred
microseconds), applied to the logits, and the token sampled again. For sampling that is
exactly the constrained distribution (rejection sampling); for greedy decoding it is the
best allowed token. The tokenizer bridge costs about two seconds on a large vocabulary:
it is built once per loaded model and kept with it, and each schema is compiled once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from serapeum.core.errors import ConfigurationError, SerapeumError

__all__ = [
    "IncompleteJSONError",
    "JsonConstraints",
    "SchemaError",
    "schema_from_options",
]

# Compact, readable JSON: no free whitespace, so a small model cannot fill its answer with
# newlines; ", " and ": " are the separators models are used to.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_COMPILED_PER_MODEL = 64


class SchemaError(ConfigurationError):
    """The JSON Schema cannot constrain generation: invalid, unsatisfiable or unsupported."""


class IncompleteJSONError(SerapeumError, ValueError):
    """Generation ended before the constrained JSON value was complete.

    ``text`` is what was generated; raise ``max_new_tokens`` (or shorten the prompt) and retry.
    """

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message)
        self.text = text


def schema_from_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema a request asks for: ``json_schema=`` or an OpenAI/llama-cpp ``response_format``."""
    schema = options.get("json_schema")
    response_format = options.get("response_format")
    if schema is not None and response_format is not None:
        raise ConfigurationError("give json_schema or response_format, not both")
    if response_format is not None:
        schema = _schema_of_response_format(response_format)
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"json_schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, Mapping):
        raise SchemaError(
            f"json_schema must be a JSON Schema object (a dict), got {type(schema).__name__}; "
            "for a pydantic or attrs class pass PydanticParser(cls).json_schema / "
            "AttrsParser(cls).json_schema"
        )
    return dict(schema)


def _schema_of_response_format(value: Any) -> Any:
    if not isinstance(value, Mapping) or value.get("type") not in (
        "json_object",
        "json_schema",
        "text",
    ):
        raise ConfigurationError(
            "response_format must be {'type': 'json_object'} (any JSON object), "
            "{'type': 'json_object', 'schema': {...}} or "
            "{'type': 'json_schema', 'json_schema': {'schema': {...}}}; got " + repr(value)
        )
    if value["type"] == "text":
        return None
    if value["type"] == "json_schema":
        inner = value.get("json_schema")
        if not isinstance(inner, Mapping) or "schema" not in inner:
            raise ConfigurationError(
                "response_format of type 'json_schema' needs {'json_schema': {'schema': {...}}}"
            )
        return inner["schema"]
    return value.get("schema") or {"type": "object"}


def canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class JsonConstraints:
    """One loaded model's tokenizer bridge and compiled schemas (built on first use)."""

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._tokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _llguidance() -> Any:
        try:
            import llguidance
            import llguidance.llamacpp
        except ImportError as exc:  # pragma: no cover - llguidance is a dependency
            raise ConfigurationError(
                "constrained JSON output needs llguidance: pip install llguidance"
            ) from exc
        return llguidance

    @property
    def ready(self) -> bool:
        """Whether the per-model set-up (the tokenizer bridge) is done."""
        return self._tokenizer is not None

    def _bridge(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _build_tokenizer(self._llguidance(), self._vocab, self._n_vocab)
        return self._tokenizer

    def matcher(self, schema: Mapping[str, Any]) -> Any:
        """A fresh matcher for ``schema``; the schema is compiled once and checked first."""
        return self._template(schema).deep_copy()

    def check(self, schema: Mapping[str, Any]) -> None:
        """Raise ``SchemaError`` now, before generation, if the schema cannot be used."""
        self._template(schema)

    def _template(self, schema: Mapping[str, Any]) -> Any:
        """The compiled matcher for ``schema`` (compiled on first use, then cached)."""
        key = canonical(schema)
        with self._lock:
            template = self._compiled.get(key)
            if template is None:
                template = self._compile(schema)
                self._compiled[key] = template
                if len(self._compiled) > _COMPILED_PER_MODEL:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(key)
        return template

    def _compile(self, schema: Mapping[str, Any]) -> Any:
        llguidance = self._llguidance()
        matcher_class = llguidance.LLMatcher
        try:
            grammar = matcher_class.grammar_from_json_schema(dict(schema), defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise SchemaError(f"json_schema is not a JSON Schema object: {exc}") from exc
        tokenizer = self._bridge()
        problem = matcher_class.validate_grammar(grammar, tokenizer)
        if problem:
            raise SchemaError(
                f"this JSON Schema cannot constrain generation: {problem.strip()} "
                "(remove or simplify that part of the schema)"
            )
        matcher = matcher_class(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SchemaError(
                f"this JSON Schema cannot constrain generation: {matcher.get_error()}"
            )
        return matcher


def _build_tokenizer(llguidance: Any, vocab: Any, n_vocab: int) -> Any:
    """llguidance's view of a llama.cpp vocabulary (the expensive, once-per-model part).

    What ``llguidance.llamacpp.lltokenizer_from_vocab`` does, with llama.cpp's current
    ``llama_vocab_get_attr`` (the deprecated spelling it calls warns once per token) and
    every end-of-generation token as EOS, so the grammar may end at any of them.
    """
    import ctypes

    import llama_cpp as lib

    control = lib.LLAMA_TOKEN_ATTR_CONTROL
    user_defined = lib.LLAMA_TOKEN_ATTR_USER_DEFINED
    size = 16 * 1024
    buffer = ctypes.create_string_buffer(size + 1)
    pieces: list[bytes] = []
    end_of_generation: list[int] = []
    for token in range(n_vocab):
        written = lib.llama_token_to_piece(vocab, token, buffer, size, 0, True)
        if written < 0:
            raise ValueError(f"token {token} is longer than {size} bytes")
        piece = buffer.raw[:written]
        attributes = lib.llama_vocab_get_attr(vocab, token)
        # Control tokens (and user-defined ones that look like them) are marked with a
        # leading 0xFF byte: llguidance never lets JSON text produce them.
        if attributes & control or (
            attributes & user_defined and piece.startswith(b"<") and piece.endswith(b">")
        ):
            piece = b"\xff" + piece
        pieces.append(piece)
        if lib.llama_vocab_is_eog(vocab, token):
            end_of_generation.append(token)
    tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llguidance.LLTokenizer.from_llamacpp(
        tokens=pieces,
        vocab_ptr=vocab,
        tokenize_fptr=tokenize,
        eos_token=end_of_generation or lib.llama_vocab_eos(vocab),
        slices=None,
    )
