"""A prompt formatter from the chat template a GGUF file carries, rendered in a bounded sandbox.

The template is untrusted input from a downloaded file. It is compiled and rendered by the
sandbox in ``serapeum.llama_cpp.template_sandbox``, whose bounds (time and steps, the size
of every value, the characters a render may create) no template can walk around; see that
package for how. This module is its public face: it renders a conversation and makes a
``PromptFormatter`` of a template, and turns every failure, whatever Python raised inside,
into ``ChatTemplateError``.

The bounds scale with the conversation (a multiple of its size, or the base limits,
whichever is larger), so long real conversations still render.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from typing import Any

from jinja2.exceptions import SecurityError, TemplateSyntaxError

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelInfo, PromptFormatter
from serapeum.llama_cpp.errors import ChatTemplateError
from serapeum.llama_cpp.template_sandbox.budget import CURRENT, Budget
from serapeum.llama_cpp.template_sandbox.environment import shared_environment
from serapeum.llama_cpp.template_sandbox.filters import _Refusal
from serapeum.llama_cpp.template_sandbox.limits import (
    ALLOCATED_PER_INPUT as ALLOCATED_PER_INPUT,
)
from serapeum.llama_cpp.template_sandbox.limits import (
    MAX_ALLOCATED_CHARS,
    MAX_INT_BITS,
    MAX_OUTPUT_CHARS,
    MAX_SECONDS,
    MAX_STEPS,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_DEPTH,
    MAX_TEMPLATE_TOKENS,
    MAX_VALUE_CHARS,
    MAX_VALUE_DEPTH,
    Limits,
    _Stop,
)
from serapeum.llama_cpp.template_sandbox.limits import (
    SECONDS_PER_MILLION_CHARS as SECONDS_PER_MILLION_CHARS,
)
from serapeum.llama_cpp.template_sandbox.limits import SLOW_FILTER_CHARS as SLOW_FILTER_CHARS
from serapeum.llama_cpp.template_sandbox.limits import VALUE_PER_INPUT as VALUE_PER_INPUT

__all__ = [
    "MAX_ALLOCATED_CHARS",
    "MAX_INT_BITS",
    "MAX_OUTPUT_CHARS",
    "MAX_SECONDS",
    "MAX_STEPS",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_TEMPLATE_TOKENS",
    "MAX_VALUE_CHARS",
    "MAX_VALUE_DEPTH",
    "ChatTemplateError",
    "render_chat_template",
    "template_formatter",
]

# Kept for old imports, as are the bounds imported above with `as` (explicit re-exports).
MAX_STRING = MAX_VALUE_CHARS
MAX_CALLS = MAX_STEPS

_ADVICE = (
    "pass formatter= (an installed formatter's name or a PromptFormatter) to format "
    "prompts without the model's template"
)


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    return shared_environment().from_string(template)


def _compile(template: str) -> Any:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(
            f"the model's chat template is {len(template):,} characters (limit "
            f"{MAX_TEMPLATE_CHARS:,}); refusing it: {_ADVICE}"
        )
    try:
        return _compiled(template)
    except Exception as exc:
        raise _template_error(exc, compiling=True) from _without_traceback(exc)


def _without_traceback(exc: BaseException) -> BaseException:
    # The traceback holds the render's frames and every value they built; drop it so an
    # error kept by the caller does not keep them alive.
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)


def _template_error(exc: BaseException, *, compiling: bool = False) -> ChatTemplateError:
    detail = str(exc)
    if len(detail) > 300:
        detail = detail[:300] + "..."
    if isinstance(exc, _Refusal):
        return ChatTemplateError(
            f"the chat template refused the conversation: {detail}; change the conversation, "
            f"or {_ADVICE}"
        )
    if isinstance(exc, _Stop | SecurityError):
        what = f"was stopped by the sandbox ({detail})"
    elif isinstance(exc, RecursionError):
        what = "nests or recurses too deeply to " + ("compile" if compiling else "render")
    elif isinstance(exc, MemoryError):
        what = "ran out of memory"
    elif isinstance(exc, TemplateSyntaxError):
        what = f"does not compile (line {exc.lineno}: {detail})"
    elif compiling:
        what = f"does not compile ({type(exc).__name__}: {detail})"
    else:
        what = f"failed ({type(exc).__name__}: {detail})"
    return ChatTemplateError(f"the model's chat template {what}; {_ADVICE}")


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``template`` as Hugging Face does, within the sandbox's bounds.

    Raises ``ChatTemplateError`` for anything that goes wrong: a template that does not
    compile, refuses the conversation (``raise_exception``), fails, or reaches a bound.
    """
    start = time.monotonic()  # compiling (once per template) counts against the time limit
    compiled = _compile(template)
    turns = [{"role": m.role.value, "content": m.content} for m in messages]
    chars = sum(len(turn["content"]) + len(turn["role"]) for turn in turns)
    budget = Budget(Limits.for_input(chars + len(bos_token) + len(eos_token), len(turns)), start)
    token = CURRENT.set(budget)
    pieces: Iterator[str] | None = None
    try:
        pieces = compiled.generate(
            messages=turns,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
        out: list[str] = []
        for piece in pieces:
            budget.emit(len(piece))
            out.append(piece)
        return "".join(out)
    except Exception as exc:
        raise _template_error(exc) from _without_traceback(exc)
    finally:
        if pieces is not None:
            pieces.close()  # type: ignore[attr-defined]
        CURRENT.reset(token)


def _refused(error: ChatTemplateError) -> bool:
    return isinstance(error.__cause__, _Refusal)


_TEST_CONVERSATIONS: tuple[tuple[Message, ...], ...] = (
    (Message.user("Hello"),),
    (Message.system("Be brief."), Message.user("Hello")),
    (Message.user("Hello"), Message.assistant("Hi."), Message.user("Again")),
    (
        Message.system("Be brief."),
        Message.user("Hello"),
        Message.assistant("Hi."),
        Message.user("Again"),
    ),
)


def _check_template(template: str, info: ModelInfo) -> None:
    """Render a few conversation shapes now, so a broken template fails at construction.

    The one-message conversation must render. Other shapes may be refused through
    ``raise_exception`` (many templates refuse a system message, or check alternation);
    any other failure is an error now rather than at the first ``chat()``.
    """
    for index, conversation in enumerate(_TEST_CONVERSATIONS):
        try:
            render_chat_template(
                template, conversation, bos_token=info.bos_token, eos_token=info.eos_token
            )
        except ChatTemplateError as exc:
            if index and _refused(exc):
                continue
            if not index:
                raise
            shape = ", ".join(m.role.value for m in conversation)
            raise ChatTemplateError(f"{exc} (rendering a test conversation: {shape})") from (
                exc.__cause__
            )


def template_formatter(info: ModelInfo) -> PromptFormatter:
    """A formatter that renders the chat template in ``info`` (which must have one)."""
    template = info.chat_template
    if not template:
        raise ChatTemplateError("the model carries no chat template")
    _check_template(template, info)  # fail now, not at the first call

    def to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
        turns = list(messages)
        if system_prompt is not None and (not turns or turns[0].role is not MessageRole.SYSTEM):
            turns.insert(0, Message(role=MessageRole.SYSTEM, content=system_prompt))
        return render_chat_template(
            template, turns, bos_token=info.bos_token, eos_token=info.eos_token
        )

    def completion(text: str, system_prompt: str | None = None) -> str:
        return to_prompt([Message(role=MessageRole.USER, content=text)], system_prompt)

    stops = tuple(t for t in (info.eot_token, info.eos_token) if t)
    return PromptFormatter(
        name="gguf-chat-template",
        messages_to_prompt=to_prompt,
        completion_to_prompt=completion,
        stop=tuple(dict.fromkeys(stops)),
        prompt_starts_with_bos=bool(info.bos_token) and info.bos_token in template,
        description="the chat template embedded in the GGUF file, rendered in a sandbox",
    )
