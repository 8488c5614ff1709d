"""Mistral Instruct (v0.1/v0.2, Mixtral) format, exactly as mistralai's chat template renders it.

``<s> [INST] {system}\\n\\n{user} [/INST] {answer}</s> [INST] {user} [/INST]``
BOS once at the start, contents as given (not stripped), EOS after each answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.core.prompts import PromptFormatError, require_alternating_turns, split_system_message

BOS, EOS = "<s>", "</s>"
FAMILY = "mistral"

__all__ = ["BOS", "EOS", "MISTRAL", "completion_to_prompt", "messages_to_prompt"]


def messages_to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    """Render a conversation; ``system_prompt`` applies when no system message leads it."""
    system, turns = split_system_message(messages, system_prompt, family=FAMILY)
    if not turns:
        raise PromptFormatError(f"{FAMILY}: a system message needs a user message after it")
    require_alternating_turns(turns, family=FAMILY)
    parts = [BOS]
    for index, message in enumerate(turns):
        if message.role is MessageRole.USER:
            content = message.content
            if index == 0 and system is not None:
                content = f"{system}\n\n{content}"
            parts.append(f" [INST] {content} [/INST]")
        else:
            parts.append(f" {message.content}{EOS}")
    return "".join(parts)


def completion_to_prompt(completion: str, system_prompt: str | None = None) -> str:
    """Render a single instruction as one user turn."""
    return messages_to_prompt([Message(role=MessageRole.USER, content=completion)], system_prompt)


MISTRAL = PromptFormatter(
    name="mistral",
    aliases=("mistral-instruct", "mixtral"),
    messages_to_prompt=messages_to_prompt,
    completion_to_prompt=completion_to_prompt,
    stop=(EOS,),
    prompt_starts_with_bos=True,
    description="Mistral Instruct v0.1/v0.2 and Mixtral: <s> [INST] ... [/INST]",
)
