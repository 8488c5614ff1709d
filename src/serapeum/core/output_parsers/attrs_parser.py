"""Parse model output into an attrs class: PydanticParser's contract, without pydantic.

cattrs does the structuring, but its defaults are made for trusted data: it calls ``int("3")``
and ``str(3)``, accepts ``True`` for ``Literal[1]`` and turns the string ``"abc"`` into the list
``["a", "b", "c"]``. Model output is not trusted, so ``strict_json_converter`` replaces those
hooks with ones that accept exactly what the JSON Schema from ``attrs_json_schema`` describes.
"""

from __future__ import annotations

import collections.abc as abc
import copy
import datetime as dt
import enum
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import cattrs
from cattrs.errors import BaseValidationError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override
from cattrs.v import format_exception, transform_error

from serapeum.core.output_parsers.attrs_schema import (
    _field_type,
    _json_kind,
    _type_name,
    attrs_json_schema,
)
from serapeum.core.output_parsers.base import BaseOutputParser
from serapeum.core.output_parsers.errors import OutputParserError
from serapeum.core.output_parsers.json_text import extract_json
from serapeum.core.output_parsers.pydantic_parser import FORMAT_INSTRUCTIONS

__all__ = ["AttrsParser", "strict_json_converter"]

T = TypeVar("T")
_Hook = Callable[[Any, Any], Any]

_NONE_TYPE = type(None)
_LISTS: frozenset[Any] = frozenset({list, abc.Sequence, abc.MutableSequence})
_SETS: frozenset[Any] = frozenset({set, abc.Set, abc.MutableSet})
_MAPPINGS: frozenset[Any] = frozenset({dict, abc.Mapping, abc.MutableMapping})
_CONTAINERS: frozenset[Any] = _LISTS | _SETS | _MAPPINGS | {frozenset, tuple}
# Checked in order, so bool (a subclass of int) is matched before int.
_SCALARS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
)


class AttrsParser(BaseOutputParser[T], Generic[T]):
    """Output parser for an attrs class, the attrs twin of ``PydanticParser``.

    ``format`` appends the same instructions with the class's JSON Schema; ``parse`` finds the
    JSON in the model's text and structures it strictly (a string is not an int, ``3`` is not a
    string). Keys the class does not have are ignored rather than rejected: models like to add
    a remark or an id, and dropping it loses nothing the caller asked for. The schema still says
    ``"additionalProperties": false``, so a grammar built from it never produces them.
    """

    def __init__(self, output_cls: type[T]) -> None:
        if not _is_attrs_class(output_cls):
            raise TypeError(f"AttrsParser needs an attrs class, got {output_cls!r}")
        self.output_cls: type[T] = output_cls
        # Built now so that a field type without a JSON form fails here, not at the first call.
        self._schema = attrs_json_schema(output_cls)
        self.converter = strict_json_converter()

    @property
    def json_schema(self) -> dict[str, Any]:
        """The cached schema; a copy, so a caller that edits it cannot change the next prompt."""
        return copy.deepcopy(self._schema)

    def format(self, prompt: str) -> str:
        schema = json.dumps(self.json_schema)
        return prompt + FORMAT_INSTRUCTIONS.format(schema=schema)

    def parse(self, text: str) -> T:
        data = extract_json(text)
        name = self.output_cls.__name__
        try:
            return self.converter.structure(data, self.output_cls)
        except BaseValidationError as exc:
            details = "; ".join(transform_error(exc, "$", _format_error))
            raise OutputParserError(
                f"output does not match {name}: {details}", raw_text=text
            ) from exc
        except (ValueError, TypeError, KeyError) as exc:  # top-level shape, attrs validators
            raise OutputParserError(f"output does not match {name}: {exc}", raw_text=text) from exc


