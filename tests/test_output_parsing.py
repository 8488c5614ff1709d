"""PydanticParser and TextCompletionLLM (first version; structured output grows in a later issue)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pydantic
import pytest

from serapeum.core.llms import (
    BaseLLM,
    ChatResponse,
    CompletionResponse,
    Message,
    Metadata,
    TextCompletionLLM,
)
from serapeum.core.output_parsers import OutputParserError, PydanticParser, extract_json
from serapeum.llama_cpp import LlamaCPP


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_extract_json_from_noisy_text() -> None:
    assert extract_json('Sure! ```json\n{"a": 1}\n``` done') == {"a": 1}
    assert extract_json('Here it is: {"a": [1, 2]} and more text') == {"a": [1, 2]}
    with pytest.raises(OutputParserError) as info:
        extract_json("no json at all")
    assert info.value.raw_text == "no json at all"


def test_pydantic_parser_schema_instructions_and_validation() -> None:
    parser = PydanticParser(Person)
    assert parser.json_schema["required"] == ["name", "age"]
    assert '"age"' in parser.format("Extract the person.")
    assert parser.parse('{"name": "Ada", "age": 36}') == Person(name="Ada", age=36)
    with pytest.raises(OutputParserError, match="does not match Person") as info:
        parser.parse('{"name": "Ada"}')
    assert info.value.raw_text == '{"name": "Ada"}'
    with pytest.raises(TypeError, match="pydantic model class"):
        PydanticParser(dict)  # type: ignore[arg-type]


class ScriptedLLM(BaseLLM):
    """A stand-in LLM that answers with fixed text: it tests TextCompletionLLM's own logic
    (which prompt it sends, which API it picks), not inference."""

    def __init__(self, answer: str, chat_model: bool) -> None:
        self.answer, self.chat_model, self.prompts = answer, chat_model, []  # type: list[str]

    @property
    def metadata(self) -> Metadata:
        return Metadata(is_chat_model=self.chat_model)

    def complete(self, prompt: str, formatted: bool = False, *, stream: bool = False, **kw: Any):
        self.prompts.append(prompt)
        return CompletionResponse(text=self.answer)

    def chat(self, messages: Sequence[Message], *, stream: bool = False, **kw: Any):
        self.prompts.append(messages[-1].content)
        return ChatResponse(message=Message.assistant(self.answer))

    async def acomplete(
        self, prompt: str, formatted: bool = False, *, stream: bool = False, **kw: Any
    ):
        return self.complete(prompt)

    async def achat(self, messages: Sequence[Message], *, stream: bool = False, **kw: Any):
        return self.chat(messages)


@pytest.mark.parametrize("chat_model", [False, True])
def test_text_completion_llm_formats_calls_and_parses(chat_model: bool) -> None:
    llm = ScriptedLLM('{"name": "Ada", "age": 36}', chat_model)
    program = TextCompletionLLM(
        output_parser=PydanticParser(Person), prompt="Who is {who}?", llm=llm
    )
    assert program(who="the first programmer") == Person(name="Ada", age=36)
    assert llm.prompts[-1].startswith("Who is the first programmer?")
    assert "JSON Schema" in llm.prompts[-1]
    assert asyncio.run(program.acall(who="x")) == Person(name="Ada", age=36)


def test_text_completion_llm_on_real_inference_keeps_the_raw_text(tiny_llm: LlamaCPP) -> None:
    program = TextCompletionLLM(
        output_parser=PydanticParser(Person),
        prompt="Describe {who}.",
        llm=tiny_llm,
        constrained=False,  # only asked nicely: the tiny model speaks gibberish, never JSON
    )
    with pytest.raises(OutputParserError) as info:
        program(who="Ada")
    assert (
        info.value.raw_text
        == tiny_llm.complete(PydanticParser(Person).format("Describe Ada.")).text
    )
