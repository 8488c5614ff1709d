"""A misspelled hook in an installed plugin is reported, never loaded silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serapeum.core.plugins import PluginHost, PluginLoadError, PluginValidationError

MISSPELLED = """
from serapeum.core.plugins import PromptFormatter, hookimpl


def messages_to_prompt(messages, system_prompt=None):
    return "".join(m.content for m in messages)


def completion_to_prompt(completion, system_prompt=None):
    return completion


@hookimpl
def serapeum_register_formatter():  # the hook is serapeum_register_formatterS
    return [PromptFormatter(name="typo", messages_to_prompt=messages_to_prompt,
                            completion_to_prompt=completion_to_prompt)]
"""


def _install(site: Path) -> None:
    """A real installed distribution (its module plus .dist-info), as pip leaves it."""
    (site / "serapeum_typo_plugin.py").write_text(MISSPELLED)
    info = site / "typo_formatter-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: typo-formatter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[serapeum]\ntypo = serapeum_typo_plugin\n")


@pytest.fixture
def typo_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_misspelled_hook_is_a_problem_on_that_plugin(typo_site: Path) -> None:
    host = PluginHost(strict=False)
    host.load_entry_points()
    [failure] = host.failures
    assert (failure.plugin, failure.distribution) == ("typo", "typo-formatter")
    assert "unknown hook 'serapeum_register_formatter'" in failure.error
    assert "did you mean 'serapeum_register_formatters'?" in failure.error
    assert "typo" not in host.formatters.names()
    assert {"llama3", "chatml"} <= set(host.formatters.names())  # the others still load


def test_strict_mode_raises_on_a_misspelled_hook(typo_site: Path) -> None:
    host = PluginHost(strict=True)
    with pytest.raises(
        PluginLoadError, match="did you mean 'serapeum_register_formatters'"
    ) as info:
        host.load_entry_points()
    assert isinstance(info.value.__cause__, PluginValidationError)
    assert "typo" not in {plugin.name for plugin in host.plugins()}


def test_a_hook_registered_in_code_is_checked_too() -> None:
    import types

    module = types.ModuleType("in_code")
    exec(MISSPELLED, module.__dict__)
    host = PluginHost(strict=False)
    host.register(module, name="in-code")
    assert "did you mean 'serapeum_register_formatters'" in host.failures[0].error
    with pytest.raises(PluginLoadError, match="unknown hook"):
        PluginHost(strict=True).register(module, name="in-code")


def test_the_plugins_command_shows_the_misspelling(typo_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(typo_site), *sys.path])}
    env.pop("SERAPEUM_STRICT_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert line.startswith("typo-formatter  [typo]: FAILED: unknown hook")
    assert "did you mean 'serapeum_register_formatters'?" in line
    strict = subprocess.run(
        [sys.executable, "-m", "serapeum.llama_cpp", "plugins"],
        env={**env, "SERAPEUM_STRICT_PLUGINS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert strict.returncode != 0
    assert "did you mean 'serapeum_register_formatters'?" in strict.stderr
