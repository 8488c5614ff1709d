"""Llama 2 / Llama 3 formatters against Meta's official chat templates, and on token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.prompts import PromptFormatError
from serapeum.llama_cpp import LlamaCPP
from serapeum_formatters_llama.llama2 import LLAMA2
from serapeum_formatters_llama.llama3 import LLAMA3

S, U, A = Message.system, Message.user, Message.assistant

CONVERSATIONS = {
    "one user turn": [U("Hello")],
    "system then user": [S("You are terse."), U("Hi there")],
    "multi-turn": [U("What is 2+2?"), A("4"), U("And 3+3?")],
    "system multi-turn": [S("Be brief."), U("One?"), A("1"), U("Two?"), A("2"), U("Three?")],
    "whitespace around contents": [S("  sys \n"), U("\n  padded  "), A(" yes "), U("again ")],
    "empty system": [S(""), U("Hello")],
    "ends with assistant": [U("Hi"), A("Hello!")],
}


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_llama2_renders_the_official_template(official_template, conversation) -> None:
    expected = official_template("llama-2-chat", conversation)
    assert LLAMA2.render_messages(conversation) == expected


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_llama3_renders_the_official_template(official_template, conversation) -> None:
    expected = official_template("llama-3-instruct", conversation)
    assert LLAMA3.render_messages(conversation) == expected


@pytest.mark.parametrize("formatter", [LLAMA2, LLAMA3], ids=["llama2", "llama3"])
def test_system_prompt_argument_equals_a_leading_system_message(formatter) -> None:
    conversation = [U("Hi"), A("Yo"), U("Again")]
    assert formatter.render_messages(
        conversation, system_prompt="Sys"
    ) == formatter.render_messages([S("Sys"), *conversation])
    # An explicit system message wins over the argument.
    assert formatter.render_messages([S("Mine"), U("Hi")], system_prompt="Other") == (
        formatter.render_messages([S("Mine"), U("Hi")])
    )


@pytest.mark.parametrize("formatter", [LLAMA2, LLAMA3], ids=["llama2", "llama3"])
def test_completion_is_one_user_turn(formatter) -> None:
    assert formatter.render_completion("Say hi", system_prompt="Sys") == formatter.render_messages(
        [S("Sys"), U("Say hi")]
    )
    assert formatter.render_completion("Say hi") == formatter.render_messages([U("Say hi")])


@pytest.mark.parametrize(
    "conversation, complaint",
    [
        ([A("first")], "message 0 is 'assistant'"),
        ([U("a"), U("b")], "message 1 is 'user'"),
        ([U("a"), A("b"), S("late system")], "system message is only allowed first"),
        ([S("only a system message")], "needs a user message"),
        ([], "empty"),
        ([U("a"), Message(role="tool", content="42")], "message 1 is 'tool'"),
    ],
)
def test_llama2_refuses_what_its_template_refuses_or_would_drop(conversation, complaint) -> None:
    with pytest.raises(PromptFormatError, match=complaint):
        LLAMA2.render_messages(conversation)


def test_llama2_official_template_also_refuses_non_alternating_turns(official_template) -> None:
    with pytest.raises(ValueError, match="alternate"):
        official_template("llama-2-chat", [U("a"), U("b")])


def test_end_of_turn_markers_are_stop_sequences() -> None:
    assert LLAMA2.stop == ("</s>",)
    assert LLAMA3.stop == ("<|eot_id|>",)


def _bos_once(model_path: Path, formatter, conversation) -> list[int]:
    llm = LlamaCPP(model_path=str(model_path), formatter=formatter)
    tokens = llm.tokenize(llm.format_messages(conversation))
    bos = llm.loaded_model.llama.token_bos()
    assert tokens[0] == bos and tokens[1] != bos
    return tokens


def test_llama2_prompt_reaches_the_model_with_bos_exactly_once(tiny_model_path: Path) -> None:
    tokens = _bos_once(tiny_model_path, "llama2", CONVERSATIONS["system multi-turn"])
    # Llama 2 Chat opens every user turn with BOS, as its template does (3 user turns).
    assert tokens.count(tokens[0]) == 3


def test_llama3_prompt_reaches_the_model_with_bos_exactly_once(
    tiny_llama3_model_path: Path,
) -> None:
    tokens = _bos_once(tiny_llama3_model_path, "llama3", CONVERSATIONS["multi-turn"])
    assert tokens.count(tokens[0]) == 1


def test_llama3_special_tokens_are_single_tokens(tiny_llama3_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_llama3_model_path), formatter="llama3")
    tokens = llm.tokenize(LLAMA3.render_completion("hi"))
    vocab = {llm.loaded_model.llama.detokenize([t], special=True).decode(): t for t in tokens}
    assert {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= set(vocab)
