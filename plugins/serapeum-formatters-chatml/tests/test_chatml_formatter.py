"""The ChatML formatter against the OpenHermes ChatML template, and on token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.prompts import PromptFormatError
from serapeum.llama_cpp import LlamaCPP
from serapeum_formatters_chatml.chatml import CHATML

S, U, A = Message.system, Message.user, Message.assistant
FAMILY = "openhermes-2.5-mistral (chatml)"

CONVERSATIONS = {
    "one user turn": [U("Hello")],
    "system then user": [S("You are terse."), U("Hi there")],
    "multi-turn": [U("What is 2+2?"), A("4"), U("And 3+3?")],
    "whitespace is kept": [S(" sys "), U("\n  padded  "), A(" yes ")],
    "tool result": [U("Weather?"), A("calling"), Message(role="tool", content='{"t": 21}')],
}


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_renders_the_official_chatml_template(official_template, conversation) -> None:
    assert CHATML.render_messages(conversation) == official_template(FAMILY, conversation)


def test_system_prompt_argument_and_aliases(plugin_host) -> None:
    assert CHATML.render_completion("Hi", system_prompt="Sys") == CHATML.render_messages(
        [S("Sys"), U("Hi")]
    )
    assert plugin_host.formatters.get("Qwen") is CHATML
    assert plugin_host.formatters.entry("chatml").distribution == "serapeum-formatters-chatml"


def test_empty_conversation_is_refused() -> None:
    with pytest.raises(PromptFormatError, match="empty"):
        CHATML.render_messages([])


def test_special_tokens_and_one_bos_on_the_tiny_model(tiny_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_model_path), formatter="chatml", temperature=0.0)
    tokens = llm.tokenize(llm.format_messages([S("Be brief."), U("Hi")]))
    llama = llm.loaded_model.llama
    pieces = [llama.detokenize([t], special=True).decode() for t in tokens]
    assert pieces.count("<|im_start|>") == 3 and pieces.count("<|im_end|>") == 2
    assert tokens.count(llama.token_bos()) == 1
    assert llm.complete("Hi", max_new_tokens=3).raw["usage"]["completion_tokens"] >= 1
