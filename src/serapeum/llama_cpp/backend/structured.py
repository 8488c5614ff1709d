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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from serapeum.core.errors import ConfigurationError
from serapeum.core.json_schema import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    _admits_finite_value,
    check_schema,
    schema_from_options,
)
from serapeum.llama_cpp.errors import IncompleteJSONError, SchemaError

__all__ = [
    "MAX_GRAMMAR_BYTES",
    "MAX_GRAMMAR_RULES",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "IncompleteJSONError",
    "JsonConstraints",
    "SchemaError",
    "_admits_finite_value",
    "check_schema",
    "error_summary",
    "grammar_from_gbnf",
    "schema_from_options",
]

# Compact, readable JSON: no free whitespace, so a small model cannot fill its answer with
# newlines; ", " and ": " are the separators models are used to.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_COMPILED_PER_MODEL = 64
# A GBNF grammar: its bytes bound the compiler's recursion as above; its rules bound the
# conversion to llguidance's syntax, which takes time quadratic in a chain of rules.
MAX_GRAMMAR_BYTES = 256_000
MAX_GRAMMAR_RULES = 1_000
# llguidance's compiler recurses once per level of a schema's or grammar's nesting, through
# every $ref and rule reference, with no depth limit of its own: a chain of 1,000 $refs
# (100 KB of JSON) overflows an 8 MiB thread stack and kills the process (SIGSEGV). It
# needs about 300 bytes of stack per byte of input at worst, so it compiles on a thread
# whose stack holds the largest input accepted with room to spare. The stack is reserved
# address space; only the pages a compile touches are ever used.
_COMPILE_STACK_BYTES = 512 * 2**20


_Result = TypeVar("_Result")
_stack_size_lock = threading.Lock()


def _on_a_large_stack(function: Callable[[], _Result]) -> _Result:
    """``function()`` run on a thread with a ``_COMPILE_STACK_BYTES`` stack (see there)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((False, exc))

    for stack_bytes in (_COMPILE_STACK_BYTES, _COMPILE_STACK_BYTES // 8):
        thread = threading.Thread(target=run, name="serapeum-llguidance-compile", daemon=True)
        with _stack_size_lock:  # the size applies to threads started while it is set
            previous = threading.stack_size(stack_bytes)
            try:
                thread.start()
            except RuntimeError:  # no address space for the stack (ulimit -v): try less
                continue
            finally:
                threading.stack_size(previous)
        thread.join()
        break
    else:
        run()  # no thread could start: compile here, as the caller would have
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def grammar_from_gbnf(grammar: str) -> str:
    """llguidance's form of a llama.cpp GBNF grammar; ``SchemaError`` if it does not parse."""
    size = len(grammar.encode("utf-8", "surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        raise SchemaError(
            f"grammar is {size:,} bytes, more than {MAX_GRAMMAR_BYTES:,}; simplify it"
        )
    rules = grammar.count("::=")
    if rules > MAX_GRAMMAR_RULES:
        raise SchemaError(
            f"grammar has {rules:,} rules, more than {MAX_GRAMMAR_RULES:,}; simplify it"
        )
    return _on_a_large_stack(lambda: _converted_gbnf(grammar))


def _converted_gbnf(grammar: str) -> str:
    llguidance = JsonConstraints._llguidance()
    try:
        converted: str = llguidance.grammar_from("gbnf", grammar)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"grammar is not a valid GBNF grammar: {exc}") from exc
    problem = llguidance.LLMatcher.validate_grammar(converted)
    if problem:
        raise SchemaError(f"grammar cannot constrain generation: {problem.strip()}")
    return converted


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

    def matcher(self, schema: Mapping[str, Any] | None = None, grammar: str | None = None) -> Any:
        """A fresh matcher for a JSON schema or an llguidance grammar, compiled once and checked."""
        return self._template(schema, grammar).deep_copy()

    def check(self, schema: Mapping[str, Any] | None = None, grammar: str | None = None) -> None:
        """Raise ``SchemaError`` now, before generation, if the constraint cannot be used."""
        self._template(schema, grammar)

    def _template(self, schema: Mapping[str, Any] | None, grammar: str | None) -> Any:
        """The compiled matcher (compiled on first use, then cached)."""
        if schema is not None:
            key = canonical(schema)
        elif grammar is not None:
            key = "grammar:" + grammar
        else:
            raise ValueError("a JSON schema or a grammar is needed")
        with self._lock:
            template = self._compiled.get(key)
            if template is None:
                template = _on_a_large_stack(lambda: self._compile(schema, grammar))
                self._compiled[key] = template
                if len(self._compiled) > _COMPILED_PER_MODEL:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(key)
        return template

    def _compile(self, schema: Mapping[str, Any] | None, grammar: str | None) -> Any:
        llguidance = self._llguidance()
        matcher_class = llguidance.LLMatcher
        what = "JSON Schema" if schema is not None else "grammar"
        if schema is not None:
            try:
                grammar = matcher_class.grammar_from_json_schema(
                    dict(schema), defaults=_JSON_OPTIONS
                )
            except (ValueError, RecursionError) as exc:
                raise SchemaError(f"json_schema is not a JSON Schema object: {exc}") from exc
        tokenizer = self._bridge()
        problem = matcher_class.validate_grammar(grammar, tokenizer)
        if problem:
            raise SchemaError(
                f"this {what} cannot constrain generation: {problem.strip()} "
                "(remove or simplify that part of it)"
            )
        matcher = matcher_class(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SchemaError(
                f"this {what} cannot constrain generation: {error_summary(matcher.get_error())}"
            )
        self._dry_run(matcher, what)
        return matcher

    def _dry_run(self, template: Any, what: str) -> None:
        """Compute the first token mask now, so a grammar that fails there fails before generation.

        llguidance finds some problems (a grammar with no way to start, an Earley item set
        past its limits) only when it computes a mask; doing it once per compiled constraint
        makes them a ``SchemaError`` here rather than an error in the middle of a stream.
        """
        import numpy as np

        probe = template.deep_copy()
        mask = np.zeros(((self._n_vocab + 31) // 32,), dtype=np.int32)
        probe.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        if probe.is_error():
            raise SchemaError(
                f"this {what} cannot constrain generation: {error_summary(probe.get_error())}"
            )
        if not mask.any() and not probe.is_accepting():
            raise SchemaError(
                f"this {what} admits no text this model's vocabulary can write "
                "(no token can start it)"
            )


def error_summary(error: str) -> str:
    """llguidance's error in a line, without its parser-state dump."""
    fields: dict[str, str] = {}
    for line in error.splitlines():
        line = line.strip()
        for key in ("Error:", "Stop:"):
            if line.startswith(key):
                fields.setdefault(key, line[len(key) :].strip())
    message = fields.get("Error:")
    if message and message != "None":
        return message[:300]
    stop = fields.get("Stop:")
    if stop == "NoExtensionBias":
        return "it allows no text at all here (NoExtensionBias)"
    if stop:
        return f"llguidance stopped ({stop})"
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return (lines[0] if lines else "no token is allowed here")[:300]


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
