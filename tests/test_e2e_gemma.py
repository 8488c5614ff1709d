"""End-to-end on the real Gemma 3 270M model (from the PyPI package), where text must make sense."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.llama_cpp import LlamaCPP

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gemma(gemma_model_path: Path) -> LlamaCPP:
    return LlamaCPP(
        model_path=str(gemma_model_path),
        formatter="gemma",
        temperature=0.0,
        max_new_tokens=24,
        context_window=2048,
    )


def test_counting_continues(gemma: LlamaCPP) -> None:
    text = gemma.complete("1, 2, 3, 4, 5,", formatted=True, max_new_tokens=12).text
    assert text.lstrip().startswith("6"), text
    assert "7" in text and "8" in text


def test_streamed_counting_equals_the_whole_answer(gemma: LlamaCPP) -> None:
    chunks = list(gemma.complete("1, 2, 3, 4, 5,", formatted=True, stream=True, max_new_tokens=12))
    assert (
        "".join(c.delta for c in chunks)
        == gemma.complete("1, 2, 3, 4, 5,", formatted=True, max_new_tokens=12).text
    )


def test_answers_a_simple_question(gemma: LlamaCPP) -> None:
    # The packaged model is the pre-trained (not instruction-tuned) Gemma 3 270M: it
    # continues text, so the question is posed as text to continue.
    text = gemma.complete("Q: What is the capital of France?\nA:", formatted=True).text
    assert "Paris" in text, text


def test_chat_runs_through_the_turn_format(gemma: LlamaCPP) -> None:
    answer = gemma.chat([Message.system("Be brief."), Message.user("Say hello.")], max_new_tokens=8)
    assert answer.message.role.value == "assistant"
    assert "<end_of_turn>" not in answer.message.content
    assert answer.raw["usage"]["prompt_tokens"] == gemma.count_tokens(
        gemma.format_messages([Message.system("Be brief."), Message.user("Say hello.")])
    )


def test_async_stream_on_the_real_model(gemma: LlamaCPP) -> None:
    async def collect() -> str:
        stream = await gemma.acomplete(
            "1, 2, 3, 4, 5,", formatted=True, stream=True, max_new_tokens=12
        )
        return "".join([chunk.delta async for chunk in stream])

    assert asyncio.run(collect()).lstrip().startswith("6")


def test_prompt_tokens_start_with_one_bos(gemma: LlamaCPP) -> None:
    tokens = gemma.tokenize(gemma.format_completion("Hi"))
    bos = gemma.loaded_model.llama.token_bos()
    assert tokens[0] == bos and tokens.count(bos) == 1
