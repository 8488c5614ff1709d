"""Entry-point discovery of real installed distributions, and plugins that fail to import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serapeum.core.plugins import PluginHost, PluginLoadError


def test_installed_plugins_are_discovered(plugin_host: PluginHost) -> None:
    distributions = {info.distribution for info in plugin_host.plugins()}
    assert {
        "serapeum-llama-cpp",
        "serapeum-source-local",
        "serapeum-source-url",
        "serapeum-source-hf",
        "serapeum-formatters-llama",
        "serapeum-formatters-mistral",
        "serapeum-formatters-gemma",
        "serapeum-formatters-chatml",
    } <= distributions
    assert {"llama2", "llama3", "mistral", "gemma", "chatml"} <= set(plugin_host.formatters.names())
    assert plugin_host.formatters.entry("llama3").distribution == "serapeum-formatters-llama"
    assert plugin_host.formatters.entry("mistral").distribution == "serapeum-formatters-mistral"
    assert {"local", "url", "hf"} <= {entry.item.name for entry in plugin_host.sources}
    assert plugin_host.backends.names() == ["llama-cpp", "server"]
    assert plugin_host.backends.entry("server").distribution == "serapeum-backend-server"
    assert plugin_host.failures == []


def _write_distribution(site: Path, name: str, entry_points: str) -> None:
    """A real installed distribution's metadata, as pip would leave it in site-packages."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_plugin_that_fails_to_import_is_reported_and_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_distribution(
        tmp_path, "broken-plugin", "[serapeum]\nbroken = serapeum_no_such_module.plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost(strict=False)
    host.load_entry_points()
    assert [(f.plugin, f.distribution) for f in host.failures] == [("broken", "broken-plugin")]
    assert "serapeum_no_such_module" in host.failures[0].error
    assert {"llama2", "llama3", "mistral"} <= set(host.formatters.names())


