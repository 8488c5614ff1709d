"""The process-wide cache of loaded models, shared by every ``LlamaCPP`` instance.

Keyed by (backend, resolved path, load options). Values are held weakly: a model
stays loaded while at least one instance uses it, and is freed after the last goes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from serapeum.core.plugins import LoadedModel

CacheKey = tuple[str, str, tuple[tuple[str, str], ...]]

# Options that change how a model is reported, not what is loaded.
_IGNORED_OPTIONS = frozenset({"verbose"})


def cache_key(backend: str, path: Path | None, options: Mapping[str, Any]) -> CacheKey:
    frozen_options = tuple(
        sorted(
            (name, repr(value)) for name, value in options.items() if name not in _IGNORED_OPTIONS
        )
    )
    return (backend, "" if path is None else str(path), frozen_options)


class ModelCache:
    def __init__(self) -> None:
        self._models: weakref.WeakValueDictionary[CacheKey, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}

    def get_or_load(self, key: CacheKey, load: Callable[[], LoadedModel]) -> LoadedModel:
        """The cached model for ``key``, loading it once even when threads race for it.

        Only constructions of the same key wait for a load in progress; others go on. The
        per-key locks are kept (one small lock per distinct model ever asked for), so a
        failed load never leaves two threads loading the same key side by side.
        """
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                return model  # type: ignore[no-any-return]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                model = self._models.get(key)
            if model is None:  # nobody loaded it while we waited
                model = load()
                with self._lock:
                    self._models[key] = model
            return model  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODEL_CACHE = ModelCache()
