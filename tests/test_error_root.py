"""One error root: every public error class derives from SerapeumError and a builtin, and is
importable from one public module per package."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

from serapeum.core.errors import SerapeumError

# (package, the one public module its errors are importable from)
PACKAGES = [
    ("serapeum.core", "serapeum.core.errors"),
    ("serapeum.llama_cpp", "serapeum.llama_cpp.errors"),
    ("serapeum_source_local", "serapeum_source_local"),
    ("serapeum_source_url", "serapeum_source_url"),
    ("serapeum_source_hf", "serapeum_source_hf"),
    ("serapeum_backend_server", "serapeum_backend_server"),
]
SKIP_MODULES = {
    "serapeum.llama_cpp.__main__",
    "serapeum.llama_cpp.checked_load",
    # The command line's control-flow signals (UsageError, OutputClosed): main() turns them
    # into exit statuses, no caller ever sees them.
    "serapeum.llama_cpp.cli.output",
}


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    found = [root]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if info.name in SKIP_MODULES or ".testing" in info.name:
            continue
        found.append(importlib.import_module(info.name))
    return found


def _public_errors(package: str) -> set[type[BaseException]]:
    errors = set()
    for module in _modules(package):
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith(package)
                and value.__module__ not in SKIP_MODULES
                and not name.startswith("_")
            ):
                errors.add(value)
    return errors


@pytest.mark.parametrize(("package", "public"), PACKAGES)
def test_every_error_has_the_root_and_one_home(package: str, public: str) -> None:
    home = importlib.import_module(public)
    errors = _public_errors(package)
    assert errors, f"no errors found in {package}"
    for error in errors:
        assert issubclass(error, SerapeumError), f"{error} does not derive from SerapeumError"
        assert getattr(home, error.__name__, None) is error, (
            f"{error.__module__}.{error.__name__} is not importable from {public}"
        )
