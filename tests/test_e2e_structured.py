"""The seed's structured-output snippet, verbatim, on the real Gemma 3 270M model."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import attrs
import pytest
from pydantic import BaseModel

from serapeum.core.llms import FinishReason, TextCompletionLLM
from serapeum.core.output_parsers import AttrsParser, PydanticParser
from serapeum.llama_cpp import LlamaCPP

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def llm(gemma_model_path: Path) -> LlamaCPP:
    return LlamaCPP(
        model_path=str(gemma_model_path),
        formatter="gemma",
        temperature=0.0,
        max_new_tokens=128,
        context_window=2048,
    )


class DummyModel(BaseModel):
    value: str


@attrs.define
class DummyAttrs:
    value: str


def test_seed_snippet_with_pydantic(llm: LlamaCPP) -> None:
    text_llm = TextCompletionLLM(
        output_parser=PydanticParser(output_cls=DummyModel),
        prompt="Generate any value: {value}",
        llm=llm,
    )
    result = text_llm(value="input")  # -> DummyModel(value=...)
    assert isinstance(result, DummyModel)


def test_seed_snippet_with_attrs(llm: LlamaCPP) -> None:
    text_llm = TextCompletionLLM(
        output_parser=AttrsParser(output_cls=DummyAttrs),
        prompt="Generate any value: {value}",
        llm=llm,
    )
    result = text_llm(value="input")
    assert isinstance(result, DummyAttrs)


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


@attrs.define
class Reading:
    city: str
    temperature: float
    unit: Unit


@attrs.define
class Report:
    # A bound keeps a small model from repeating list items until max_new_tokens.
    readings: list[Reading] = attrs.field(metadata={"json_schema": {"maxItems": 4}})
    source: str | None = None


def test_nested_enum_bearing_attrs_extraction(llm: LlamaCPP) -> None:
    extract = TextCompletionLLM(
        prompt="Weather report: {text}\nThe readings as JSON.", output_cls=Report, llm=llm
    )
    report = extract(text="Paris 21 degrees celsius, Oslo 12 degrees celsius.")
    assert isinstance(report, Report)
    assert all(isinstance(r, Reading) and isinstance(r.unit, Unit) for r in report.readings)


def test_complete_with_a_schema_ends_when_the_json_closes(llm: LlamaCPP) -> None:
    schema = {
        "type": "object",
        "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
        "required": ["country", "capital"],
        "additionalProperties": False,
    }
    response = llm.complete("Q: What is the capital of France? A (JSON):", json_schema=schema)
    value = json.loads(response.text)
    assert value == {"country": "France", "capital": "Paris"}
    assert response.finish_reason is FinishReason.STOP
