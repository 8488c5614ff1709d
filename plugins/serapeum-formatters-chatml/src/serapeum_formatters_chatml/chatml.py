"""ChatML, the turn format of Qwen, OpenHermes and many fine-tunes.

``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.
Contents are written as given and there is no BOS text (ChatML models that want a BOS
get it from their tokenizer settings). Rendered exactly as the OpenHermes template does.
"""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.core.prompts import PromptFormatError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FAMILY = "chatml"

__all__ = ["CHATML", "IM_END", "IM_START", "completion_to_prompt", "messages_to_prompt"]


def messages_to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    """Render a conversation; ``system_prompt`` applies when no system message leads it."""
    if not messages:
        raise PromptFormatError(f"{FAMILY}: the conversation is empty; pass at least one message")
    turns = list(messages)
    if system_prompt is not None and turns[0].role is not MessageRole.SYSTEM:
        turns.insert(0, Message(role=MessageRole.SYSTEM, content=system_prompt))
    body = "".join(f"{IM_START}{m.role.value}\n{m.content}{IM_END}\n" for m in turns)
    return f"{body}{IM_START}assistant\n"


def completion_to_prompt(completion: str, system_prompt: str | None = None) -> str:
    """Render a single instruction as one user turn."""
    return messages_to_prompt([Message(role=MessageRole.USER, content=completion)], system_prompt)


CHATML = PromptFormatter(
    name="chatml",
    aliases=("qwen", "openhermes"),
    messages_to_prompt=messages_to_prompt,
    completion_to_prompt=completion_to_prompt,
    stop=(IM_END,),
    prompt_starts_with_bos=False,
    description="ChatML (Qwen, OpenHermes, many fine-tunes): <|im_start|>role ... <|im_end|>",
)
