"""Unit tests of the core value types."""

from __future__ import annotations

import attrs
import pytest

from serapeum.core.llms import (
    ChatResponse,
    CompletionResponse,
    Message,
    MessageRole,
    Metadata,
)


def test_message_accepts_role_strings_and_is_frozen() -> None:
    message = Message(role="user", content="hi")
    assert message.role is MessageRole.USER
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]


def test_message_rejects_unknown_role_with_the_allowed_list() -> None:
    with pytest.raises(ValueError, match="system, user, assistant, tool"):
        Message(role="wizard", content="hi")


def test_roles_include_tool_and_compare_equal_to_their_values() -> None:
    assert {role.value for role in MessageRole} >= {"system", "user", "assistant", "tool"}
    assert MessageRole.ASSISTANT == "assistant"


def test_message_constructors_and_none_content() -> None:
    assert Message.system("s").role is MessageRole.SYSTEM
    assert Message.assistant("a").role is MessageRole.ASSISTANT
    assert Message(role=MessageRole.USER, content=None).content == ""


def test_responses_carry_text_delta_raw() -> None:
    response = CompletionResponse(text="abc", delta="c", raw={"id": 1})
    assert str(response) == "abc"
    chat = ChatResponse(message=Message.assistant("abc"), delta="c")
    assert chat.message.content == "abc" and chat.additional_kwargs == {}
    assert str(chat) == "assistant: abc"


def test_metadata_defaults_match_the_seed() -> None:
    metadata = Metadata()
    assert (metadata.context_window, metadata.num_output, metadata.is_chat_model) == (
        3900,
        256,
        False,
    )
