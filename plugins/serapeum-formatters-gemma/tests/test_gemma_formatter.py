"""The Gemma formatter against Google's official templates, and on real Gemma token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.prompts import PromptFormatError
from serapeum.llama_cpp import LlamaCPP
from serapeum_formatters_gemma.gemma import GEMMA

S, U, A = Message.system, Message.user, Message.assistant

WITHOUT_SYSTEM = {
    "one user turn": [U("Hello")],
    "multi-turn": [U("What is 2+2?"), A("4"), U("And 3+3?")],
    "whitespace is trimmed": [U("\n  padded  "), A(" yes "), U("again ")],
    "ends with the model": [U("Hi"), A("Hello!")],
}
WITH_SYSTEM = {
    "system then user": [S("You are terse."), U("Hi there")],
    "system multi-turn": [S("Be brief."), U("One?"), A("1"), U("Two?")],
}


@pytest.mark.parametrize(
    "conversation",
    [*WITHOUT_SYSTEM.values(), *WITH_SYSTEM.values()],
    ids=[*WITHOUT_SYSTEM, *WITH_SYSTEM],
)
def test_renders_the_gemma_3_template(official_template, conversation) -> None:
    assert GEMMA.render_messages(conversation) == official_template("gemma-3-it", conversation)


@pytest.mark.parametrize("conversation", WITHOUT_SYSTEM.values(), ids=WITHOUT_SYSTEM.keys())
def test_renders_the_gemma_2_template_too(official_template, conversation) -> None:
    assert GEMMA.render_messages(conversation) == official_template("gemma-2-it", conversation)


def test_system_prompt_argument_equals_a_leading_system_message() -> None:
    assert GEMMA.render_completion("Hi", system_prompt="Sys") == GEMMA.render_messages(
        [S("Sys"), U("Hi")]
    )


@pytest.mark.parametrize(
    "conversation, complaint",
    [
        ([A("first")], "message 0 is 'assistant'"),
        ([U("a"), U("b")], "message 1 is 'user'"),
        ([U("a"), A("b"), S("late")], "only allowed first"),
        ([S("alone")], "needs a user message"),
    ],
)
def test_refuses_what_the_template_refuses_or_would_drop(conversation, complaint) -> None:
    with pytest.raises(PromptFormatError, match=complaint):
        GEMMA.render_messages(conversation)


def test_bos_exactly_once_on_the_tiny_model(tiny_gemma_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_gemma_model_path), formatter="gemma")
    tokens = llm.tokenize(llm.format_messages(WITH_SYSTEM["system multi-turn"]))
    bos = llm.loaded_model.llama.token_bos()
    assert tokens[0] == bos and tokens.count(bos) == 1


@pytest.mark.e2e
def test_real_gemma_vocabulary_sees_single_turn_tokens(gemma_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(gemma_model_path), formatter="gemma3", context_window=1024)
    tokens = llm.tokenize(llm.format_messages([S("Be brief."), U("Hi")]))
    llama = llm.loaded_model.llama
    pieces = [llama.detokenize([t], special=True).decode() for t in tokens]
    assert tokens.count(llama.token_bos()) == 1 and tokens[0] == llama.token_bos()
    assert pieces.count("<start_of_turn>") == 2 and pieces.count("<end_of_turn>") == 1
    answer = llm.chat([U("Say hello.")], max_new_tokens=8, temperature=0.0)
    assert "<end_of_turn>" not in answer.message.content
