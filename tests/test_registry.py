"""Unit tests of registries and the plugin host (fresh hosts, no global state)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serapeum.core.plugins import (
    PluginConflictError,
    PluginHost,
    PluginLoadError,
    PromptFormatter,
    UnknownPluginError,
    hookimpl,
    normalize_name,
)


def _formatter(name: str, *aliases: str) -> PromptFormatter:
    return PromptFormatter(
        name=name,
        aliases=aliases,
        messages_to_prompt=lambda messages, system_prompt=None: "m",
        completion_to_prompt=lambda completion, system_prompt=None: "c",
    )


def _plugin(*formatters: PromptFormatter) -> object:
    class Plugin:
        @hookimpl
        def serapeum_register_formatters(self) -> list[PromptFormatter]:
            return list(formatters)

    return Plugin()


def test_names_compare_without_case_dash_or_underscore() -> None:
    assert normalize_name("Llama-3") == normalize_name("llama_3") == normalize_name("LLAMA3")


def test_lookup_by_name_and_alias() -> None:
    host = PluginHost(strict=False)
    fmt = _formatter("acme", "acme-chat")
    host.register(_plugin(fmt), name="acme", distribution="acme-formatters")
    assert host.formatters.get("ACME") is fmt
    assert host.formatters.get("acme_chat") is fmt
    assert host.formatters.entry("acme").distribution == "acme-formatters"


def test_conflict_names_both_distributions() -> None:
    host = PluginHost(strict=False)
    host.register(_plugin(_formatter("llama3")), name="a", distribution="dist-one")
    host.register(_plugin(_formatter("Llama-3")), name="b", distribution="dist-two")
    with pytest.raises(PluginConflictError) as info:
        host.formatters.get("llama3")
    assert "dist-one" in str(info.value) and "dist-two" in str(info.value)


def test_conflict_does_not_hide_unrelated_names() -> None:
    host = PluginHost(strict=False)
    other = _formatter("other")
    host.register(_plugin(_formatter("x"), other), name="a", distribution="dist-one")
    host.register(_plugin(_formatter("x")), name="b", distribution="dist-two")
    assert host.formatters.get("other") is other


def test_strict_mode_raises_on_conflict_when_building() -> None:
    host = PluginHost(strict=True)
    host.register(_plugin(_formatter("x")), name="a", distribution="dist-one")
    host.register(_plugin(_formatter("x")), name="b", distribution="dist-two")
    with pytest.raises(PluginConflictError):
        _ = host.formatters


def test_unknown_name_suggests_and_lists() -> None:
    host = PluginHost(strict=False)
    host.register(_plugin(_formatter("llama3"), _formatter("mistral")), name="a", distribution="d")
    with pytest.raises(UnknownPluginError) as info:
        host.formatters.get("llama-4")
    message = str(info.value)
    assert "Did you mean 'llama3'" in message
    assert "Choose one of: llama3, mistral" in message
    assert isinstance(info.value, LookupError) and isinstance(info.value, ValueError)


def test_unregister_rebuilds_the_registry() -> None:
    host = PluginHost(strict=False)
    host.register(_plugin(_formatter("acme")), name="acme")
    assert "acme" in host.formatters
    host.unregister("acme")
    assert "acme" not in host.formatters


def test_failing_hook_is_recorded_and_others_survive() -> None:
    host = PluginHost(strict=False)

    class Broken:
        @hookimpl
        def serapeum_register_formatters(self) -> list[PromptFormatter]:
            raise RuntimeError("boom")

    host.register(Broken(), name="broken", distribution="broken-dist")
    host.register(_plugin(_formatter("good")), name="good", distribution="good-dist")
    assert host.formatters.names() == ["good"]
    assert [(f.plugin, f.distribution) for f in host.failures] == [("broken", "broken-dist")]
    assert "boom" in host.failures[0].error


def test_wrong_descriptor_type_is_rejected_with_the_plugin_named() -> None:
    host = PluginHost(strict=True)

    class Wrong:
        @hookimpl
        def serapeum_register_formatters(self) -> list[object]:
            return [SimpleNamespace(name="fake")]

    host.register(Wrong(), name="wrong", distribution="wrong-dist")
    with pytest.raises(PluginLoadError, match=r"wrong-dist.*expected PromptFormatter"):
        _ = host.formatters


def test_descriptor_requires_a_name() -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        _formatter("  ")


def test_plugin_listing_shows_distribution_and_hooks() -> None:
    host = PluginHost(strict=False)
    host.register(_plugin(_formatter("acme")), name="acme", distribution="acme-formatters")
    [info] = host.plugins()
    assert (info.name, info.distribution, info.hooks) == (
        "acme",
        "acme-formatters",
        ("serapeum_register_formatters",),
    )


def _source(name: str, priority: int = 0) -> object:
    from serapeum.core.plugins import ModelSource

    source = ModelSource(
        name=name, handles=lambda request: True, resolve=lambda request: name, priority=priority
    )

    class Plugin:
        @hookimpl
        def serapeum_register_sources(self) -> list[ModelSource]:
            return [source]

    return Plugin()


def test_sources_are_asked_by_priority_then_registration_order() -> None:
    host = PluginHost(strict=False)
    host.register(_source("first"), name="first")
    host.register(_source("second"), name="second")
    host.register(_source("preferred", priority=10), name="preferred")
    assert [entry.item.name for entry in host.sources] == ["preferred", "first", "second"]


def test_a_broken_hook_is_reported_once_however_often_registries_are_rebuilt() -> None:
    host = PluginHost(strict=False)

    class Broken:
        @hookimpl
        def serapeum_register_formatters(self) -> list[PromptFormatter]:
            raise RuntimeError("boom")

    host.register(Broken(), name="broken")
    _ = host.formatters
    host.register(_plugin(_formatter("x")), name="x")  # invalidates the registries
    _ = host.formatters
    assert len(host.failures) == 1
