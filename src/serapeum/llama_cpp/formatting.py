"""How an engine turns messages and instructions into prompt text.

Resolves the user's choice (seed-style callables, a formatter name, or a
``PromptFormatter``) once, at construction, into one ``PromptWriter``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelInfo, PluginHost, PromptFormatter
from serapeum.llama_cpp.errors import MissingFormatterError

logger = logging.getLogger("serapeum.llama_cpp")


def _accepts_system_prompt(function: Callable[..., str]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume the seed's
        return True
    return "system_prompt" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


@frozen
class PromptWriter:
    """Writes prompts for one model, with the system prompt applied."""

    messages_to_prompt: Callable[..., str]
    completion_to_prompt: Callable[..., str]
    system_prompt: str | None
    stop: tuple[str, ...]
    formatter_name: str | None
    messages_take_system: bool
    completion_takes_system: bool

    def messages(self, messages: Sequence[Message]) -> str:
        if self.messages_take_system:
            return self.messages_to_prompt(messages, system_prompt=self.system_prompt)
        if self.system_prompt is not None and (
            not messages or messages[0].role is not MessageRole.SYSTEM
        ):
            messages = [Message(role=MessageRole.SYSTEM, content=self.system_prompt), *messages]
        return self.messages_to_prompt(messages)

    def completion(self, prompt: str) -> str:
        if self.completion_takes_system:
            return self.completion_to_prompt(prompt, system_prompt=self.system_prompt)
        return self.completion_to_prompt(prompt)


def build_prompt_writer(
    *,
    formatter: str | PromptFormatter | None,
    messages_to_prompt: Callable[..., str] | None,
    completion_to_prompt: Callable[..., str] | None,
    system_prompt: str | None,
    plugins: PluginHost,
) -> PromptWriter:
    """Pick the functions that write prompts; explicit functions override the formatter's."""
    chosen: PromptFormatter | None
    if isinstance(formatter, str):
        chosen = plugins.formatters.get(formatter)
    elif formatter is None or isinstance(formatter, PromptFormatter):
        chosen = formatter
    else:
        raise ConfigurationError(
            f"formatter must be a registered name or a PromptFormatter, got {formatter!r}"
        )
    to_messages = messages_to_prompt or (chosen.messages_to_prompt if chosen else None)
    to_completion = completion_to_prompt or (chosen.completion_to_prompt if chosen else None)
    if to_messages is None or to_completion is None:
        missing = " and ".join(
            name
            for name, value in (
                ("messages_to_prompt", to_messages),
                ("completion_to_prompt", to_completion),
            )
            if value is None
        )
        installed = ", ".join(plugins.formatters.names()) or "none installed"
        raise MissingFormatterError(
            f"missing prompt formatters: LlamaCPP needs {missing} to write prompts in the "
            f"model's format. Pass formatter='<name>' (installed formatters: {installed}), "
            "a PromptFormatter, or both messages_to_prompt= and completion_to_prompt= functions"
        )
    messages_take_system = _accepts_system_prompt(to_messages)
    completion_takes_system = _accepts_system_prompt(to_completion)
    if system_prompt is not None and not completion_takes_system:
        raise ConfigurationError(
            "system_prompt is set but completion_to_prompt takes no system_prompt argument, so "
            "complete() would drop it; give the function a `system_prompt=None` parameter"
        )
    return PromptWriter(
        messages_to_prompt=to_messages,
        completion_to_prompt=to_completion,
        system_prompt=system_prompt,
        stop=chosen.stop if chosen else (),
        formatter_name=chosen.name if chosen else None,
        messages_take_system=messages_take_system,
        completion_takes_system=completion_takes_system,
    )


def explicit_choice(
    formatter: object, messages_to_prompt: object, completion_to_prompt: object
) -> bool:
    """Whether the user chose how to write every prompt (otherwise the model's format is
    detected, and one function given alone replaces the detected format's for its kind)."""
    return formatter is not None or (
        messages_to_prompt is not None and completion_to_prompt is not None
    )


def detect_formatter(info: ModelInfo, plugins: PluginHost) -> tuple[PromptFormatter, str]:
    """Pick the model's prompt format: a plugin that recognises it, else its own chat template.

    Returns the formatter and why it was chosen. Never falls back to a guess.
    """
    for entry in plugins.formatters:
        detect = entry.item.detect
        if detect is None:
            continue
        try:
            recognised = detect(info)
        except Exception:
            logger.warning(
                "formatter %r failed to inspect the model", entry.item.name, exc_info=True
            )
            continue
        if recognised:
            return entry.item, (
                f"the {entry.item.name!r} formatter from {entry.distribution} recognised the model "
                f"(architecture {info.architecture!r}, name {info.name!r})"
            )
    if info.chat_template:
        from serapeum.llama_cpp.chat_template import template_formatter

        return template_formatter(info), "the chat template embedded in the GGUF file"
    installed = ", ".join(plugins.formatters.names()) or "none installed"
    raise MissingFormatterError(
        f"missing prompt formatters: no installed formatter recognises this model "
        f"(architecture {info.architecture!r}, name {info.name!r}) and the model (its file, "
        f"or its server) gives no chat template. Pass formatter='<name>' (installed formatters: {installed}), a "
        "PromptFormatter, or both messages_to_prompt= and completion_to_prompt= functions"
    )
