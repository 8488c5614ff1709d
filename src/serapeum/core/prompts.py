"""Helpers for formatter authors: the checks most chat templates make, with clear errors."""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.errors import PromptFormatError
from serapeum.core.llms.types import Message, MessageRole

__all__ = ["PromptFormatError", "require_alternating_turns", "split_system_message"]


def split_system_message(
    messages: Sequence[Message], system_prompt: str | None = None, *, family: str
) -> tuple[str | None, list[Message]]:
    """Return (system text, the other messages).

    A leading SYSTEM message wins; otherwise ``system_prompt`` (may be None) is used.
    A SYSTEM message anywhere else raises instead of being dropped silently.
    """
    if not messages:
        raise PromptFormatError(
            f"{family}: the conversation is empty; pass at least one user message"
        )
    rest = list(messages)
    system = system_prompt
    if rest[0].role is MessageRole.SYSTEM:
        system = rest.pop(0).content
    for position, message in enumerate(rest, start=1 if len(rest) < len(messages) else 0):
        if message.role is MessageRole.SYSTEM:
            raise PromptFormatError(
                f"{family}: a system message is only allowed first (found one at position "
                f"{position}); merge it into the first system message"
            )
    return system, rest


def require_alternating_turns(messages: Sequence[Message], *, family: str) -> None:
    """Raise unless the messages go user, assistant, user, ... as the family's template requires."""
    for index, message in enumerate(messages):
        expected = MessageRole.USER if index % 2 == 0 else MessageRole.ASSISTANT
        if message.role is not expected:
            raise PromptFormatError(
                f"{family}: after the optional system message, turns must alternate "
                f"user/assistant/user/...; message {index} is {message.role.value!r}, "
                f"expected {expected.value!r}"
            )
