"""A prompt formatter from the chat template a GGUF file carries, rendered in a sandbox.

The template is untrusted input from a downloaded file. It is rendered by Jinja2's
``ImmutableSandboxedEnvironment`` (no attribute walks to Python internals, no mutation
of the values passed in) with bounds on time, output size, string growth and the number
of calls, so a hostile template fails with ``ChatTemplateError`` and runs nothing else.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from serapeum.core.errors import SerapeumError
from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelInfo, PromptFormatter

MAX_TEMPLATE_CHARS = 100_000
MAX_OUTPUT_CHARS = 1_000_000
MAX_SECONDS = 1.0
MAX_CALLS = 100_000
MAX_STRING = 1_000_000


class ChatTemplateError(SerapeumError, ValueError):
    """The model's chat template is unusable, unsafe, or refused the conversation."""


def _sandbox() -> Any:
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """Counts calls and checks the clock, and caps string and list growth."""

        intercepted_binops = frozenset({"*", "**", "+"})

        def __init__(self) -> None:
            super().__init__(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            self.deadline = 0.0
            self.calls = 0

        def budget(self) -> None:
            self.calls += 1
            if self.calls > MAX_CALLS or time.monotonic() > self.deadline:
                raise SecurityError("the template ran too long")

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # Jinja would return a silent Undefined; a template that reaches for Python
            # internals is hostile, so refuse it outright.
            raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

        def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            self.budget()
            return super().call(__context, __obj, *args, **kwargs)

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            self.budget()
            if operator_name == "**":
                raise SecurityError("the template used **")
            sequences = (str, list, tuple)
            if operator_name == "*" and (
                isinstance(left, sequences) or isinstance(right, sequences)
            ):
                size = len(left if isinstance(left, sequences) else right)
                count = right if isinstance(left, sequences) else left
                if isinstance(count, int) and size * count > MAX_STRING:
                    raise SecurityError("the template built an oversized value")
            result = {"*": operator.mul, "+": operator.add}[operator_name](left, right)
            if isinstance(result, str | list) and len(result) > MAX_STRING:
                raise SecurityError("the template built an oversized value")
            return result

    return BoundedSandbox()


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``template`` as Hugging Face does, within the sandbox's bounds."""
    from jinja2.exceptions import SecurityError, TemplateError

    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"the chat template is {len(template)} characters; refusing it")
    environment = _sandbox()
    environment.globals.update(
        raise_exception=_raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(str(fmt)[:100]),
    )
    try:
        compiled = environment.from_string(template)
        environment.deadline = time.monotonic() + MAX_SECONDS
        pieces: list[str] = []
        size = 0
        for piece in compiled.generate(
            messages=[{"role": m.role.value, "content": m.content} for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        ):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS or time.monotonic() > environment.deadline:
                raise SecurityError("the template produced too much output or ran too long")
            pieces.append(piece)
        return "".join(pieces)
    except ChatTemplateError:
        raise
    except SecurityError as exc:
        raise ChatTemplateError(
            f"the model's chat template was stopped by the sandbox ({exc}); pass formatter= "
            "or formatter functions instead of relying on it"
        ) from exc
    except (TemplateError, RecursionError, TypeError, ValueError, LookupError) as exc:
        raise ChatTemplateError(f"the model's chat template failed: {exc!r}") from exc


def template_formatter(info: ModelInfo) -> PromptFormatter:
    """A formatter that renders the chat template in ``info`` (which must have one)."""
    template = info.chat_template
    if not template:
        raise ChatTemplateError("the model carries no chat template")
    render_chat_template(
        template, [Message.user("test")], bos_token=info.bos_token, eos_token=info.eos_token
    )  # fail now, not at the first call

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
