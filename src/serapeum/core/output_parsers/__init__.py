"""Output parsers: turn model text into typed values."""

from serapeum.core.output_parsers.attrs_parser import AttrsParser
from serapeum.core.output_parsers.attrs_schema import attrs_json_schema
from serapeum.core.output_parsers.base import BaseOutputParser
from serapeum.core.output_parsers.errors import OutputParserError
from serapeum.core.output_parsers.json_text import extract_json
from serapeum.core.output_parsers.pydantic_parser import PydanticParser

__all__ = [
    "AttrsParser",
    "BaseOutputParser",
    "OutputParserError",
    "PydanticParser",
    "attrs_json_schema",
    "extract_json",
]
