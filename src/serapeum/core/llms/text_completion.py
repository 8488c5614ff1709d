"""A prompt template, an LLM and an output parser: call it, get a typed value."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from attrs import define, field

from serapeum.core.errors import ConfigurationError
from serapeum.core.llms.base import BaseLLM
from serapeum.core.llms.types import ChatResponse, CompletionResponse, Message, MessageRole
from serapeum.core.output_parsers.base import BaseOutputParser

__all__ = ["TextCompletionLLM", "parser_for"]

T = TypeVar("T")


def parser_for(output_cls: type[Any]) -> BaseOutputParser[Any]:
    """The parser for a pydantic model class or an attrs class."""
    import attrs

    if attrs.has(output_cls):
        from serapeum.core.output_parsers.attrs_parser import AttrsParser

        return AttrsParser(output_cls)
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - depends on the environment
        BaseModel = None  # type: ignore[assignment,misc]
    if BaseModel is not None and isinstance(output_cls, type) and issubclass(output_cls, BaseModel):
        from serapeum.core.output_parsers.pydantic_parser import PydanticParser

        return PydanticParser(output_cls)
    raise ConfigurationError(
        f"output_cls must be a pydantic model class or an attrs class, got {output_cls!r}"
    )


BRACES_HINT = (
    "literal braces (JSON examples, code) must be doubled in a str.format template: "
    'write {{"name": "Ada"}} to get {"name": "Ada"}'
)


def _looks_like_literal_text(name: str) -> bool:
    """A field no one would name so: empty or a number (positional), quotes, a colon, spaces
    or a newline (JSON or code written with single braces)."""
    return not name or name.isdigit() or any(ch in name for ch in "\"': \n\t{}")


def _template_fields(template: str) -> set[str]:
    """The keyword names the template needs (``{a.b}`` and ``{a[0]}`` need ``a``)."""
    try:
        return {
            re.split(r"[.\[]", name, maxsplit=1)[0] if _is_name_path(name) else name
            for _, name, _, _ in string.Formatter().parse(template)
            if name is not None
        }
    except ValueError as exc:
        raise ConfigurationError(
            f"prompt is not a valid str.format template: {exc}; {BRACES_HINT}"
        ) from exc


def _is_name_path(name: str) -> bool:
    return re.match(r"[A-Za-z_]\w*[.\[]", name) is not None


@define
class TextCompletionLLM(Generic[T]):
    """Format ``prompt`` with the call's keywords, ask ``llm``, parse into the output class.

    Give ``output_parser`` or ``output_cls`` (a pydantic model or attrs class, whose parser is
    then chosen for you). When the LLM can constrain decoding to a JSON Schema
    (``supports_json_schema``) the parser's schema is passed along, so the answer parses by
    construction; ``constrained=False`` only asks nicely (the format instructions).
    """

    prompt: str
    output_parser: BaseOutputParser[T] | None = None
    output_cls: type[T] | None = None
    llm: BaseLLM | None = None
    constrained: bool = field(default=True, kw_only=True)
    _parser: BaseOutputParser[T] = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ConfigurationError(f"prompt must be a str template, got {self.prompt!r}")
        _template_fields(self.prompt)
        if self.llm is None:
            raise ConfigurationError("TextCompletionLLM needs an LLM: pass llm=LlamaCPP(...)")
        if self.output_parser is None and self.output_cls is None:
            raise ConfigurationError("give output_parser= or output_cls= (the class to return)")
        if self.output_parser is None:
            assert self.output_cls is not None
            self._parser = parser_for(self.output_cls)
            return
        parsed_cls = getattr(self.output_parser, "output_cls", None)
        if (
            self.output_cls is not None
            and parsed_cls is not None
            and parsed_cls is not self.output_cls
        ):
            raise ConfigurationError(
                f"output_cls {self.output_cls.__name__} differs from the parser's "
                f"{parsed_cls.__name__}; give one of them"
            )
        self._parser = self.output_parser

    @property
    def parser(self) -> BaseOutputParser[T]:
        """The output parser in use (given, or chosen for ``output_cls``)."""
        return self._parser

    def _prompt_text(self, values: Mapping[str, Any]) -> str:
        missing = sorted(_template_fields(self.prompt) - set(values))
        if missing:
            names = [name for name in missing if not _looks_like_literal_text(name)]
            literal = [name for name in missing if _looks_like_literal_text(name)]
            message = f"the prompt template needs {', '.join(name or '{}' for name in missing)}"
            if names:
                message += ": call with " + ", ".join(f"{name}=..." for name in names)
            if literal:
                message += f" ({'{' + literal[0] + '}'} looks like literal text: {BRACES_HINT})"
            raise ConfigurationError(message)
        return self._parser.format(self.prompt.format(**values))

    def _llm_kwargs(self, llm: BaseLLM, llm_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(llm_kwargs or {})
        schema = self._parser.json_schema
        if self.constrained and schema is not None and llm.supports_json_schema:
            kwargs.setdefault("json_schema", schema)
        return kwargs

    def __call__(self, llm_kwargs: Mapping[str, Any] | None = None, **values: Any) -> T:
        """Fill the prompt with ``values``, ask the LLM, return the parsed answer.

        ``llm_kwargs`` are generation options for the LLM (``GenerationOptions``); a chat
        model is asked through ``chat``, a completion model through ``complete``. Raises
        ``ConfigurationError`` when a placeholder has no value, ``OutputParserError`` when
        the answer does not parse.
        """
        llm = self.llm
        assert llm is not None
        text = self._prompt_text(values)
        kwargs = self._llm_kwargs(llm, llm_kwargs)
        if llm.metadata.is_chat_model:
            chat = llm.chat([Message(role=MessageRole.USER, content=text)], **kwargs)
            assert isinstance(chat, ChatResponse)
            return self._parser.parse(chat.message.content)
        completion = llm.complete(text, **kwargs)
        assert isinstance(completion, CompletionResponse)
        return self._parser.parse(completion.text)

    async def acall(self, llm_kwargs: Mapping[str, Any] | None = None, **values: Any) -> T:
        """``__call__`` without blocking the event loop."""
        llm = self.llm
        assert llm is not None
        text = self._prompt_text(values)
        kwargs = self._llm_kwargs(llm, llm_kwargs)
        if llm.metadata.is_chat_model:
            chat = await llm.achat([Message(role=MessageRole.USER, content=text)], **kwargs)
            assert isinstance(chat, ChatResponse)
            return self._parser.parse(chat.message.content)
        completion = await llm.acomplete(text, **kwargs)
        assert isinstance(completion, CompletionResponse)
        return self._parser.parse(completion.text)
