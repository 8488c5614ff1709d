"""Import a formatter module from its plugin distribution, or say what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_formatter_module(module: str, distribution: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
        raise ModuleNotFoundError(
            f"{module} is provided by the {distribution} plugin: pip install {distribution} "
            f"(in this repository: pip install -e plugins/{distribution})",
            name=exc.name,
        ) from exc
