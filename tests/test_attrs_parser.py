"""AttrsParser and attrs_json_schema: the attrs twin of PydanticParser (no model needed)."""

from __future__ import annotations

import collections.abc as abc
import datetime as dt
import enum
import json
import re
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import attrs
import pytest

from serapeum.core.output_parsers.attrs_parser import AttrsParser, strict_json_converter
from serapeum.core.output_parsers.attrs_schema import attrs_json_schema
from serapeum.core.output_parsers.errors import OutputParserError
from serapeum.core.output_parsers.pydantic_parser import FORMAT_INSTRUCTIONS

# Module-level classes: with ``from __future__ import annotations`` every annotation below is a
# string, so these also check that the schema and the converter resolve them.


class Status(enum.Enum):
    """Where an order is."""

    OPEN = "open"
    SHIPPED = "shipped"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.define
class Person:
    """A person the model extracts.

    The second paragraph is not part of the description.
    """

    name: str = attrs.field(metadata={"description": "Full name"})
    age: int
    height: float = 1.5
    active: bool = True
    nickname: str | None = None
    tags: list[str] = attrs.Factory(list)


@attrs.define
class Address:
    city: str
    zip_code: str | None = None


@attrs.define
class Item:
    sku: str
    quantity: int = 1
    price: float = 0.0


@attrs.define
class Order:
    """An order with its items."""

    id: int
    status: Status
    priority: Priority
    channel: Literal["web", "phone"]
    items: list[Item]
    counts: dict[str, int]
    created: dt.datetime
    ship_to: Address | None = attrs.field(default=None, metadata={"description": "Where to ship"})
    labels: frozenset[str] = frozenset()
    dims: tuple[float, float] = (0.0, 0.0)
    notes: tuple[str, ...] = ()
    due: dt.date | None = None
    kind: Literal["order"] = "order"


@attrs.define
class Node:
    name: str
    children: list[Node] = attrs.Factory(list)
    parent: Node | None = None


@attrs.define
class Employee:
    name: str
    team: Team | None = None


@attrs.define
class Team:
    members: list[Employee]
    lead: Employee | None = None


@attrs.define
class Cat:
    meows: int


@attrs.define
class Dog:
    barks: int


@attrs.define
class Pets:
    pet: Cat | Dog
    amount: float | int
    code: int | str
    answer: Literal[1, "yes"] | None = None


@attrs.define
class Extras:
    measure: Annotated[int, "a unit"]
    seen: set[int] = attrs.Factory(set)
    anything: Any = attrs.field(default=None, metadata={"description": "dropped"})
    computed: int = attrs.field(init=False, default=0)


@attrs.define
class Checked:
    size: int = attrs.field(validator=attrs.validators.gt(0))


PERSON_SCHEMA: dict[str, Any] = {
    "title": "Person",
    "description": "A person the model extracts.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Full name"},
        "age": {"type": "integer"},
        "height": {"type": "number", "default": 1.5},
        "active": {"type": "boolean", "default": True},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

ORDER_SCHEMA: dict[str, Any] = {
    "title": "Order",
    "description": "An order with its items.",
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "status": {"$ref": "#/$defs/Status"},
        "priority": {"$ref": "#/$defs/Priority"},
        "channel": {"enum": ["web", "phone"], "type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "created": {"type": "string", "format": "date-time"},
        "ship_to": {
            "anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}],
            "description": "Where to ship",
            "default": None,
        },
        "labels": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "dims": {
            "type": "array",
            "prefixItems": [{"type": "number"}, {"type": "number"}],
            "minItems": 2,
            "maxItems": 2,
            "default": [0.0, 0.0],
        },
        "notes": {"type": "array", "items": {"type": "string"}, "default": []},
        "due": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}], "default": None},
        "kind": {"const": "order", "type": "string", "default": "order"},
    },
    "required": ["id", "status", "priority", "channel", "items", "counts", "created"],
    "additionalProperties": False,
    "$defs": {
        "Address": {
            "title": "Address",
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip_code": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "Item": {
            "title": "Item",
            "type": "object",
            "properties": {
                "sku": {"type": "string"},
                "quantity": {"type": "integer", "default": 1},
                "price": {"type": "number", "default": 0.0},
            },
            "required": ["sku"],
            "additionalProperties": False,
        },
        "Priority": {"title": "Priority", "enum": [1, 2], "type": "integer"},
        "Status": {
            "title": "Status",
            "description": "Where an order is.",
            "enum": ["open", "shipped"],
            "type": "string",
        },
    },
}

