"""Google's Gemma turn format, exactly as the Gemma 3 instruction template renders it.

``<bos><start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n``
The system text leads the first user turn (Gemma has no system role); the assistant is
``model``; contents are trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelInfo, PromptFormatter
from serapeum.core.prompts import PromptFormatError, require_alternating_turns, split_system_message

BOS = "<bos>"
END_OF_TURN = "<end_of_turn>"
FAMILY = "gemma"

__all__ = ["BOS", "END_OF_TURN", "GEMMA", "completion_to_prompt", "messages_to_prompt"]


def messages_to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    """Render a conversation; ``system_prompt`` applies when no system message leads it."""
    system, turns = split_system_message(messages, system_prompt, family=FAMILY)
    if not turns:
        raise PromptFormatError(f"{FAMILY}: a system message needs a user message after it")
    require_alternating_turns(turns, family=FAMILY)
    parts = [BOS]
    for index, message in enumerate(turns):
        role = "model" if message.role is MessageRole.ASSISTANT else "user"
        lead = f"{system}\n\n" if index == 0 and system is not None else ""
        parts.append(f"<start_of_turn>{role}\n{lead}{message.content.strip()}{END_OF_TURN}\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def completion_to_prompt(completion: str, system_prompt: str | None = None) -> str:
    """Render a single instruction as one user turn."""
    return messages_to_prompt([Message(role=MessageRole.USER, content=completion)], system_prompt)


def is_gemma(info: ModelInfo) -> bool:
    """Gemma models say so in their architecture (``gemma``, ``gemma2``, ``gemma3``, ...)."""
    return info.architecture.lower().startswith("gemma")


GEMMA = PromptFormatter(
    name="gemma",
    aliases=("gemma2", "gemma3", "gemma-it"),
    messages_to_prompt=messages_to_prompt,
    completion_to_prompt=completion_to_prompt,
    stop=(END_OF_TURN,),
    prompt_starts_with_bos=True,
    description="Google Gemma 2/3 instruction models: <start_of_turn>user ... <end_of_turn>",
    detect=is_gemma,
)
