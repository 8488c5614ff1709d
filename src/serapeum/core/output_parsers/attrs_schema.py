"""JSON Schema for attrs classes, shaped like pydantic's ``model_json_schema()``.

The schema is what the model is told to produce (and what a grammar can be built from), so it
names only what ``AttrsParser`` can structure back: an unsupported field type is an error here,
not a surprise at parse time.
"""

from __future__ import annotations

import collections.abc as abc
import datetime as dt
import enum
import inspect
import math
import types
import typing
from typing import Any

import attrs

__all__ = ["attrs_json_schema"]

_NONE_TYPE = type(None)
_SEQUENCES: frozenset[Any] = frozenset({list, abc.Sequence, abc.MutableSequence})
_SETS: frozenset[Any] = frozenset({set, frozenset, abc.Set, abc.MutableSet})
_MAPPINGS: frozenset[Any] = frozenset({dict, abc.Mapping, abc.MutableMapping})
_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    _NONE_TYPE: {"type": "null"},
    # datetime before date does not matter: the lookup is by identity, not issubclass.
    dt.datetime: {"type": "string", "format": "date-time"},
    dt.date: {"type": "string", "format": "date"},
    dt.time: {"type": "string", "format": "time"},
}
_FACTORY: type = type(attrs.Factory(list))  # attrs types Factory as a function, not a class
_NOT_JSON = object()  # sentinel: a default value that has no plain JSON form


class _UnsupportedType(Exception):
    """Raised deep in a field's type; the field level turns it into a ``TypeError`` with context."""

    def __init__(self, tp: Any) -> None:
        super().__init__(tp)
        self.tp = tp


def attrs_json_schema(cls: type) -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of the attrs class ``cls``.

    The top-level object is inline; nested attrs classes and enums go into ``"$defs"`` and are
    referenced with ``{"$ref": "#/$defs/Name"}``, which also makes recursive classes finite.
    Raises ``TypeError`` if ``cls`` is not an attrs class or a field type has no JSON form.
    """
    if not (isinstance(cls, type) and attrs.has(cls)):
        raise TypeError(f"attrs_json_schema needs an attrs class, got {cls!r}")
    builder = _SchemaBuilder()
    schema = builder.object_schema(cls)
    if builder.defs:
        schema["$defs"] = dict(sorted(builder.defs.items()))
    return schema


class _SchemaBuilder:
    """Walks the types once, collecting named definitions so each class is written once."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self._names: dict[type, str] = {}

    def object_schema(self, cls: type) -> dict[str, Any]:
        """The inline object schema of one attrs class."""
        hints = _type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if not field.init:  # never read from the input, so not part of the contract
                continue
            properties[field.name] = self._field_schema(cls, field, _field_type(field, hints))
            if field.default is attrs.NOTHING:
                required.append(field.name)
        schema: dict[str, Any] = {"title": cls.__name__}
        description = _first_doc_line(cls)
        if description:
            schema["description"] = description
        schema.update(
            type="object",
            properties=properties,
            required=required,
            additionalProperties=False,
        )
        return schema

    def _field_schema(self, cls: type, field: attrs.Attribute[Any], hint: Any) -> dict[str, Any]:
        """The property schema of one field: its type plus description and default."""
        try:
            schema = dict(self.type_schema(hint))
        except _UnsupportedType as exc:
            raise TypeError(
                f"cannot build a JSON Schema for {cls.__qualname__}.{field.name}: "
                f"unsupported type {_type_name(exc.tp)} (field type {_type_name(hint)})"
            ) from None
        if not schema:
            # ``Any`` stays exactly ``{}``: llama-cpp-python's grammar builder rejects a schema
            # with annotation keys but no type, and they say little about "anything" anyway.
            return schema
        description = field.metadata.get("description")
        if isinstance(description, str) and description:
            schema["description"] = description
        # Extra keywords, e.g. ``attrs.field(metadata={"json_schema": {"maxItems": 3}})``:
        # bounds a small model needs (constrained decoding enforces them; parsing does not).
        extra = field.metadata.get("json_schema")
        if isinstance(extra, abc.Mapping):
            schema.update(extra)
        if field.default is not attrs.NOTHING and not isinstance(field.default, _FACTORY):
            default = _plain_json(field.default)
            if default is not _NOT_JSON:
                schema["default"] = default
        return schema

    def type_schema(self, tp: Any) -> dict[str, Any]:
        """The schema of one type (recursive); ``_UnsupportedType`` when it has no JSON form."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:  # first: its metadata may be unhashable
            return self.type_schema(args[0])
        if origin is typing.Union or origin is types.UnionType:
            return self._union_schema(args)
        if origin is typing.Literal:
            return _literal_schema(tp, args)
        if origin is not None:
            return self._container_schema(tp, origin, args)
        return self._plain_type_schema(tp)

    def _plain_type_schema(self, tp: Any) -> dict[str, Any]:
        """A type without parameters: a scalar, an enum, an attrs class or a bare container."""
        if tp is Any:
            return {}
        if tp is None:
            tp = _NONE_TYPE
        supertype = getattr(tp, "__supertype__", None)  # typing.NewType
        if supertype is not None:
            return self.type_schema(supertype)
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._ref(tp, _enum_schema)
        if isinstance(tp, type) and attrs.has(tp):
            return self._ref(tp, self.object_schema)
        return self._container_schema(tp, None, ())

    def _union_schema(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """``anyOf`` of the members; ``Optional[X]`` is the same with ``{"type": "null"}``."""
        return {"anyOf": [self.type_schema(arg) for arg in args]}

    def _container_schema(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        """Arrays (lists, sequences, tuples, sets) and string-keyed objects."""
        kind = origin if origin is not None else tp
        if kind in _SEQUENCES:
            return self._array_schema(args)
        if kind in _SETS:
            return {**self._array_schema(args), "uniqueItems": True}
        if kind is tuple:
            return self._tuple_schema(tp, args)
        if kind in _MAPPINGS:
            if not args:
                return {"type": "object"}
            key, value = args
            if key is not str and key is not Any:  # JSON object keys are always strings
                raise _UnsupportedType(tp)
            return {"type": "object", "additionalProperties": self.type_schema(value)}
        raise _UnsupportedType(tp)

    def _array_schema(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """A homogeneous array; a bare ``list`` has untyped items."""
        if not args:
            return {"type": "array"}
        return {"type": "array", "items": self.type_schema(args[0])}

    def _tuple_schema(self, tp: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        """``tuple[X, ...]`` is an array; ``tuple[X, Y]`` a fixed-length one with prefixItems."""
        # Bare tuple (either spelling) is any length, any items; the check is at run time, so
        # typing.Tuple is the object to compare with, not an annotation.
        if tp is tuple or tp is typing.Tuple:  # noqa: UP006
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return self._array_schema(args[:1])
        if not args:  # tuple[()]: get_args cannot tell it from bare tuple, so tp decided above
            return {"type": "array", "maxItems": 0}
        return {
            "type": "array",
            "prefixItems": [self.type_schema(arg) for arg in args],
            "minItems": len(args),
            "maxItems": len(args),
        }

    def _ref(self, cls: type, build: typing.Callable[[type], dict[str, Any]]) -> dict[str, Any]:
        """Reference ``cls`` in ``$defs``, building it on first use.

        The name is reserved before the body is built, so a class that refers to itself (or a
        cycle of classes) meets the reference and stops instead of recursing forever.
        """
        name = self._names.get(cls)
        if name is None:
            name = self._unique_name(cls)
            self._names[cls] = name
            self.defs[name] = {}
            self.defs[name] = build(cls)
        return {"$ref": f"#/$defs/{name}"}

    def _unique_name(self, cls: type) -> str:
        """``cls.__name__``, numbered when two different classes share a name."""
        taken = set(self._names.values())
        name, number = cls.__name__, 2
        while name in taken:
            name, number = f"{cls.__name__}{number}", number + 1
        return name


def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations (string ones too, as with ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {exc}") from exc


def _field_type(field: attrs.Attribute[Any], hints: dict[str, Any]) -> Any:
    """The annotation, else ``attr.ib(type=...)`` (``make_class`` leaves no annotation), else Any."""
    if field.name in hints:
        return hints[field.name]
    if isinstance(field.type, str):  # attr.ib(type="Name"): no annotation to resolve it from
        raise TypeError(f"cannot resolve the type {field.type!r} of field {field.name}")
    return Any if field.type is None else field.type


def _first_doc_line(cls: type) -> str:
    """The first line of the class's own docstring (inherited or generated ones are ignored)."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str):
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    return lines[0].strip() if lines else ""


