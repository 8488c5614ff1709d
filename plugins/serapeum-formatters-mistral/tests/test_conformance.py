"""This plugin's formatters pass serapeum's conformance kit (real tiny-model round trip)."""

from __future__ import annotations

import pytest

from serapeum.core.plugins import PromptFormatter
from serapeum.llama_cpp.testing.conformance import check_formatter
from serapeum_formatters_mistral import MISTRAL

FORMATTERS = [MISTRAL]


@pytest.mark.parametrize("formatter", FORMATTERS, ids=[f.name for f in FORMATTERS])
def test_conforms(formatter: PromptFormatter) -> None:
    report = check_formatter(formatter)
    assert report.completion_tokens >= 1