def strict_json_converter() -> cattrs.Converter:
    """A ``cattrs.Converter`` that structures decoded JSON strictly and unstructures to JSON.

    Structuring accepts a value only if it has the JSON type the schema names (an integral
    number is an integer, as in JSON Schema; an int is fine for a float; a bool is never a
    number). Unstructuring writes dates as ISO strings and sets as lists, so
    ``json.dumps(converter.unstructure(obj))`` round-trips through ``AttrsParser.parse``.
    """
    converter = cattrs.Converter(unstruct_collection_overrides={abc.Set: list})
    # Exact classes go through singledispatch, which cattrs consults before predicate hooks, so
    # these replace its lenient str/int/float hooks; subclasses (IntEnum, StrEnum) land here too.
    for cls in (bool, int, float, str, enum.Enum, dt.date, dt.datetime, dt.time):
        converter.register_structure_hook(cls, _structure_scalar)
    # Predicate hooks registered later take precedence over cattrs' own.
    converter.register_structure_hook_func(_is_none_type, _structure_none)
    converter.register_structure_hook_func(_is_literal, _structure_literal)
    converter.register_structure_hook_func(_is_annotated, _unwrap_annotated(converter))
    converter.register_structure_hook_func(_is_union, _union_hook(converter))
    converter.register_structure_hook_func(_is_container, _container_hook(converter))
    converter.register_structure_hook_factory(attrs.has, _attrs_hook_factory(converter))
    converter.register_unstructure_hook(dt.date, _isoformat)  # datetime is a date subclass
    converter.register_unstructure_hook(dt.time, _isoformat)
    return converter


def _is_attrs_class(obj: object) -> bool:
    """A plain bool, not ``attrs.has``'s type guard, which would narrow ``type[T]`` away."""
    return isinstance(obj, type) and attrs.has(obj)


class _JsonMismatch(ValueError):
    """A JSON value of the wrong type or value; the message is the whole explanation."""


def _format_error(exc: BaseException, tp: type | None) -> str:
    """Our own errors already say what was expected; cattrs' formatter handles the rest."""
    if isinstance(exc, _JsonMismatch):
        return str(exc)
    return format_exception(exc, tp)


def _explain(exc: BaseException) -> str:
    """One line for an error, for the message of a union none of whose members matched."""
    if isinstance(exc, BaseValidationError):
        return "; ".join(transform_error(exc, "$", _format_error))
    return _format_error(exc, None)


