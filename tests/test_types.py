"""Unit tests of the core value types."""

from __future__ import annotations

import attrs
import pytest

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.llms import (
    ChatResponse,
    CompletionResponse,
    Message,
    MessageRole,
    Metadata,
    TextChunk,
)


def test_message_accepts_role_strings_and_is_frozen() -> None:
    message = Message(role="user", content="hi")
    assert message.role is MessageRole.USER
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]


def test_message_rejects_unknown_role_with_the_allowed_list() -> None:
    with pytest.raises(ValueError, match="system, user, assistant, tool") as info:
        Message(role="wizard", content="hi")
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, SerapeumError)


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


def test_text_chunks_make_the_content_and_read_back() -> None:
    message = Message(role="user", chunks=[TextChunk(content="a"), TextChunk(content="b")])
    assert message.content == "a\nb"  # joined one per line, as the seed joined them
    assert message.chunks == [TextChunk(content="a"), TextChunk(content="b")]
    assert message == Message.user("a\nb")  # equal however built
    assert "chunks" not in repr(message) and repr(message) == repr(Message.user("a\nb"))
    assert Message.user("x").chunks == [TextChunk(content="x")]
    assert Message.user("").chunks == []
    assert TextChunk(content="x").type == "text"
    assert Message.from_str("hi", role="system") == Message.system("hi")
    assert Message(role="user", content=[TextChunk(content="seed")]).content == "seed"
    assert attrs.evolve(message, content="c").chunks == [TextChunk(content="c")]


def test_a_message_from_an_openai_dict() -> None:
    message = Message.from_dict({"role": "assistant", "content": None, "name": "bot"})
    assert message == Message(role="assistant", content="", additional_kwargs={"name": "bot"})
