"""Where serapeum keeps files it fetches (re-exported from ``serapeum.core.cache_dir``)."""

from __future__ import annotations

from serapeum.core.cache_dir import CACHE_ENV_VAR, cache_dir, ensure_cache_directory

__all__ = ["CACHE_ENV_VAR", "cache_dir", "ensure_cache_directory"]
