"""Schema-constrained decoding and TextCompletionLLM on real llama.cpp inference (tiny model).

The tiny model's weights are random, so every schema here bounds its values (maxLength,
enums, maxItems): an unbounded string would run until max_new_tokens. What is checked is
that the output always parses and validates, and how errors are reported.
"""

from __future__ import annotations

import asyncio
import enum
import json
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from pydantic import BaseModel, Field

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import FinishReason, TextCompletionLLM
from serapeum.core.output_parsers import AttrsParser, OutputParserError, PydanticParser
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend.structured import IncompleteJSONError, SchemaError

jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "manager": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
    },
    "required": ["name", "age", "role", "tags", "address", "manager"],
    "additionalProperties": False,
}


@pytest.fixture()
def llm(tiny_model_path: Path) -> LlamaCPP:
    return LlamaCPP(
        model_path=str(tiny_model_path), formatter="llama2", temperature=0.0, max_new_tokens=200
    )


def test_constrained_output_parses_and_validates(llm: LlamaCPP) -> None:
    response = llm.complete("A person:", json_schema=PERSON)
    value = json.loads(response.text)
    jsonschema.validate(value, PERSON)
    # generation ends when the JSON value closes, not at max_new_tokens
    assert response.finish_reason is FinishReason.STOP
    assert response.usage is not None and response.usage.completion_tokens < 200


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_sampled_constrained_output_is_always_valid(llm: LlamaCPP, seed: int) -> None:
    chunks = list(
        llm.complete("A person:", json_schema=PERSON, temperature=1.0, seed=seed, stream=True)
    )
    jsonschema.validate(json.loads(chunks[-1].text), PERSON)
    assert chunks[-1].finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object", "schema": PERSON},
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    ],
)
def test_response_format_spellings(llm: LlamaCPP, response_format: dict[str, Any]) -> None:
    response = llm.complete("A person:", response_format=response_format)
    jsonschema.validate(json.loads(response.text), PERSON)


def test_a_schema_is_compiled_once_per_model(llm: LlamaCPP) -> None:
    constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
    llm.complete("A person:", json_schema=PERSON)
    bridge = constraints._tokenizer
    reordered = dict(reversed(list(PERSON.items())))  # same schema, other key order
    llm.complete("Another:", json_schema=json.dumps(reordered))
    assert constraints._tokenizer is bridge
    assert sum(1 for key in constraints._compiled if '"tags"' in key) == 1


def test_unsatisfiable_schema_fails_before_generation(llm: LlamaCPP) -> None:
    impossible = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 3}},
        "required": ["n"],
    }
    with pytest.raises(SchemaError, match="unsatisfiable"):
        llm.complete("x", json_schema=impossible, stream=True)  # raised before any token
    assert not llm.loaded_model.lock.locked()


def test_unsupported_schema_feature_is_named(llm: LlamaCPP) -> None:
    lookbehind = {"type": "string", "pattern": "(?<=a)b"}
    with pytest.raises(SchemaError, match="look-around"):
        llm.complete("x", json_schema=lookbehind)


@pytest.mark.parametrize("bad", [42, "{not json", ["type", "object"]])
def test_malformed_schema_values_are_configuration_errors(llm: LlamaCPP, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="json_schema"):
        llm.complete("x", json_schema=bad)


def test_bad_response_format_says_what_is_accepted(llm: LlamaCPP) -> None:
    with pytest.raises(ConfigurationError, match="json_object"):
        llm.complete("x", response_format={"type": "xml"})
    with pytest.raises(ConfigurationError, match="not both"):
        llm.complete("x", response_format={"type": "json_object"}, json_schema=PERSON)


def test_json_cut_off_by_max_new_tokens_says_so(llm: LlamaCPP) -> None:
    with pytest.raises(IncompleteJSONError, match="max_new_tokens=5") as caught:
        llm.complete("A person:", json_schema=PERSON, max_new_tokens=5)
    assert caught.value.text.startswith("{")
    with pytest.raises(IncompleteJSONError):
        list(llm.complete("A person:", json_schema=PERSON, max_new_tokens=5, stream=True))
    assert not llm.loaded_model.lock.locked()


class Role(enum.Enum):
    ADMIN = "admin"
    USER = "user"


class Address(BaseModel):
    city: str = Field(max_length=8)
    country: Literal["FR", "DE", "IT"]


class Person(BaseModel):
    name: str = Field(max_length=10)
    role: Role
    addresses: list[Address] = Field(max_length=2)
    active: bool = True


def test_text_completion_llm_with_a_nested_enum_bearing_pydantic_class(llm: LlamaCPP) -> None:
    extract = TextCompletionLLM(
        output_parser=PydanticParser(output_cls=Person), prompt="Describe {who}.", llm=llm
    )
    person = extract(who="a user")
    assert isinstance(person, Person)
    assert isinstance(person.role, Role)
    assert all(isinstance(a, Address) for a in person.addresses)


@attrs.define
class Pet:
    kind: Literal["cat", "dog"]
    vaccinated: bool
    mood: Role


@attrs.define
class Household:
    pets: Pet
    owner_role: Role = Role.USER


def test_text_completion_llm_with_attrs_classes_sync_and_async(llm: LlamaCPP) -> None:
    extract = TextCompletionLLM(prompt="Describe the {what}.", output_cls=Household, llm=llm)
    assert isinstance(extract.parser, AttrsParser)
    household = extract(what="household")
    assert isinstance(household, Household) and isinstance(household.pets, Pet)
    assert asyncio.run(extract.acall(what="household")) == household


def test_without_constraints_a_bad_answer_raises_a_parse_error_with_the_text(
    llm: LlamaCPP,
) -> None:
    extract = TextCompletionLLM(
        prompt="Describe {who}.", output_cls=Person, llm=llm, constrained=False
    )
    with pytest.raises(OutputParserError) as caught:
        extract(who="somebody", llm_kwargs={"max_new_tokens": 8})
    assert caught.value.raw_text  # what the model said is kept


def test_text_completion_llm_configuration_errors(llm: LlamaCPP) -> None:
    with pytest.raises(ConfigurationError, match="output_parser= or output_cls="):
        TextCompletionLLM(prompt="x", llm=llm)
    with pytest.raises(ConfigurationError, match="needs an LLM"):
        TextCompletionLLM(prompt="x", output_cls=Person)
    with pytest.raises(ConfigurationError, match="pydantic model class or an attrs class"):
        TextCompletionLLM(prompt="x", output_cls=dict, llm=llm)
    with pytest.raises(ConfigurationError, match="differs"):
        TextCompletionLLM(
            prompt="x", output_parser=PydanticParser(Person), output_cls=Address, llm=llm
        )
    extract = TextCompletionLLM(prompt="Describe {who} in {place}.", output_cls=Person, llm=llm)
    with pytest.raises(ConfigurationError, match=r"place=\.\.\."):
        extract(who="x")
