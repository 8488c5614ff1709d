"""Find the JSON value in model output that wraps it in prose or code fences."""

from __future__ import annotations

import json
import re
from typing import Any

from serapeum.core.output_parsers.errors import OutputParserError

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """Return the first JSON object or array in ``text`` (fenced blocks first)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for index, char in enumerate(candidate):
            if char not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(candidate, index)
            except json.JSONDecodeError:
                continue
            return value
    raise OutputParserError("no JSON object or array found in the model output", raw_text=text)