def test_strict_mode_turns_an_import_failure_into_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_distribution(
        tmp_path, "broken-plugin", "[serapeum]\nbroken = serapeum_no_such_module.plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SERAPEUM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="broken-plugin"):
        PluginHost().load_entry_points()


THIRD_PARTY_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-formatters-pirate"
version = "0.0.1"

[project.entry-points.serapeum]
pirate = "acme_pirate"

[tool.hatch.build.targets.wheel]
packages = ["acme_pirate"]
"""

THIRD_PARTY_MODULE = """
from serapeum.core.plugins import PromptFormatter, hookimpl


def messages_to_prompt(messages, system_prompt=None):
    return "".join(f"{m.role.value} says: {m.content}\\n" for m in messages) + "pirate says:"


def completion_to_prompt(completion, system_prompt=None):
    return f"Arr! {completion}\\npirate says:"


@hookimpl
def serapeum_register_formatters():
    return [PromptFormatter(name="pirate", aliases=("arr",), messages_to_prompt=messages_to_prompt,
                            completion_to_prompt=completion_to_prompt, stop=("\\n",))]
"""

USE_IT = """
import sys
from serapeum.core.llms import Message
from serapeum.llama_cpp import LlamaCPP

llm = LlamaCPP(model_path=sys.argv[1], formatter="Pirate", temperature=0.0, max_new_tokens=8)
assert llm.formatter_name == "pirate", llm.formatter_name
assert llm.format_completion("hi") == "Arr! hi\\npirate says:"
answer = llm.complete("hi")
chat = llm.chat([Message.user("hello")])
print("OK", llm.formatter_name, answer.raw["usage"]["prompt_tokens"], chat.message.role.value)
"""


def test_third_party_distribution_installed_with_pip_is_selectable_by_name(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    project = tmp_path / "acme-formatters-pirate"
    (project / "acme_pirate").mkdir(parents=True)
    (project / "pyproject.toml").write_text(THIRD_PARTY_PYPROJECT)
    (project / "acme_pirate" / "__init__.py").write_text(THIRD_PARTY_MODULE)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
    )
    result = subprocess.run(
        [sys.executable, "-c", USE_IT, str(tiny_model_path)],
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK pirate ")
    # Without the distribution on the path the name is unknown, proving it came from pip.
    missing = subprocess.run(
        [sys.executable, "-c", USE_IT, str(tiny_model_path)], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no formatter named 'Pirate'" in missing.stderr


def test_plugin_whose_hook_signature_is_wrong_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "serapeum_bad_signature.py").write_text(
        "from serapeum.core.plugins import hookimpl\n\n"
        "@hookimpl\n"
        "def serapeum_register_formatters(unexpected_argument):\n"
        "    return []\n"
    )
    _write_distribution(tmp_path, "bad-signature", "[serapeum]\nbad = serapeum_bad_signature\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost(strict=False)
    host.load_entry_points()
    assert [(f.plugin, f.distribution) for f in host.failures] == [("bad", "bad-signature")]
    assert "unexpected_argument" in host.failures[0].error
    assert {"llama2", "llama3", "mistral"} <= set(host.formatters.names())


def test_an_entry_point_name_taken_by_another_distribution_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "serapeum_impostor.py").write_text("")
    _write_distribution(tmp_path, "impostor-source", "[serapeum]\nlocal = serapeum_impostor\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost(strict=False)
    host.load_entry_points()
    [failure] = host.failures  # whichever is found second is refused, naming the first
    names = {"impostor-source", "serapeum-source-local"}
    assert failure.distribution in names
    assert f"already taken by {(names - {failure.distribution}).pop()}" in failure.error


def test_disable_plugins_skips_them_and_lists_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERAPEUM_DISABLE_PLUGINS", "serapeum-formatters-gemma, chatml")
    host = PluginHost(strict=False)
    host.load_entry_points()
    names = set(host.formatters.names())
    assert "gemma" not in names and "chatml" not in names and "llama3" in names
    assert {(s.plugin, s.reason) for s in host.skipped} == {
        ("gemma", "listed in SERAPEUM_DISABLE_PLUGINS"),
        ("chatml", "listed in SERAPEUM_DISABLE_PLUGINS"),
    }


def test_load_plugins_is_an_allow_list_and_empty_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERAPEUM_LOAD_PLUGINS", "llama,serapeum-source-local")
    host = PluginHost(strict=False)
    host.load_entry_points()
    assert host.formatters.names() == ["llama2", "llama3"]
    assert [e.item.name for e in host.sources] == ["local"]
    assert host.backends.names() == ["llama-cpp"]  # the engine's built-ins always load
    monkeypatch.setenv("SERAPEUM_LOAD_PLUGINS", "")
    nothing = PluginHost(strict=False)
    nothing.load_entry_points()
    assert nothing.formatters.names() == [] and nothing.backends.names() == ["llama-cpp"]
    assert all(s.reason == "not listed in SERAPEUM_LOAD_PLUGINS" for s in nothing.skipped)


def _docs_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    return [
        block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith(language)
    ]


USE_ZEPHYR = """
from serapeum.core.plugins import PluginHost

host = PluginHost(strict=True)
host.load_entry_points()
entry = host.formatters.entry("zephyr-beta")
print(entry.distribution, entry.item.render_completion("Hi"))
"""


def test_the_guide_s_pyproject_installs_a_working_plugin(tmp_path: Path) -> None:
    """docs/plugins.md's whole pyproject.toml and formatter code, built and installed by pip."""
    [pyproject] = [b for b in _docs_blocks("toml") if b.startswith("[build-system]")]
    module = _docs_blocks("python")[0]  # the formatter plugin
    project = tmp_path / "serapeum-formatters-zephyr"
    package = project / "src" / "serapeum_formatters_zephyr"
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text(pyproject)
    (package / "__init__.py").write_text(module)
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--target", str(target), str(project)),
        ],
        check=True,
        timeout=300,
    )
    result = subprocess.run(
        [sys.executable, "-c", USE_ZEPHYR],
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n", 1)[0] == "serapeum-formatters-zephyr <|user|>"
