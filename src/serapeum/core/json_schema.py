"""Checking a JSON Schema before any backend compiles it: shared by every backend.

A schema that is too deep, too large, not JSON data, or admits no finite value (``{"$ref":
"#"}``) would crash or hang a grammar compiler (llguidance in this process, llama.cpp's
``json_schema_to_grammar`` on a server); it is refused here with a ``SchemaError``.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from serapeum.core.errors import ConfigurationError, SchemaError
from serapeum.core.shown import shown

__all__ = ["MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "check_schema", "schema_from_options"]

# A schema nested deeper than this is refused before anything recurses over it (json.dumps,
# grammar compilers and the checks here would otherwise end in RecursionError); real
# schemas put their nesting in $defs and stay far below it.
MAX_SCHEMA_DEPTH = 100
# llguidance refuses schemas far smaller than this as too large for its grammar; the bound
# keeps its compiler's recursion within the stack it runs on.
MAX_SCHEMA_BYTES = 1_000_000


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