NODE_OBJECT: dict[str, Any] = {
    "title": "Node",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
        "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}], "default": None},
    },
    "required": ["name"],
    "additionalProperties": False,
}

ORDER_JSON: dict[str, Any] = {
    "id": 7,
    "status": "shipped",
    "priority": 2,
    "channel": "web",
    "items": [{"sku": "A-1", "quantity": 2, "price": 9.5}, {"sku": "B-2"}],
    "counts": {"boxes": 3},
    "created": "2024-05-01T12:30:00+00:00",
    "ship_to": {"city": "Paris"},
    "labels": ["fragile"],
    "dims": [1.5, 2],
    "notes": ["leave at door"],
    "due": "2024-05-03",
}

ORDER = Order(
    id=7,
    status=Status.SHIPPED,
    priority=Priority.HIGH,
    channel="web",
    items=[Item("A-1", 2, 9.5), Item("B-2")],
    counts={"boxes": 3},
    created=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    ship_to=Address("Paris"),
    labels=frozenset({"fragile"}),
    dims=(1.5, 2.0),
    notes=("leave at door",),
    due=dt.date(2024, 5, 3),
)


@attrs.define
class Probe:
    """``x: None``, which ``make_class`` cannot say: its ``type=None`` means "no type"."""

    x: None


def probe(tp: Any) -> type:
    """A one-field attrs class ``Probe(x: tp)``, to try one type at a time."""
    if tp is None:
        return Probe
    return attrs.make_class("Probe", {"x": attrs.field(type=tp)})


def probe_schema(tp: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = attrs_json_schema(probe(tp))
    return schema["properties"]["x"], schema.get("$defs", {})


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


COLOR_DEF = {"Color": {"title": "Color", "enum": ["red", "green"], "type": "string"}}
USER_ID = typing.NewType("USER_ID", int)

# Legacy typing spellings are what is being tested here, hence built at run time.
LEGACY_LIST = typing.List[int]  # noqa: UP006
LEGACY_TUPLE = typing.Tuple[int, ...]  # noqa: UP006
LEGACY_DICT = typing.Dict[str, int]  # noqa: UP006
LEGACY_OPTIONAL = typing.Optional[int]  # noqa: UP045
LEGACY_UNION = typing.Union[int, str]  # noqa: UP007

TYPE_SCHEMAS: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    (str, {"type": "string"}, {}),
    (int, {"type": "integer"}, {}),
    (float, {"type": "number"}, {}),
    (bool, {"type": "boolean"}, {}),
    (None, {"type": "null"}, {}),
    (type(None), {"type": "null"}, {}),
    (Any, {}, {}),
    (dt.datetime, {"type": "string", "format": "date-time"}, {}),
    (dt.date, {"type": "string", "format": "date"}, {}),
    (dt.time, {"type": "string", "format": "time"}, {}),
    (list[int], {"type": "array", "items": {"type": "integer"}}, {}),
    (LEGACY_LIST, {"type": "array", "items": {"type": "integer"}}, {}),
    (Sequence[int], {"type": "array", "items": {"type": "integer"}}, {}),
    (abc.MutableSequence[str], {"type": "array", "items": {"type": "string"}}, {}),
    (list, {"type": "array"}, {}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}, {}),
    (LEGACY_TUPLE, {"type": "array", "items": {"type": "integer"}}, {}),
    (tuple, {"type": "array"}, {}),
    (tuple[()], {"type": "array", "maxItems": 0}, {}),
    (
        tuple[int, str],
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        },
        {},
    ),
    (set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}, {}),
    (frozenset[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, {}),
    (abc.Set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, {}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}, {}),
    (LEGACY_DICT, {"type": "object", "additionalProperties": {"type": "integer"}}, {}),
    (abc.Mapping[str, Any], {"type": "object", "additionalProperties": {}}, {}),
    (dict, {"type": "object"}, {}),
    (LEGACY_OPTIONAL, {"anyOf": [{"type": "integer"}, {"type": "null"}]}, {}),
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}, {}),
    (LEGACY_UNION, {"anyOf": [{"type": "integer"}, {"type": "string"}]}, {}),
    (Literal["a"], {"const": "a", "type": "string"}, {}),
    (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}, {}),
    (Literal[1, "a"], {"enum": [1, "a"]}, {}),
    (Literal[None], {"const": None, "type": "null"}, {}),
    (Literal[Color.RED], {"const": "red", "type": "string"}, {}),
    (Annotated[int, "meta", {"unhashable": []}], {"type": "integer"}, {}),
    (USER_ID, {"type": "integer"}, {}),
    (Color, {"$ref": "#/$defs/Color"}, COLOR_DEF),
    (
        list[Color | None],
        {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/Color"}, {"type": "null"}]}},
        COLOR_DEF,
    ),
    (
        Cat,
        {"$ref": "#/$defs/Cat"},
        {
            "Cat": {
                "title": "Cat",
                "type": "object",
                "properties": {"meows": {"type": "integer"}},
                "required": ["meows"],
                "additionalProperties": False,
            }
        },
    ),
]


