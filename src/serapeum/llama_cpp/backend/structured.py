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
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

from serapeum.core.errors import ConfigurationError
from serapeum.core.shown import shown
from serapeum.llama_cpp.errors import IncompleteJSONError, SchemaError

__all__ = [
    "MAX_GRAMMAR_BYTES",
    "MAX_GRAMMAR_RULES",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "IncompleteJSONError",
    "JsonConstraints",
    "SchemaError",
    "check_schema",
    "error_summary",
    "grammar_from_gbnf",
    "schema_from_options",
]

# Compact, readable JSON: no free whitespace, so a small model cannot fill its answer with
# newlines; ", " and ": " are the separators models are used to.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_COMPILED_PER_MODEL = 64
# A schema nested deeper than this is refused before anything recurses over it (json.dumps,
# llguidance and the checks here would otherwise end in RecursionError); real schemas put
# their nesting in $defs and stay far below it.
MAX_SCHEMA_DEPTH = 100
# llguidance refuses schemas far smaller than this as too large for its grammar; the bound
# keeps its compiler's recursion within the stack it runs on (see _on_a_large_stack).
MAX_SCHEMA_BYTES = 1_000_000
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
        if len(schema) > MAX_SCHEMA_BYTES:
            raise SchemaError(
                f"json_schema is {len(schema):,} characters of JSON, more than "
                f"{MAX_SCHEMA_BYTES:,}; simplify it"
            )
        try:
            schema = json.loads(schema)
        except RecursionError:
            raise SchemaError(
                f"json_schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; move "
                "repeated parts into $defs and refer to them with $ref"
            ) from None
        except ValueError as exc:  # not JSON, or a number Python will not read (5,000 digits)
            raise SchemaError(f"json_schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, Mapping):
        raise SchemaError(
            f"json_schema must be a JSON Schema object (a dict), got {type(schema).__name__}; "
            "for a pydantic or attrs class pass PydanticParser(cls).json_schema / "
            "AttrsParser(cls).json_schema"
        )
    schema = dict(schema)
    check_schema(schema)
    return schema


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``SchemaError`` for a schema that cannot constrain generation, before any model.

    The schema must be JSON data (str keys, finite numbers), at most ``MAX_SCHEMA_DEPTH``
    deep and ``MAX_SCHEMA_BYTES`` long as JSON, and admit at least one finite value: a
    schema whose every value contains itself (``{"$ref": "#"}``, an object that requires
    itself) would otherwise constrain generation to a value that never ends. A schema that
    passed is remembered (by its JSON text), so a repeated request pays one ``json.dumps``.
    """
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise SchemaError(
            f"json_schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; move repeated "
            "parts into $defs and refer to them with $ref"
        ) from None
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            f"json_schema must be JSON data (str keys, finite numbers, lists, dicts): {exc}"
        ) from None
    with _checked_lock:
        if key in _checked:
            _checked.move_to_end(key)
            return
    if len(key) > MAX_SCHEMA_BYTES:
        raise SchemaError(
            f"json_schema is {len(key)} bytes as JSON, more than {MAX_SCHEMA_BYTES}; simplify it"
        )
    _check_depth(schema)
    if not _admits_finite_value(schema):
        raise SchemaError(
            "this JSON Schema admits no finite value: every value it allows contains itself "
            "again (e.g. {'$ref': '#'}, or an object whose required property refers back to "
            "the object); give the recursion a way to end (make that property optional, "
            "allow null, or allow an empty array)"
        )
    with _checked_lock:
        _checked[key] = None
        if len(_checked) > _CHECKED_SCHEMAS:
            _checked.popitem(last=False)


_checked: OrderedDict[str, None] = OrderedDict()
_checked_lock = threading.Lock()
_CHECKED_SCHEMAS = 256


def _check_depth(schema: Mapping[str, Any]) -> None:
    """At most ``MAX_SCHEMA_DEPTH`` levels of containers; walked without recursion."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(
                f"json_schema is nested more than {MAX_SCHEMA_DEPTH} levels deep; move "
                "repeated parts into $defs and refer to them with $ref"
            )
        values = node.values() if isinstance(node, Mapping) else node
        for value in values:
            if isinstance(value, Mapping | list | tuple):
                stack.append((value, depth + 1))


_UNKNOWN = object()


