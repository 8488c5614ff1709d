"""Meta's Llama 3 Instruct format, exactly as its official chat template renders it.

``<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>...``
followed by the assistant header. Contents are trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.core.prompts import PromptFormatError

# The seed exported LlamaIndex's default system prompt from both modules, one text.
# It is never added to a prompt by itself: pass it as system_prompt= to use it.
from serapeum_formatters_llama.llama2 import DEFAULT_SYSTEM_PROMPT

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
FAMILY = "llama3"

__all__ = [
    "BOS",
    "DEFAULT_SYSTEM_PROMPT",
    "EOT",
    "LLAMA3",
    "completion_to_prompt_v3_instruct",
    "messages_to_prompt_v3_instruct",
]


def _turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}{EOT}"


def messages_to_prompt_v3_instruct(
    messages: Sequence[Message], system_prompt: str | None = None
) -> str:
    """Render a conversation; ``system_prompt`` applies when no system message leads it."""
    if not messages:
        raise PromptFormatError(f"{FAMILY}: the conversation is empty; pass at least one message")
    turns = list(messages)
    if system_prompt is not None and turns[0].role is not MessageRole.SYSTEM:
        turns.insert(0, Message(role=MessageRole.SYSTEM, content=system_prompt))
    body = "".join(_turn(message.role.value, message.content) for message in turns)
    return f"{BOS}{body}<|start_header_id|>assistant<|end_header_id|>\n\n"


def completion_to_prompt_v3_instruct(completion: str, system_prompt: str | None = None) -> str:
    """Render a single instruction as one user turn."""
    return messages_to_prompt_v3_instruct(
        [Message(role=MessageRole.USER, content=completion)], system_prompt
    )


LLAMA3 = PromptFormatter(
    name="llama3",
    aliases=("llama-3-instruct", "llama3-instruct"),
    messages_to_prompt=messages_to_prompt_v3_instruct,
    completion_to_prompt=completion_to_prompt_v3_instruct,
    stop=(EOT,),
    prompt_starts_with_bos=True,
    description="Meta Llama 3 Instruct: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
)
