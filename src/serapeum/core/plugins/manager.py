"""The plugin host: discovers plugins through entry points and builds the registries.

One plugin that fails to import (or whose hook fails) never breaks the others: the
failure is logged, recorded in ``failures`` and shown by ``plugins()``. Set
``SERAPEUM_STRICT_PLUGINS=1`` (or pass ``strict=True``) to turn it into an error,
which is what plugin authors want while developing.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from types import ModuleType
from typing import Any, TypeVar

import pluggy
from attrs import frozen

from serapeum.core.plugins import hookspecs
from serapeum.core.plugins.descriptors import BackendSpec, ModelSource, PromptFormatter
from serapeum.core.plugins.errors import PluginLoadError, PluginValidationError
from serapeum.core.plugins.registry import Named, Registered, Registry, normalize_name

logger = logging.getLogger("serapeum.plugins")

ENTRY_POINT_GROUP = "serapeum"
STRICT_ENV_VAR = "SERAPEUM_STRICT_PLUGINS"
LOAD_ENV_VAR = "SERAPEUM_LOAD_PLUGINS"  # allow-list; set but empty means none
DISABLE_ENV_VAR = "SERAPEUM_DISABLE_PLUGINS"  # block-list
LOCAL_DISTRIBUTION = "<registered in code>"
BUILTIN_PACKAGE = "serapeum."  # plugins inside the package that ships core are built in

D = TypeVar("D", bound=Named)


@frozen
class PluginFailure:
    """A plugin that could not be imported, or whose hook failed."""

    plugin: str
    distribution: str
    error: str


@frozen
class SkippedPlugin:
    """An installed plugin that was not loaded, and why (for listings)."""

    plugin: str
    distribution: str
    reason: str


def _name_list(value: str) -> set[str]:
    return {normalize_name(part) for part in value.split(",") if part.strip()}


@frozen
class PluginInfo:
    """One loaded plugin, for listings."""

    name: str
    distribution: str
    version: str | None
    hooks: tuple[str, ...]


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginHost:
    """A pluggy manager plus the registries built from its plugins."""

    def __init__(self, *, strict: bool | None = None) -> None:
        self.strict = strict_from_env() if strict is None else strict
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._origin: dict[str, tuple[str, str | None]] = {}
        self.failures: list[PluginFailure] = []
        self.skipped: list[SkippedPlugin] = []
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------
    def register(
        self, plugin: object, *, name: str | None = None, distribution: str = LOCAL_DISTRIBUTION
    ) -> str:
        """Register a plugin object (module or instance); returns its plugin name."""
        with self._lock:
            plugin_name = self._pm.register(plugin, name=name)
            if plugin_name is None:  # pluggy returns None for a blocked name
                raise PluginLoadError(f"plugin {name!r} is blocked and cannot be registered")
            self._origin[plugin_name] = (distribution, None)
            self._cache.clear()
            self._check_hook_names(plugin_name, distribution)
            return plugin_name

    def unregister(self, name: str) -> None:
        with self._lock:
            self._pm.unregister(name=name)
            self._origin.pop(name, None)
            self._cache.clear()

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every installed plugin of ``group``, surviving failures."""
        for entry_point in metadata.entry_points(group=group):
            dist = entry_point.dist
            distribution = dist.name if dist is not None else entry_point.value
            version = dist.version if dist is not None else None
            reason = _excluded(entry_point.name, distribution, entry_point.module)
            if reason is not None:
                skipped = SkippedPlugin(entry_point.name, distribution, reason)
                if skipped not in self.skipped:
                    self.skipped.append(skipped)
                continue
            if self._pm.has_plugin(entry_point.name):
                holder = self.distribution_of(entry_point.name)
                if holder != distribution:
                    self._fail(
                        entry_point.name,
                        distribution,
                        f"the plugin name {entry_point.name!r} is already taken by {holder}; "
                        "rename the entry point (plugin names must be unique)",
                        PluginLoadError(entry_point.name),
                    )
                continue
            try:
                plugin: ModuleType | Any = entry_point.load()
            except Exception as exc:
                self._fail(entry_point.name, distribution, f"import failed: {exc!r}", exc)
                continue
            with self._lock:
                try:  # pluggy checks hook names and signatures against the specs here
                    self._pm.register(plugin, name=entry_point.name)
                except Exception as exc:
                    self._fail(entry_point.name, distribution, f"invalid plugin: {exc}", exc)
                    continue
                self._origin[entry_point.name] = (distribution, version)
                self._cache.clear()
                self._check_hook_names(entry_point.name, distribution)

    def _check_hook_names(self, plugin_name: str, distribution: str) -> None:
        """Report hook implementations that match no hook spec: they are never called.

        A misspelled hook would otherwise load silently and register nothing. In strict
        mode the plugin is unregistered and the error raised; otherwise it is recorded in
        ``failures`` (its correctly named hooks keep working).
        """
        plugin = self._pm.get_plugin(plugin_name)
        unknown = sorted(
            caller.name
            for caller in self._pm.get_hookcallers(plugin) or ()
            if not caller.has_spec()
            and any(
                impl.plugin_name == plugin_name and not impl.optionalhook
                for impl in caller.get_hookimpls()
            )
        )
        if not unknown:
            return
        message = "; ".join(unknown_hook_message(name) for name in unknown)
        error = PluginValidationError(f"plugin {plugin_name!r} from {distribution}: {message}")
        if self.strict:
            self.unregister(plugin_name)
        self._fail(plugin_name, distribution, message, error)

    def _fail(self, plugin: str, distribution: str, message: str, exc: BaseException) -> None:
        failure = PluginFailure(plugin=plugin, distribution=distribution, error=message)
        if failure not in self.failures:  # registries are rebuilt; report each problem once
            self.failures.append(failure)
        if self.strict:
            raise PluginLoadError(
                f"plugin {plugin!r} from {distribution}: {message} "
                f"(strict mode: unset {STRICT_ENV_VAR} to skip broken plugins)"
            ) from exc
        logger.warning("skipping serapeum plugin %r from %s: %s", plugin, distribution, message)

    # -- listings -----------------------------------------------------------------
    def distribution_of(self, plugin_name: str) -> str:
        return self._origin.get(plugin_name, (LOCAL_DISTRIBUTION, None))[0]

    def plugins(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self._pm.list_name_plugin():
            distribution, version = self._origin.get(name, (LOCAL_DISTRIBUTION, None))
            hooks = tuple(sorted(h.name for h in self._pm.get_hookcallers(plugin) or ()))
            infos.append(
                PluginInfo(name=name, distribution=distribution, version=version, hooks=hooks)
            )
        return sorted(infos, key=lambda info: info.name)

    # -- registries ---------------------------------------------------------------
    @property
    def formatters(self) -> Registry[PromptFormatter]:
        return self._registry(
            "formatter", self._pm.hook.serapeum_register_formatters, PromptFormatter
        )

    @property
    def backends(self) -> Registry[BackendSpec]:
        return self._registry("backend", self._pm.hook.serapeum_register_backends, BackendSpec)

    @property
    def sources(self) -> list[Registered[ModelSource]]:
        """Model sources in the order they are asked: highest priority first."""
        with self._lock:
            if "sources" not in self._cache:
                entries = self._collect(self._pm.hook.serapeum_register_sources, ModelSource)
                # stable sort: equal priorities keep registration order
                self._cache["sources"] = sorted(entries, key=lambda e: -e.item.priority)
            return list(self._cache["sources"])

    def _registry(self, kind: str, hook: Any, expected: type[D]) -> Registry[Any]:
        with self._lock:
            if kind not in self._cache:
                registry: Registry[Any] = Registry(kind, self._collect(hook, expected))
                if self.strict:
                    registry.check()
                self._cache[kind] = registry
            return self._cache[kind]  # type: ignore[no-any-return]

    def _collect(self, hook: Any, expected: type[D]) -> list[Registered[D]]:
        """Call each plugin's implementation separately, so each item knows its origin."""
        entries: list[Registered[D]] = []
        for impl in hook.get_hookimpls():  # in registration order
            distribution = self.distribution_of(impl.plugin_name)
            try:
                items = list(_call(impl.function))
            except Exception as exc:
                self._fail(impl.plugin_name, distribution, f"{hook.name} failed: {exc!r}", exc)
                continue
            for item in items:
                if not isinstance(item, expected):
                    error = PluginValidationError(
                        f"plugin {impl.plugin_name!r} from {distribution} returned "
                        f"{item!r} from {hook.name}; expected {expected.__name__} instances"
                    )
                    self._fail(impl.plugin_name, distribution, str(error), error)
                    continue
                entries.append(
                    Registered(item=item, distribution=distribution, plugin=impl.plugin_name)
                )
        return entries


def hook_names() -> list[str]:
    """The names of the hooks a plugin can implement (see ``hookspecs``)."""
    return sorted(
        name
        for name in vars(hookspecs)
        if name.startswith(f"{hookspecs.PROJECT_NAME}_")
        and hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT_NAME}_spec")
    )