def _describe(value: Any) -> str:
    """``string 'abc'``: the JSON type and a short repr of the value that was rejected."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_json_kind(value)} {text}"


def _mismatch(expected: str, value: Any) -> _JsonMismatch:
    return _JsonMismatch(f"expected {expected}, got {_describe(value)}")


# Scalars: bool, int, float, str, enums, dates.


def _structure_scalar(value: Any, cls: type[Any]) -> Any:
    """Accept only a value of the right JSON type; never coerce one type into another."""
    if issubclass(cls, enum.Enum):
        return _structure_enum(value, cls)
    if issubclass(cls, dt.date | dt.time):
        return _structure_temporal(value, cls)
    construct: Callable[[Any], Any] = cls  # int(3.0) and float(3) are the only conversions
    for base, kind in _SCALARS:
        if issubclass(cls, base):
            if _json_kind(value) != kind and not _widens(value, kind):
                raise _mismatch(f"a JSON {kind}", value)
            return construct(value)
    raise _JsonMismatch(f"unsupported scalar type {cls.__qualname__}")  # pragma: no cover


def _widens(value: Any, kind: str) -> bool:
    """An int is a number, and an integral float (``3.0``) is an integer, as in JSON Schema."""
    if kind == "number":
        return _json_kind(value) == "integer"
    if kind == "integer":
        return isinstance(value, float) and value.is_integer()
    return False


def _structure_temporal(value: Any, cls: type) -> Any:
    """Dates and times arrive as ISO 8601 strings (what the schema's ``format`` asks for)."""
    kind = {dt.datetime: "date-time", dt.date: "date", dt.time: "time"}.get(cls, cls.__name__)
    if not isinstance(value, str):
        raise _mismatch(f"an ISO 8601 {kind} string", value)
    try:
        return cls.fromisoformat(value)  # type: ignore[attr-defined]
    except ValueError:
        raise _mismatch(f"an ISO 8601 {kind} string", value) from None


def _structure_enum(value: Any, cls: type) -> Any:
    """Match a member by value (the schema lists values), without ``True == 1`` surprises."""
    members = list(typing.cast("type[enum.Enum]", cls))
    for member in members:
        if _json_equal(member.value, value):
            return member
    values = ", ".join(repr(member.value) for member in members)
    raise _mismatch(f"one of {values} ({cls.__name__})", value)


def _json_equal(expected: Any, value: Any) -> bool:
    """Equal as JSON values: ``1 == 1.0``, but ``True`` is not ``1``."""
    return bool(expected == value) and isinstance(expected, bool) == isinstance(value, bool)


def _isoformat(value: dt.date | dt.time) -> str:
    return value.isoformat()


# Special forms: None, Literal, Annotated, unions.


def _is_none_type(tp: Any) -> bool:
    return tp is None or tp is _NONE_TYPE


def _structure_none(value: Any, _: Any) -> None:
    if value is not None:
        raise _mismatch("null", value)


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Literal


def _structure_literal(value: Any, tp: Any) -> Any:
    """Return the literal itself (an enum member stands for its value in the JSON)."""
    for option in typing.get_args(tp):
        expected = option.value if isinstance(option, enum.Enum) else option
        if _json_equal(expected, value):
            return option
    options = ", ".join(repr(option) for option in typing.get_args(tp))
    raise _mismatch(f"one of {options}", value)


def _is_annotated(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Annotated


def _unwrap_annotated(converter: cattrs.Converter) -> _Hook:
    def structure(value: Any, tp: Any) -> Any:
        return converter.structure(value, typing.get_args(tp)[0])

    return structure


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _union_hook(converter: cattrs.Converter) -> _Hook:
    """Try the members in turn; ``Optional[X]`` is the union ``X | None``.

    Members whose JSON type is exactly the value's are tried first (as pydantic's smart mode
    does), so ``3`` stays an int in ``float | int``. Otherwise the declared order decides, which
    for several attrs classes means the first one the object fits.
    """

    def structure(value: Any, tp: Any) -> Any:
        members = typing.get_args(tp)
        if value is None and _NONE_TYPE in members:
            return None
        candidates = [member for member in members if member is not _NONE_TYPE]
        candidates.sort(key=lambda member: _schema_kind(member) != _json_kind(value))
        failures = []
        for member in candidates:
            try:
                return converter.structure(value, member)
            except Exception as exc:  # any failure only means "not this member"
                failures.append(f"{_type_name(member)} ({_explain(exc)})")
        raise _JsonMismatch(f"expected {_type_name(tp)}, but: " + "; ".join(failures))

    return structure


def _schema_kind(tp: Any) -> str | None:
    """The JSON type a type is written as, when it is a single one (used to order union tries)."""
    for base, kind in _SCALARS:
        if tp is base:
            return kind
    if isinstance(tp, type) and attrs.has(tp):
        return "object"
    origin = typing.get_origin(tp) or tp
    if origin in _MAPPINGS:
        return "object"
    if origin in _CONTAINERS:
        return "array"
    return None


# Containers: JSON arrays and objects.


def _is_container(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is None:
        return isinstance(tp, type) and tp in _CONTAINERS
    return origin in _CONTAINERS


def _container_hook(converter: cattrs.Converter) -> _Hook:
    """Lists, sequences, tuples and sets from arrays only; mappings from objects only.

    Items are structured lazily through the converter, so a class that contains a list of
    itself never makes hook generation recurse.
    """

    def structure(value: Any, tp: Any) -> Any:
        origin = typing.get_origin(tp) or tp
        args = typing.get_args(tp)
        if origin in _MAPPINGS:
            return _structure_mapping(converter, value, tp, args)
        if not isinstance(value, list):
            raise _mismatch(f"a JSON array for {_type_name(tp)}", value)
        if origin is tuple:
            return tuple(_structure_items(converter, value, _tuple_item_types(tp, args, value), tp))
        items = _structure_items(converter, value, [args[0] if args else Any] * len(value), tp)
        if origin is frozenset:
            return frozenset(items)
        if origin in _SETS:
            return set(items)  # duplicates collapse, as with pydantic's set fields
        return items

    return structure


def _tuple_item_types(tp: Any, args: tuple[Any, ...], value: list[Any]) -> list[Any]:
    """The type of each item; a fixed-length tuple also needs exactly that many items."""
    if tp is tuple or tp is typing.Tuple:  # noqa: UP006 - bare tuple, compared at run time
        return [Any] * len(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * len(value)
    if len(value) != len(args):
        raise _mismatch(f"a JSON array of {len(args)} items for {_type_name(tp)}", value)
    return list(args)


def _structure_items(
    converter: cattrs.Converter, value: list[Any], item_types: list[Any], tp: Any
) -> list[Any]:
    """Structure every item, collecting all failures with their index (cattrs' error shape)."""
    items: list[Any] = []
    errors: list[Exception] = []
    for index, (item, item_type) in enumerate(zip(value, item_types, strict=True)):
        try:
            items.append(converter.structure(item, item_type))
        except Exception as exc:
            note = IterableValidationNote(f"Structuring {tp!r} @ index {index}", index, item_type)
            exc.add_note(note)
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
    return items


def _structure_mapping(
    converter: cattrs.Converter, value: Any, tp: Any, args: tuple[Any, ...]
) -> dict[Any, Any]:
    """A JSON object into a dict, structuring each value (keys are strings in JSON)."""
    if not isinstance(value, dict):
        raise _mismatch(f"a JSON object for {_type_name(tp)}", value)
    key_type, value_type = args if args else (Any, Any)
    result: dict[Any, Any] = {}
    errors: list[Exception] = []
    for key, item in value.items():
        try:
            result[converter.structure(key, key_type)] = converter.structure(item, value_type)
        except Exception as exc:
            exc.add_note(
                IterableValidationNote(f"Structuring {tp!r} @ key {key!r}", key, value_type)
            )
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
    return result


# attrs classes.


def _attrs_hook_factory(converter: cattrs.Converter) -> Callable[[Any], _Hook]:
    """cattrs' generated structuring function, behind a check that the value is an object.

    cattrs builds a class's hook by asking for its fields' hooks; a field typed directly as a
    class whose hook is being built gets a lazy hook instead, so cycles cannot recurse.
    """
    generating: set[type] = set()

    def factory(cls: type) -> _Hook:
        if cls in generating:
            return lambda value, _: converter.structure(value, cls)
        generating.add(cls)
        try:
            overrides = _unhashable_field_overrides(converter, cls)
            generated: _Hook = make_dict_structure_fn(cls, converter, **overrides)
        finally:
            generating.discard(cls)

        def structure(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(f"a JSON object for {cls.__name__}", value)
            return generated(value, cls)

        return structure

    return factory


def _unhashable_field_overrides(converter: cattrs.Converter, cls: type) -> dict[str, Any]:
    """Hooks for fields like ``Annotated[int, {"unit": "cm"}]``, which cattrs cannot look up.

    cattrs keys its hook tables by type, and such a type cannot be hashed; its metadata plays
    no part in structuring (nor in the schema), so those fields are structured as the type
    with every ``Annotated`` layer removed.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        hint = _field_type(field, hints)
        try:
            hash(hint)
        except TypeError:
            plain = _strip_annotated(hint)
            overrides[field.name] = override(struct_hook=_structure_as(converter, plain))
    return overrides


def _structure_as(converter: cattrs.Converter, tp: Any) -> _Hook:
    """A hook that structures into ``tp`` whatever type it is asked for."""

    def structure(value: Any, _: Any) -> Any:
        return converter.structure(value, tp)

    return structure


def _strip_annotated(tp: Any) -> Any:
    """``tp`` without ``Annotated`` wrappers, at any depth (``list[Annotated[int, ...]]`` too)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _strip_annotated(args[0])
    if origin is None or not args or origin is typing.Literal:
        return tp
    stripped = tuple(_strip_annotated(arg) for arg in args)
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[stripped]  # noqa: UP007 - built at run time from a tuple
    return types.GenericAlias(origin, stripped)
