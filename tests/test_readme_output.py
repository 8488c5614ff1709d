"""The README's first example, run as a new user runs it: what it prints, line by line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _use_it_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Use it", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README's 'Use it' section has no python block"
    return match.group(1)


@pytest.mark.e2e_chat
def test_the_use_it_example_prints_each_answer_on_its_own_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _use_it_block()],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert done.stdout.endswith("\n")
    # the completion, the streamed completion (ended by its own newline), the chat answer
    assert len(lines) >= 3, done.stdout
    assert lines[-1] == "The capital of France is Paris."
    assert "Paris" not in "".join(lines[:-1])