# Schema.


@pytest.mark.parametrize(("tp", "expected", "defs"), TYPE_SCHEMAS, ids=repr)
def test_schema_of_each_supported_type(tp: Any, expected: dict[str, Any], defs: dict) -> None:
    assert probe_schema(tp) == (expected, defs)


def test_schema_of_flat_class_with_defaults_and_descriptions() -> None:
    assert attrs_json_schema(Person) == PERSON_SCHEMA


def test_schema_of_nested_class_puts_classes_and_enums_in_defs() -> None:
    assert attrs_json_schema(Order) == ORDER_SCHEMA


def test_schema_of_self_referencing_class_is_finite() -> None:
    # The top level stays inline; the recursive references need a definition to point at.
    assert attrs_json_schema(Node) == {**NODE_OBJECT, "$defs": {"Node": NODE_OBJECT}}


def test_schema_of_mutually_recursive_classes() -> None:
    schema = attrs_json_schema(Team)
    assert sorted(schema["$defs"]) == ["Employee", "Team"]
    assert schema["properties"]["members"] == {
        "type": "array",
        "items": {"$ref": "#/$defs/Employee"},
    }
    assert schema["$defs"]["Employee"]["properties"]["team"]["anyOf"][0] == {"$ref": "#/$defs/Team"}


def test_schema_unwraps_annotated_and_leaves_out_init_false_fields() -> None:
    schema = attrs_json_schema(Extras)
    assert schema["properties"] == {
        "measure": {"type": "integer"},
        "seen": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
        # Any stays {} despite its default and description: llama-cpp-python cannot build a
        # grammar from a schema that has keys but no type.
        "anything": {},
    }
    assert schema["required"] == ["measure"]
    assert "description" not in schema  # no docstring, no description


def test_schema_defaults_only_when_plain_json() -> None:
    cls = attrs.make_class(
        "Defaults",
        {
            "color": attrs.field(type=Color, default=Color.GREEN),
            "pair": attrs.field(type=tuple[int, int], default=(1, 2)),
            "mapping": attrs.field(type=dict[str, int], default=attrs.Factory(dict)),
            "when": attrs.field(type=dt.date, default=dt.date(2024, 1, 1)),
            "ratio": attrs.field(type=float, default=float("nan")),
        },
    )
    properties = attrs_json_schema(cls)["properties"]
    assert properties["color"] == {"$ref": "#/$defs/Color", "default": "green"}
    assert properties["pair"]["default"] == [1, 2]
    for name in ("mapping", "when", "ratio"):  # a factory or a value with no JSON form
        assert "default" not in properties[name]
    assert attrs_json_schema(cls)["required"] == []


