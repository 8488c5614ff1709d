"""Parse model output into a pydantic model (pydantic is an optional dependency)."""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

from serapeum.core.output_parsers.base import BaseOutputParser
from serapeum.core.output_parsers.errors import OutputParserError
from serapeum.core.output_parsers.json_text import extract_json

M = TypeVar("M")

FORMAT_INSTRUCTIONS = (
    "\n\nAnswer with one JSON object, and nothing else, that matches this JSON Schema:\n{schema}\n"
)


class PydanticParser(BaseOutputParser[M], Generic[M]):
    """Output parser for a pydantic v2 model class."""

    def __init__(self, output_cls: type[M]) -> None:
        try:
            from pydantic import BaseModel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("PydanticParser needs pydantic: pip install pydantic") from exc
        if not (isinstance(output_cls, type) and issubclass(output_cls, BaseModel)):
            raise TypeError(f"PydanticParser needs a pydantic model class, got {output_cls!r}")
        self.output_cls = output_cls

    @property
    def json_schema(self) -> dict[str, Any]:
        return self.output_cls.model_json_schema()  # type: ignore[attr-defined,no-any-return]

    def format(self, prompt: str) -> str:
        schema = json.dumps(self.json_schema)
        return prompt + FORMAT_INSTRUCTIONS.format(schema=schema)

    def parse(self, text: str) -> M:
        from pydantic import ValidationError

        data = extract_json(text)
        try:
            return self.output_cls.model_validate(data)  # type: ignore[attr-defined,no-any-return]
        except ValidationError as exc:
            raise OutputParserError(
                f"output does not match {self.output_cls.__name__}: {exc}", raw_text=text
            ) from exc
