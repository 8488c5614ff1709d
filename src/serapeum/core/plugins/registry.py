"""Registries by name: normalised lookup, conflicts that name both plugins, "did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from attrs import frozen

from serapeum.core.plugins.errors import PluginConflictError, UnknownPluginError


def normalize_name(name: str) -> str:
    """Compare names without case, ``-`` or ``_``: ``Llama-3`` == ``llama_3`` == ``llama3``."""
    return name.strip().lower().replace("-", "").replace("_", "")


class Named(Protocol):
    """Anything registered by name: descriptors have a ``name`` and other ``aliases``."""

    @property
    def name(self) -> str: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...


T = TypeVar("T", bound=Named)


@frozen
class Registered(Generic[T]):
    """One registered item and the distribution (or plugin) it came from."""

    item: T
    distribution: str
    plugin: str


class Registry(Generic[T]):
    """Items by name and alias, built from every plugin's registrations."""

    def __init__(self, kind: str, entries: Iterable[Registered[T]] = ()) -> None:
        self.kind = kind
        self._entries: list[Registered[T]] = []
        self._by_key: dict[str, Registered[T]] = {}
        self._conflicts: dict[str, list[Registered[T]]] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Registered[T]) -> None:
        self._entries.append(entry)
        for spelling in (entry.item.name, *entry.item.aliases):
            key = normalize_name(spelling)
            current = self._by_key.get(key)
            if current is None:
                self._by_key[key] = entry
            elif current.item is not entry.item:
                self._conflicts.setdefault(key, [current]).append(entry)

    def __iter__(self) -> Iterator[Registered[T]]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._by_key

    def names(self) -> list[str]:
        """The canonical names, sorted."""
        return sorted({entry.item.name for entry in self._entries})

    def conflicts(self) -> dict[str, list[Registered[T]]]:
        return {key: list(entries) for key, entries in self._conflicts.items()}

    def check(self) -> None:
        """Raise on the first conflict (strict mode and plugin authors' tests use this)."""
        for key in self._conflicts:
            self._raise_conflict(key)

    def entry(self, name: str) -> Registered[T]:
        key = normalize_name(name)
        if key in self._conflicts:
            self._raise_conflict(key)
        try:
            return self._by_key[key]
        except KeyError:
            raise self._unknown(name) from None

    def get(self, name: str) -> T:
        return self.entry(name).item

    def _raise_conflict(self, key: str) -> None:
        entries = self._conflicts[key]
        who = " and ".join(f"{e.distribution} ({e.item.name!r})" for e in entries)
        raise PluginConflictError(
            f"the {self.kind} name {key!r} is registered by both {who}; "
            "uninstall one of these distributions so the name means one thing"
        )

    def _unknown(self, name: str) -> UnknownPluginError:
        available = self.names()
        spellings = sorted(self._by_key)
        close = difflib.get_close_matches(normalize_name(name), spellings, n=3, cutoff=0.6)
        suggestions = sorted({self._by_key[k].item.name for k in close})
        hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        listing = ", ".join(available) if available else "none"
        return UnknownPluginError(
            f"no {self.kind} named {name!r} is installed.{hint} Choose one of: {listing}.",
            name=name,
            available=available,
        )