def test_two_classes_with_one_name_get_two_definitions() -> None:
    first = attrs.make_class("Item", {"a": attrs.field(type=int)})
    second = attrs.make_class("Item", {"b": attrs.field(type=str)})
    holder = attrs.make_class(
        "Holder", {"x": attrs.field(type=first), "y": attrs.field(type=second)}
    )
    schema = attrs_json_schema(holder)
    assert schema["properties"] == {"x": {"$ref": "#/$defs/Item"}, "y": {"$ref": "#/$defs/Item2"}}
    assert schema["$defs"]["Item2"]["title"] == "Item"
    assert list(schema["$defs"]["Item2"]["properties"]) == ["b"]


class Opaque:
    """Not an attrs class, so it has no schema."""


class Weird(enum.Enum):
    THING = object()


@pytest.mark.parametrize(
    ("tp", "shown"),
    [
        (bytes, "bytes"),
        (dict[int, str], "dict[int, str]"),
        (Opaque, "Opaque"),
        (list[complex], "complex"),
        (Literal[b"raw"], "Literal[b'raw']"),
        (Weird, "Weird"),
        (typing.TypeVar("T"), "~T"),
    ],
    ids=repr,
)
def test_unsupported_field_type_raises_type_error_naming_class_field_and_type(
    tp: Any, shown: str
) -> None:
    with pytest.raises(TypeError, match=r"Probe\.x") as info:
        attrs_json_schema(probe(tp))
    assert shown in str(info.value)
    with pytest.raises(TypeError, match=r"Probe\.x"):
        AttrsParser(probe(tp))  # the parser fails when built, not at its first parse


def test_unresolvable_string_annotation_raises_type_error() -> None:
    @attrs.define
    class Local:
        inner: Missing  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="cannot resolve"):
        attrs_json_schema(Local)


@pytest.mark.parametrize("not_attrs", [dict, Opaque, Person(name="Ada", age=3), "Person", None])
def test_non_attrs_class_raises_type_error(not_attrs: Any) -> None:
    with pytest.raises(TypeError, match="attrs class"):
        attrs_json_schema(not_attrs)
    with pytest.raises(TypeError, match="AttrsParser needs an attrs class"):
        AttrsParser(not_attrs)


# Parser: format and schema.


def test_format_is_pydantic_parsers_format() -> None:
    parser = AttrsParser(Order)
    expected = "Extract it." + FORMAT_INSTRUCTIONS.format(schema=json.dumps(ORDER_SCHEMA))
    assert parser.format("Extract it.") == expected


def test_json_schema_is_cached_and_callers_cannot_change_it() -> None:
    parser = AttrsParser(Person)
    assert parser.output_cls is Person
    assert parser.json_schema == PERSON_SCHEMA
    parser.json_schema["properties"].clear()
    assert parser.json_schema == PERSON_SCHEMA


# Parser: parsing.


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        'Sure! Here is the JSON:\n```json\n{"name": "Ada", "age": 36}\n```\nAnything else?',
        'Sure! ```\n{"name": "Ada", "age": 36}\n```',
        'The person is {"name": "Ada", "age": 36} as requested.',
    ],
)
def test_parse_finds_json_in_noisy_text(text: str) -> None:
    assert AttrsParser(Person).parse(text) == Person(name="Ada", age=36)


def test_parse_nested_class_with_every_kind_of_field() -> None:
    text = "Here you go:\n```json\n" + json.dumps(ORDER_JSON, indent=2) + "\n```"
    order = AttrsParser(Order).parse(text)
    assert order == ORDER
    assert isinstance(order.dims[1], float)
    assert order.ship_to == Address("Paris", None)
    assert order.items[1] == Item("B-2", 1, 0.0)


