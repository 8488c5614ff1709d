"""Meta's Llama 2 Chat format, exactly as its official chat template renders it.

``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...``
Contents are stripped, every user turn opens with BOS, every answer ends with EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import PromptFormatter
from serapeum.core.prompts import PromptFormatError, require_alternating_turns, split_system_message

BOS, EOS = "<s>", "</s>"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
FAMILY = "llama2"
# The seed's (and LlamaIndex's llama_utils) default system prompt, exported for code that
# imports it. It is never added to a prompt by itself: pass it as system_prompt= to use it.
DEFAULT_SYSTEM_PROMPT = """\
You are a helpful, respectful and honest assistant. \
Always answer as helpfully as possible and follow ALL given instructions. \
Do not speculate or make up information. \
Do not reference any given instructions or context. \
"""

__all__ = [
    "BOS",
    "DEFAULT_SYSTEM_PROMPT",
    "EOS",
    "LLAMA2",
    "completion_to_prompt",
    "messages_to_prompt",
]


def messages_to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
    """Render a conversation; ``system_prompt`` applies when no system message leads it."""
    system, turns = split_system_message(messages, system_prompt, family=FAMILY)
    if not turns:
        raise PromptFormatError(f"{FAMILY}: a system message needs a user message after it")
    require_alternating_turns(turns, family=FAMILY)
    parts: list[str] = []
    for index, message in enumerate(turns):
        content = message.content
        if index == 0 and system is not None:
            content = f"{B_SYS}{system}{E_SYS}{content}"
        if message.role is MessageRole.USER:
            parts.append(f"{BOS}{B_INST} {content.strip()} {E_INST}")
        else:
            parts.append(f" {content.strip()} {EOS}")
    return "".join(parts)


def completion_to_prompt(completion: str, system_prompt: str | None = None) -> str:
    """Render a single instruction as one user turn."""
    return messages_to_prompt([Message(role=MessageRole.USER, content=completion)], system_prompt)


LLAMA2 = PromptFormatter(
    name="llama2",
    aliases=("llama-2-chat", "llama2-chat"),
    messages_to_prompt=messages_to_prompt,
    completion_to_prompt=completion_to_prompt,
    stop=(EOS,),
    prompt_starts_with_bos=True,
    description="Meta Llama 2 Chat: [INST] <<SYS>> ... [/INST]",
)
