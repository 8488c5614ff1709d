"""llama.cpp's native log is quiet unless verbose=True (checked on the real stderr of a process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LOAD_AND_COMPLETE = """
import sys
from serapeum.llama_cpp import LlamaCPP
llm = LlamaCPP(model_path=sys.argv[1], formatter="llama2", verbose=sys.argv[2] == "1")
llm.complete("hello", max_new_tokens=4)
print("done")
"""


def _stderr(model: Path, verbose: bool) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_COMPLETE, str(model), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "done"
    return result.stderr


def test_quiet_by_default(tiny_model_path: Path) -> None:
    assert _stderr(tiny_model_path, verbose=False) == ""


@pytest.mark.e2e
def test_quiet_by_default_on_a_model_that_makes_llama_cpp_warn(gemma_model_path: Path) -> None:
    # Loading Gemma 3 makes llama.cpp log a warning about its sliding-window cache, which
    # llama-cpp-python's own log filter lets through even with verbose=False.
    assert _stderr(gemma_model_path, verbose=False) == ""
    assert "SWA" in _stderr(gemma_model_path, verbose=True)


def test_verbose_shows_llama_cpp_log(tiny_model_path: Path) -> None:
    assert "llama_model_loader" in _stderr(tiny_model_path, verbose=True)


CANCEL_DURING_PROMPT = """
import sys, threading
from serapeum.core.cancellation import CancelToken
from serapeum.llama_cpp import LlamaCPP
llm = LlamaCPP(model_path=sys.argv[1], formatter="gemma", context_window=4096, verbose=False)
cancel = CancelToken()
threading.Timer(0.3, cancel.set).start()
result = llm.complete("one two three " * 900, max_new_tokens=4, cancel=cancel)
print(result.finish_reason.value, result.usage.completion_tokens)
"""


@pytest.mark.e2e
def test_a_cancelled_prompt_evaluation_prints_nothing(gemma_model_path: Path) -> None:
    # llama.cpp logs "llama_decode: failed to decode" at error level when the abort
    # callback stops a prompt; the engine reports the cancellation itself.
    result = subprocess.run(
        [sys.executable, "-c", CANCEL_DURING_PROMPT, str(gemma_model_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["cancelled", "0"], result.stdout
    assert result.stderr == ""
