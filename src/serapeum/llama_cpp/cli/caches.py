"""Every place a model file of ours may sit, with sizes: what ``models`` lists and prunes.

* the serapeum cache, ``cache_dir()/models``: URL downloads and the assembled Gemma demo;
  leftover partial downloads are ``*.part`` (with ``*.part.meta`` beside them);
* the Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``): ``snapshots/`` holds symbolic links to ``blobs/``, so each
  file's real size is counted once; leftover partial downloads are ``blobs/*.incomplete``;
* the demo packages' own files (the Gemma parts, the SmolLM2 GGUF), used in place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.cache_dir import cache_dir
from serapeum.llama_cpp.demo import CHAT_PACKAGE, DEMO_PACKAGE

__all__ = [
    "CachedFile",
    "DemoPackage",
    "demo_packages",
    "hf_hub_cache",
    "hf_models",
    "leftovers",
    "prune",
    "serapeum_models",
]

RECENT_SECONDS = 60.0  # a partial file written this recently may be a download in progress
_DEMO_DISTRIBUTIONS = (DEMO_PACKAGE, CHAT_PACKAGE)


@frozen
class CachedFile:
    """A model file (or a partial download): where it is, its real size, how ``-m`` names it."""

    path: Path
    size: int
    name: str = ""  # hf:ORG/REPO/FILE for the Hugging Face cache


@frozen
class DemoPackage:
    """The files one demo model's packages installed."""

    name: str
    size: int
    files: int
    location: Path | None


def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps its cache, by its own rules (without importing it)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size  # follows a snapshot's link to its blob
    except OSError:
        return None


def _walk(root: Path, pattern: str) -> Iterator[Path]:
    try:
        yield from sorted(root.rglob(pattern))
    except OSError as exc:
        raise ConfigurationError(f"cannot list {root}: {exc.strerror or exc}") from exc


def serapeum_models() -> list[CachedFile]:
    """The GGUF files in ``cache_dir()/models``."""
    root = cache_dir() / "models"
    found = []
    for path in _walk(root, "*.gguf"):
        size = _size(path)
        if size is not None and path.is_file():
            found.append(CachedFile(path, size))
    return found


def _hf_name(repo_dir: Path, file: Path) -> str:
    """``models--org--repo/snapshots/<commit>/dir/f.gguf`` -> ``hf:org/repo/dir/f.gguf``."""
    repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
    inside = file.relative_to(repo_dir / "snapshots").parts[1:]
    return f"hf:{repo}/{'/'.join(inside)}"


def hf_models() -> list[CachedFile]:
    """The GGUF files in the Hugging Face hub cache, each blob once (the newest snapshot's)."""
    root = hf_hub_cache()
    if not root.is_dir():
        return []
    found: dict[str, CachedFile] = {}
    for repo_dir in sorted(root.glob("models--*")):
        snapshots = repo_dir / "snapshots"
        pointers = list(_walk(snapshots, "*.gguf")) if snapshots.is_dir() else []
        pointers.sort(key=lambda p: _mtime(p.parent), reverse=True)
        for pointer in pointers:
            size = _size(pointer)
            if size is None:  # a link to a blob that is gone
                continue
            blob = os.path.realpath(pointer)
            found.setdefault(blob, CachedFile(pointer, size, _hf_name(repo_dir, pointer)))
    return sorted(found.values(), key=lambda f: f.name)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def leftovers() -> list[CachedFile]:
    """Partial downloads: ``*.part``/``*.part.meta`` here, ``blobs/*.incomplete`` in the HF cache."""
    found: list[Path] = []
    ours = cache_dir() / "models"
    if ours.is_dir():
        found += [p for p in _walk(ours, "*.part") if p.is_file()]
        found += [p for p in _walk(ours, "*.part.meta") if p.is_file()]
    hub = hf_hub_cache()
    if hub.is_dir():
        found += [p for p in sorted(hub.glob("models--*/blobs/*.incomplete")) if p.is_file()]
    return [CachedFile(p, _size(p) or 0) for p in sorted(set(found))]


def prune(now: float | None = None) -> tuple[list[CachedFile], list[CachedFile]]:
    """Delete the partial downloads; return (deleted, kept because written in the last minute
    and so perhaps still being downloaded)."""
    now = time.time() if now is None else now
    deleted, kept = [], []
    for leftover in leftovers():
        if now - _mtime(leftover.path) < RECENT_SECONDS:
            kept.append(leftover)
            continue
        try:
            leftover.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigurationError(
                f"cannot delete {leftover.path}: {exc.strerror or exc}"
            ) from exc
        deleted.append(leftover)
    return deleted, kept


def demo_packages() -> list[DemoPackage]:
    """The installed demo model packages (a Gemma package and its part packages count as one)."""
    totals: dict[str, DemoPackage] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        owner = next((d for d in _DEMO_DISTRIBUTIONS if name.startswith(d)), None)
        if owner is None:
            continue
        size, count = 0, 0
        location: Path | None = None
        for file in dist.files or ():
            if ".dist-info" in str(file) or "__pycache__" in str(file):
                continue
            path = Path(str(file.locate()))
            file_size = _size(path)
            if file_size is None:
                continue
            size, count = size + file_size, count + 1
            if path.suffix == ".gguf":
                location = path
            elif location is None and name == owner and len(file.parts) > 1:
                location = Path(str(dist.locate_file(file.parts[0])))
        before = totals.get(owner)
        if before is not None:
            size, count = size + before.size, count + before.files
            location = location or before.location
        totals[owner] = DemoPackage(owner, size, count, location)
    return [totals[name] for name in _DEMO_DISTRIBUTIONS if name in totals]