def test_round_trip_of_nested_instance_through_json() -> None:
    parser = AttrsParser(Order)
    text = json.dumps(parser.converter.unstructure(ORDER))
    assert parser.parse(text) == ORDER
    other = attrs.evolve(ORDER, ship_to=None, due=None, labels=frozenset({"a", "b"}))
    assert parser.parse(json.dumps(strict_json_converter().unstructure(other))) == other


def test_parse_self_referencing_and_mutually_recursive_classes() -> None:
    text = (
        '{"name": "root", "children": [{"name": "a", "children": [{"name": "b"}]}, {"name": "c"}]}'
    )
    root = AttrsParser(Node).parse(text)
    assert root == Node("root", [Node("a", [Node("b")]), Node("c")])
    team = AttrsParser(Team).parse('{"members": [{"name": "x", "team": {"members": []}}]}')
    assert team == Team([Employee("x", Team([]))])
    with pytest.raises(OutputParserError, match=r"\$\.children\[0\]\.children\[0\]\.name"):
        AttrsParser(Node).parse('{"name": "r", "children": [{"name": "a", "children": [{}]}]}')


def test_parse_ignores_extra_keys() -> None:
    data = {**ORDER_JSON, "comment": "added by the model", "ship_to": {"city": "Paris", "x": 1}}
    assert AttrsParser(Order).parse(json.dumps(data)) == ORDER


def test_parse_unions_prefer_the_exact_json_type() -> None:
    parser = AttrsParser(Pets)
    pets = parser.parse('{"pet": {"barks": 2}, "amount": 3, "code": "3", "answer": "yes"}')
    assert pets == Pets(pet=Dog(2), amount=3, code="3", answer="yes")
    assert type(pets.amount) is int  # not 3.0: int is the exact match in float | int
    pets = parser.parse('{"pet": {"meows": 1}, "amount": 2.5, "code": 4, "answer": 1}')
    assert pets == Pets(pet=Cat(1), amount=2.5, code=4, answer=1)


def test_parse_json_widening_that_json_schema_allows() -> None:
    parser = AttrsParser(Person)
    person = parser.parse('{"name": "Ada", "age": 36.0, "height": 2}')
    assert person.age == 36 and type(person.age) is int  # an integral number is an integer
    assert person.height == 2.0 and type(person.height) is float  # an int is a number
    extras = AttrsParser(Extras).parse('{"measure": 3, "seen": [1, 1, 2], "anything": [null]}')
    assert extras == Extras(measure=3, seen={1, 2}, anything=[None])  # duplicates collapse


def _order_with(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(ORDER_JSON))
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return data


_DELETE = object()

REJECTIONS: list[tuple[str, dict[str, Any] | list[Any], str]] = [
    ("missing required field", _order_with(id=_DELETE), r"required field missing @ \$\.id"),
    ("missing nested field", _order_with(items__0__sku=_DELETE), r"@ \$\.items\[0\]\.sku"),
    ("numeric string for int", _order_with(id="7"), r"expected a JSON integer, got string '7'"),
    ("fractional number for int", _order_with(id=7.5), r"expected a JSON integer"),
    ("bool for int", _order_with(id=True), r"got boolean True @ \$\.id"),
    (
        "number for str",
        _order_with(items__0__sku=12),
        r"expected a JSON string, got integer 12 @ \$\.items\[0\]\.sku",
    ),
    ("string for float", _order_with(items__0__price="9.5"), r"expected a JSON number"),
    ("bool for float", _order_with(items__0__price=False), r"expected a JSON number"),
    ("unknown literal", _order_with(channel="email"), r"one of 'web', 'phone'"),
    ("wrong const literal", _order_with(kind="refund"), r"\$\.kind"),
    ("invalid enum value", _order_with(status="lost"), r"one of 'open', 'shipped'"),
    ("enum name not value", _order_with(status="OPEN"), r"\$\.status"),
    ("bool for int enum", _order_with(priority=True), r"\$\.priority"),
    ("string for int enum", _order_with(priority="2"), r"\$\.priority"),
    ("null for required", _order_with(created=None), r"\$\.created"),
    ("bad datetime", _order_with(created="yesterday"), r"ISO 8601 date-time"),
    ("datetime for date", _order_with(due="2024-05-03T10:00:00"), r"\$\.due"),
    ("string for list", _order_with(items="A-1"), r"expected a JSON array"),
    ("object for list", _order_with(notes={"a": 1}), r"\$\.notes"),
    ("wrong item type", _order_with(notes=["ok", 3]), r"\$\.notes\[1\]"),
    ("string for nested class", _order_with(ship_to="Paris"), r"JSON object for Address"),
    ("list for dict", _order_with(counts=[["boxes", 3]]), r"JSON object for dict"),
    ("wrong dict value", _order_with(counts={"boxes": "3"}), r"\$\.counts\['boxes'\]"),
    ("short fixed tuple", _order_with(dims=[1.5]), r"array of 2 items"),
    ("long fixed tuple", _order_with(dims=[1, 2, 3]), r"array of 2 items"),
    ("top level is an array", [ORDER_JSON], r"JSON object for Order"),
]