def _resolve(root: Mapping[str, Any], reference: str) -> Any:
    """The node a local ``$ref`` ("#", "#/$defs/x") points to, or ``_UNKNOWN``."""
    if reference == "#":
        return root
    if not reference.startswith("#/"):
        return _UNKNOWN  # an anchor or another document: llguidance decides
    node: Any = root
    for part in reference[2:].split("/"):
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.isascii()
            and part.isdigit()
            and len(part) < 10
            and int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            return _UNKNOWN
    return node


def _admits_finite_value(root: Mapping[str, Any]) -> bool:
    """Whether the schema allows some finite JSON value (a least fixed point over ``$ref``).

    Only recursion is judged here: a keyword this does not model counts as satisfiable
    (llguidance reports contradictions itself, at compile time).
    """
    finite: dict[str, bool] = {}  # local $ref -> known to allow a finite value
    pending: deque[str] = deque()  # references to judge (again)

    def allows(node: Any, blocked_by: set[str]) -> bool:
        """Judged with what is known now; the references that made it False go in
        ``blocked_by`` (when one of them is proved finite, the answer may change). Every
        part is judged, with no short cut, so every reference in it is met now."""
        if isinstance(node, bool):
            return node
        if not isinstance(node, Mapping):
            return True
        reference = node.get("$ref")
        if isinstance(reference, str) and _resolve(root, reference) is not _UNKNOWN:
            if reference not in finite:
                finite[reference] = False
                pending.append(reference)
            if not finite[reference]:
                blocked_by.add(reference)
                return False
        all_of = node.get("allOf")
        if isinstance(all_of, list) and not all([allows(sub, blocked_by) for sub in all_of]):
            return False
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if (
                isinstance(options, list)
                and options
                and not any([allows(sub, blocked_by) for sub in options])
            ):
                return False
        if "const" in node or "enum" in node:
            return True  # literal values
        types = node.get("type")
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list):  # no type: any JSON type will do (a null, say)
            return True
        return any([type_allows(kind, node, blocked_by) for kind in types])

    def type_allows(kind: Any, node: Mapping[str, Any], blocked_by: set[str]) -> bool:
        if kind == "object":
            properties = node.get("properties")
            properties = properties if isinstance(properties, Mapping) else {}
            extra = node.get("additionalProperties", True)
            required = node.get("required")
            names = required if isinstance(required, list) else []
            return all(
                [
                    allows(properties.get(name, extra), blocked_by)
                    if isinstance(name, str)
                    else True
                    for name in names
                ]
            )
        if kind == "array":
            least = node.get("minItems", 0)
            if isinstance(least, bool) or not isinstance(least, int) or least <= 0:
                return True
            prefix = node.get("prefixItems")
            items = node.get("items", True)
            if isinstance(items, list):  # draft 4-7 tuple form
                prefix, items = items, node.get("additionalItems", True)
            prefix = prefix if isinstance(prefix, list) else []
            fixed = all([allows(sub, blocked_by) for sub in prefix[:least]])
            rest = least <= len(prefix) or allows(items, blocked_by)
            return fixed and rest
        return True  # strings, numbers, booleans, null: constraints are llguidance's

    # Each reference is judged when it is met, and judged again only when a reference its
    # answer waited on is proved finite: linear in the schema for a chain of $defs (judging
    # every reference every round took time quadratic in the chain).
    waiting: dict[str, set[str]] = {}  # reference -> references whose answer waits on it
    allows(root, set())
    while pending:
        reference = pending.popleft()
        if finite[reference]:
            continue
        blocked_by: set[str] = set()
        if allows(_resolve(root, reference), blocked_by):
            finite[reference] = True
            pending.extend(waiting.pop(reference, ()))
        else:
            for blocker in blocked_by:
                waiting.setdefault(blocker, set()).add(reference)
    return allows(root, set())


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


def _schema_of_response_format(value: Any) -> Any:
    if not isinstance(value, Mapping) or value.get("type") not in (
        "json_object",
        "json_schema",
        "text",
    ):
        raise ConfigurationError(
            "response_format must be {'type': 'json_object'} (any JSON object), "
            "{'type': 'json_object', 'schema': {...}} or "
            "{'type': 'json_schema', 'json_schema': {'schema': {...}}}; got " + shown(value)
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
