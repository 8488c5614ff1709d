"""The Mistral formatter against mistralai's official chat template, and on token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.prompts import PromptFormatError
from serapeum.llama_cpp import LlamaCPP
from serapeum_formatters_mistral.mistral import MISTRAL

S, U, A = Message.system, Message.user, Message.assistant

CONVERSATIONS = {
    "one user turn": [U("Hello")],
    "system then user": [S("You are terse."), U("Hi there")],
    "multi-turn": [U("What is 2+2?"), A("4"), U("And 3+3?")],
    "system multi-turn": [S("Be brief."), U("One?"), A("1"), U("Two?"), A("2"), U("Three?")],
    "whitespace is kept": [U("\n  padded  "), A(" yes "), U("again ")],
    "ends with assistant": [U("Hi"), A("Hello!")],
}


@pytest.mark.parametrize("family", ["mistral-7b-instruct-v0.1", "mistral-7b-instruct-v0.2"])
@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_renders_the_official_template(official_template, family, conversation) -> None:
    assert MISTRAL.render_messages(conversation) == official_template(family, conversation)


def test_system_prompt_argument_equals_a_leading_system_message() -> None:
    assert MISTRAL.render_messages([U("Hi")], system_prompt="Sys") == MISTRAL.render_messages(
        [S("Sys"), U("Hi")]
    )
    assert MISTRAL.render_completion("Hi", system_prompt="Sys") == "<s> [INST] Sys\n\nHi [/INST]"


@pytest.mark.parametrize(
    "conversation, complaint",
    [
        ([A("first")], "message 0 is 'assistant'"),
        ([U("a"), A("b"), S("late")], "only allowed first"),
        ([S("alone")], "needs a user message"),
    ],
)
def test_refuses_what_the_template_refuses_or_would_drop(conversation, complaint) -> None:
    with pytest.raises(PromptFormatError, match=complaint):
        MISTRAL.render_messages(conversation)


def test_prompt_reaches_the_model_with_bos_exactly_once(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="mistral")
    tokens = llm.tokenize(llm.format_messages(CONVERSATIONS["system multi-turn"]))
    bos = llm.loaded_model.llama.token_bos()
    assert tokens[0] == bos and tokens.count(bos) == 1
    assert llm.tokenize(MISTRAL.render_completion("hi")).count(bos) == 1


def test_end_of_turn_marker_is_a_stop_sequence() -> None:
    assert MISTRAL.stop == ("</s>",)


def _reference_ids(conversation: list[Message]) -> list[int]:
    """Token ids from mistral-common, Mistral's own reference implementation (v1 tokenizer)."""
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(
        messages=[kinds[m.role.value](content=m.content) for m in conversation]
    )
    return MistralTokenizer.v1().encode_chat_completion(request).tokens


REFERENCE_CONVERSATIONS = {
    "one user turn": [U("Hello")],
    "system then user": [S("You are terse."), U("Hi there")],
    "multi-turn": [U("What is 2+2?"), A("4"), U("And 3+3?")],
    "system multi-turn": [S("Be brief."), U("One?"), A("1"), U("Two?"), A("2"), U("Three?")],
}


@pytest.mark.parametrize(
    "conversation", REFERENCE_CONVERSATIONS.values(), ids=REFERENCE_CONVERSATIONS.keys()
)
def test_the_model_sees_mistral_commons_reference_token_ids(
    mistral_v1_model_path: Path, conversation: list[Message]
) -> None:
    llm = LlamaCPP(model_path=str(mistral_v1_model_path), formatter="mistral")
    assert llm.tokenize(llm.format_messages(conversation)) == _reference_ids(conversation)