@pytest.mark.parametrize(("case", "data", "message"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_parse_rejects_wrong_shapes_and_keeps_raw_text(case: str, data: Any, message: str) -> None:
    text = "Here is the order:\n" + json.dumps(data)
    with pytest.raises(OutputParserError, match="output does not match Order") as info:
        AttrsParser(Order).parse(text)
    assert info.value.raw_text == text
    assert re.search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pet": {"purrs": 1}, "amount": 1, "code": 1}, r"expected Cat \| Dog"),
        ({"pet": {"meows": 1}, "amount": "1", "code": 1}, r"\$\.amount"),
        ({"pet": {"meows": 1}, "amount": 1, "code": None}, r"\$\.code"),
        ({"pet": {"meows": 1}, "amount": 1, "code": 1, "answer": True}, r"\$\.answer"),
        ({"pet": {"meows": 1}, "amount": 1, "code": 1, "answer": "no"}, r"\$\.answer"),
    ],
)
def test_parse_rejects_values_no_union_member_accepts(data: dict[str, Any], message: str) -> None:
    text = json.dumps(data)
    with pytest.raises(OutputParserError, match=message) as info:
        AttrsParser(Pets).parse(text)
    assert info.value.raw_text == text


def test_attrs_validator_failure_is_an_output_parser_error() -> None:
    with pytest.raises(OutputParserError, match="does not match Checked") as info:
        AttrsParser(Checked).parse('{"size": 0}')
    assert info.value.raw_text == '{"size": 0}'
    assert AttrsParser(Checked).parse('{"size": 2}') == Checked(2)


def test_parse_without_json_is_an_output_parser_error() -> None:
    with pytest.raises(OutputParserError, match="no JSON") as info:
        AttrsParser(Person).parse("I could not find a person.")
    assert info.value.raw_text == "I could not find a person."


PARSED_VALUES: list[tuple[Any, Any, Any]] = [
    (str, "x", "x"),
    (int, 3, 3),
    (float, 3, 3.0),
    (bool, False, False),
    (None, None, None),
    (Any, {"a": [1]}, {"a": [1]}),
    (dt.time, "10:30:00", dt.time(10, 30)),
    (LEGACY_LIST, [1, 2], [1, 2]),
    (Sequence[int], [1, 2], [1, 2]),
    (LEGACY_TUPLE, [1, 2], (1, 2)),
    (tuple, [1, "a"], (1, "a")),
    (tuple[()], [], ()),
    (abc.Set[str], ["a", "a"], {"a"}),
    (list, [1, "a"], [1, "a"]),
    (dict, {"a": 1}, {"a": 1}),
    (LEGACY_DICT, {"a": 1}, {"a": 1}),
    (LEGACY_OPTIONAL, None, None),
    (LEGACY_UNION, "3", "3"),
    (Literal[None], None, None),
    (Literal[Color.RED], "red", Color.RED),
    (Annotated[int, "meta", {"unhashable": []}], 4, 4),
    (USER_ID, 5, 5),
    (list[Annotated[int, {"unit": "cm"}]] | None, [1, 2], [1, 2]),
    (Color, "green", Color.GREEN),
    (list[Color | None], ["red", None], [Color.RED, None]),
]


