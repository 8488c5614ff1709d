"""The conformance kit itself: it must catch the mistakes it promises to catch."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.llama_cpp.formatters.llama3 import LLAMA3
from serapeum.llama_cpp.testing.conformance import ConformanceError, check_formatter

BOS = "<|begin_of_text|>"


def drops_system(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return LLAMA3.render_messages([m for m in messages if m.role is not MessageRole.SYSTEM])


def reorders(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return LLAMA3.render_messages([messages[0], *reversed(messages[1:])], system_prompt)


def bare_completion(completion: str, system_prompt: str | None = None) -> str:
    return f"{BOS}{completion}"


def double_bos_messages(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    return BOS + LLAMA3.render_messages(messages, system_prompt)


def double_bos_completion(completion: str, system_prompt: str | None = None) -> str:
    return BOS + LLAMA3.render_completion(completion, system_prompt)


BROKEN = {
    "drops system": ({"messages_to_prompt": drops_system}, "system message was dropped"),
    "reorders": ({"messages_to_prompt": reorders}, "lost or reordered"),
    "completion differs": (
        {"completion_to_prompt": bare_completion},
        "completion_to_prompt differs",
    ),
    "double BOS": (
        {
            "messages_to_prompt": double_bos_messages,
            "completion_to_prompt": double_bos_completion,
        },
        "BOS must reach the model exactly once",
    ),
    "empty stop": ({"stop": ("",)}, "stop markers must be non-empty"),
}


@pytest.mark.parametrize("changes, problem", BROKEN.values(), ids=BROKEN.keys())
def test_the_kit_catches(changes: dict[str, object], problem: str) -> None:
    broken: PromptFormatter = attrs.evolve(LLAMA3, name="broken", **changes)  # type: ignore[misc]
    with pytest.raises(ConformanceError, match=problem):
        check_formatter(broken)


def test_the_kit_passes_a_good_formatter() -> None:
    report = check_formatter(LLAMA3)
    assert report.bos_token == BOS and report.completion_tokens >= 1


def test_the_source_kit_catches_a_source_that_claims_everything(tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    from serapeum.core.plugins import ModelRequest, ModelSource
    from serapeum.llama_cpp.testing.conformance import check_source

    greedy = ModelSource(name="greedy", handles=lambda r: True, resolve=lambda r: tiny_model_path)
    with pytest.raises(ConformanceError, match="claims a url request"):
        check_source(greedy, ModelRequest(model_path=str(tiny_model_path)))
