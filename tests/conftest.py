from __future__ import annotations

from pathlib import Path

import pytest

from serapeum.llama_cpp import LlamaCPP


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_path: Path) -> LlamaCPP:
    """One reusable instance on the tiny model, greedy so outputs are reproducible."""
    return LlamaCPP(model_path=str(tiny_model_path), formatter="llama2", temperature=0.0)