@pytest.mark.parametrize(("tp", "value", "expected"), PARSED_VALUES, ids=repr)
def test_parse_each_supported_type(tp: Any, value: Any, expected: Any) -> None:
    parsed = AttrsParser(probe(tp)).parse(json.dumps({"x": value}))
    assert parsed.x == expected  # type: ignore[attr-defined]
    assert type(parsed.x) is type(expected)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (None, 0),
        (str, None),
        (bool, "true"),
        (int, "3"),
        (dt.time, "noon"),
        (tuple[()], [1]),
        (Sequence[int], "12"),
        (abc.Set[str], {"a": 1}),
        (dict, [1]),
        (Literal[None], False),
        (Literal[Color.RED], "RED"),
        (Annotated[int, "meta"], "4"),
        (USER_ID, "5"),
        (LEGACY_UNION, 1.5),
        (LEGACY_OPTIONAL, "1"),
    ],
    ids=repr,
)
def test_parse_rejects_each_type_mismatch(tp: Any, value: Any) -> None:
    text = json.dumps({"x": value})
    with pytest.raises(OutputParserError, match=r"does not match Probe: .*\$\.x") as info:
        AttrsParser(probe(tp)).parse(text)
    assert info.value.raw_text == text


# The schema agrees with the parser: checked with jsonschema (and llama.cpp), when installed.


def _validator(schema: dict[str, Any]) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(("tp", "expected", "defs"), TYPE_SCHEMAS, ids=repr)
def test_every_type_schema_is_a_valid_json_schema(tp: Any, expected: Any, defs: Any) -> None:
    _validator(attrs_json_schema(probe(tp)))


@pytest.mark.parametrize(("tp", "value", "expected"), PARSED_VALUES, ids=repr)
def test_values_the_parser_accepts_validate_against_the_schema(
    tp: Any, value: Any, expected: Any
) -> None:
    validator = _validator(attrs_json_schema(probe(tp)))
    if tp != abc.Set[str]:  # duplicates: the parser collapses them, the schema forbids them
        assert validator.is_valid({"x": value})


@pytest.mark.parametrize(
    ("cls", "instance"),
    [
        (Order, ORDER),
        (Person, Person(name="Ada", age=36, tags=["x"])),
        (Node, Node("r", [Node("a", [Node("b")])])),
        (Team, Team([Employee("x", Team([]))], lead=Employee("y"))),
        (Pets, Pets(Dog(1), 1.5, "c", 1)),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_unstructured_instances_validate_against_the_schema(cls: type, instance: Any) -> None:
    parser = AttrsParser(cls)
    validator = _validator(parser.json_schema)
    data = json.loads(json.dumps(parser.converter.unstructure(instance)))
    assert validator.is_valid(data), list(validator.iter_errors(data))


# jsonschema does not assert "format" by default, so bad dates are the parser's job alone.
SHAPE_REJECTIONS = [r for r in REJECTIONS if r[0] not in {"bad datetime", "datetime for date"}]


@pytest.mark.parametrize(
    ("case", "data", "message"), SHAPE_REJECTIONS, ids=[r[0] for r in SHAPE_REJECTIONS]
)
def test_rejected_outputs_do_not_validate_against_the_schema(
    case: str, data: Any, message: str
) -> None:
    assert not _validator(attrs_json_schema(Order)).is_valid(data)


def test_schema_forbids_the_extra_keys_the_parser_ignores() -> None:
    validator = _validator(attrs_json_schema(Order))
    assert validator.is_valid(ORDER_JSON)
    assert not validator.is_valid({**ORDER_JSON, "comment": "added by the model"})


@pytest.mark.parametrize("cls", [Person, Order, Node, Team, Pets, Extras])
def test_llama_cpp_can_build_a_grammar_from_the_schema(cls: type) -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    schema = json.dumps(AttrsParser(cls).json_schema)
    llama_grammar.LlamaGrammar.from_json_schema(schema, verbose=False)