def unknown_hook_message(name: str) -> str:
    """Why a hook implementation named ``name`` is never called, with a did-you-mean."""
    known = hook_names()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown hook {name!r} is never called: no hook has that name; "
        f"{hint}(the hooks are {', '.join(known)})"
    )


def _excluded(plugin: str, distribution: str, module: str) -> str | None:
    """Why ``SERAPEUM_LOAD_PLUGINS``/``SERAPEUM_DISABLE_PLUGINS`` exclude a plugin, if they do.

    Both take comma-separated entry-point or distribution names. Built-in plugins, those
    inside the ``serapeum`` package itself (the in-process backend), are never excluded.
    """
    if module.startswith(BUILTIN_PACKAGE):
        return None
    names = {normalize_name(plugin), normalize_name(distribution)}
    allowed = os.environ.get(LOAD_ENV_VAR)
    if allowed is not None and not names & _name_list(allowed):
        return f"not listed in {LOAD_ENV_VAR}"
    if names & _name_list(os.environ.get(DISABLE_ENV_VAR, "")):
        return f"listed in {DISABLE_ENV_VAR}"
    return None


def _call(function: Callable[[], Iterable[D] | None]) -> Iterable[D]:
    return function() or ()


_default_host: PluginHost | None = None
_default_lock = threading.Lock()


def get_plugin_host() -> PluginHost:
    """The process-wide host, with every installed plugin loaded on first use."""
    global _default_host
    with _default_lock:
        if _default_host is None:
            host = PluginHost()
            host.load_entry_points()
            _default_host = host
        return _default_host