def _enum_schema(cls: type) -> dict[str, Any]:
    """An enum's values (not names: values are what the parser accepts), with a title."""
    members = list(typing.cast("type[enum.Enum]", cls))
    values = [_plain_json(member.value) for member in members]
    if any(value is _NOT_JSON for value in values):
        raise _UnsupportedType(cls)
    schema: dict[str, Any] = {"title": cls.__name__}
    description = _first_doc_line(cls)
    if description:
        schema["description"] = description
    schema["enum"] = values
    schema.update(_common_json_type(values))
    return schema


def _literal_schema(tp: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    """``const`` for a single value, ``enum`` for several; enum members stand for their value."""
    values = [_plain_json(arg.value if isinstance(arg, enum.Enum) else arg) for arg in args]
    if any(value is _NOT_JSON for value in values):
        raise _UnsupportedType(tp)
    schema: dict[str, Any] = {"const": values[0]} if len(values) == 1 else {"enum": values}
    schema.update(_common_json_type(values))
    return schema


def _common_json_type(values: list[Any]) -> dict[str, Any]:
    """``{"type": ...}`` when all values share one JSON type, else nothing (as pydantic does)."""
    kinds = {_json_kind(value) for value in values}
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind in {"string", "integer", "number", "boolean", "null"}:
            return {"type": kind}
    return {}


def _json_kind(value: Any) -> str:
    """The JSON Schema type name of a plain JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _plain_json(value: Any) -> Any:
    """``value`` as plain JSON (enum members become their value), or ``_NOT_JSON``."""
    if isinstance(value, enum.Enum):
        return _plain_json(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_JSON
    if isinstance(value, list | tuple):
        items = [_plain_json(item) for item in value]
        return _NOT_JSON if any(item is _NOT_JSON for item in items) else items
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        mapping = {key: _plain_json(item) for key, item in value.items()}
        return _NOT_JSON if any(item is _NOT_JSON for item in mapping.values()) else mapping
    return _NOT_JSON


def _type_name(tp: Any) -> str:
    """A readable name for a type in messages: ``list[int] | None``, without module paths."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is None or tp is _NONE_TYPE:
        return "None"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None and args:
        names = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', repr(origin))}[{names}]"
    if isinstance(tp, type) and origin is None:
        return tp.__qualname__
    return repr(tp).replace("typing.", "")
