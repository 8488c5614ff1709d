"""Check Hub files before they are used, and take back only what a refused download added.

``huggingface_hub`` installs a file in its cache as a blob (``blobs/<etag>``, the etag of
an LFS file being its SHA-256) and a snapshot link to it (``snapshots/<commit>/<name>``).
``CacheState`` records, before a download, which of the two were already there, so a
file the engine refuses can be removed when (and only when) this call added it: a file
another program or an earlier run put in the shared cache is never deleted.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TypedDict

from attrs import frozen
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from serapeum.core.errors import MalformedGGUFError, NotGGUFError
from serapeum.core.gguf import check_gguf
from serapeum.core.model_files import sha256_of
from serapeum_source_hf.errors import (
    HfChecksumMismatchError,
    HfMalformedModelError,
    HfNotAModelError,
)


class Where(TypedDict):
    """The keyword arguments every Hf error takes: which repository, file and revision."""

    repo_id: str
    filename: str | None
    revision: str | None


def storage_folder(repo_id: str) -> Path:
    """The repository's folder in the Hub cache (``models--owner--name``)."""
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


@frozen
class CacheState:
    """What the cache held for one file before a download: blob names, commits linking it."""

    storage: Path
    filename: str
    blobs: frozenset[str]
    linked_commits: frozenset[str]

    @classmethod
    def before(cls, repo_id: str, filename: str) -> CacheState:
        storage = storage_folder(repo_id)
        blobs = _names(storage / "blobs")
        snapshots = storage / "snapshots"
        linked = frozenset(
            commit for commit in _names(snapshots) if os.path.lexists(snapshots / commit / filename)
        )
        return cls(storage, filename, blobs, linked)

    def added(self, pointer: Path) -> Added:
        """What the download that returned ``pointer`` added to the cache."""
        snapshots = self.storage / "snapshots"
        try:
            commit = pointer.relative_to(snapshots).parts[0]
        except (ValueError, IndexError):  # not in this cache's layout: never touched
            return Added(pointer, None, link=False, blob=False)
        blob = blob_of(pointer, self.storage)
        return Added(
            pointer,
            blob,
            link=commit not in self.linked_commits,
            blob=blob is not None and blob.name not in self.blobs,
        )


@frozen
class Added:
    """One file a download returned: its snapshot path, its blob, and which of them are new."""

    pointer: Path
    blob_path: Path | None
    link: bool
    blob: bool

    @property
    def anything(self) -> bool:
        return self.link or self.blob

    def remove(self) -> None:
        """Delete what this call added (the link, then the blob), nothing else."""
        if self.link:
            self.pointer.unlink(missing_ok=True)
            _remove_if_empty(self.pointer.parent)
        if self.blob and self.blob_path is not None:
            self.blob_path.unlink(missing_ok=True)  # a symlink into a shared store: the link only

    def removal_hint(self) -> str:
        """Which paths to delete by hand to get rid of a cached file."""
        paths = [str(self.pointer)]
        if self.blob_path is not None:
            paths.append(str(self.blob_path))
        return " and ".join(paths)


def blob_of(pointer: Path, storage: Path) -> Path | None:
    """The ``blobs/<etag>`` entry a snapshot link points at (one level), or None."""
    if not pointer.is_symlink():
        return None  # a copy (no symlink support): the file is its own blob
    target = Path(os.path.normpath(pointer.parent / os.readlink(pointer)))
    blobs = Path(os.path.normpath(storage / "blobs"))
    return target if target.parent == blobs else None


def file_sha256(path: Path) -> str:
    """Hashed once per file identity (the engine's ``model_sha256`` check reuses it)."""
    return sha256_of(path)


def check_structure(added: Added, where: str, ids: Where) -> None:
    """The GGUF structure check, as an Hf error that names the file and what to do."""
    try:
        check_gguf(added.pointer)
    except MalformedGGUFError as error:
        raise HfMalformedModelError(
            f"{where} is not a usable GGUF model ({error.problem}). {_fate(added)}",
            path=str(added.pointer),
            problem=error.problem,
            **ids,
        ) from error
    except NotGGUFError as error:
        raise HfNotAModelError(
            f"{where} is not a GGUF model file; hf_filename must name one of the repository's "
            f".gguf files. {_fate(added, damaged=False)}",
            **ids,
        ) from error


def check_sha256(added: Added, expected: str, where: str, ids: Where) -> None:
    """Compare the file's content with ``model_sha256``.

    Always a hash of the bytes (once per file and process, shared with the engine's own
    check): an LFS blob's name is the ETag the server (or an ``HF_ENDPOINT`` mirror) sent,
    not a digest anyone computed, so it proves nothing about what was written.
    """
    expected = expected.strip().lower()
    actual = file_sha256(added.pointer)
    if actual == expected:
        return
    if added.anything:
        fate = "The download was deleted from the Hub cache"
    else:
        fate = (
            "The cached file was kept: check the expected checksum for a typo. If the file "
            f"really is wrong, delete {added.removal_hint()} and run again to download it anew"
        )
    raise HfChecksumMismatchError(
        f"{where} has SHA-256 {actual}, not the expected {expected}. {fate}",
        path=str(added.pointer),
        expected=expected,
        actual=actual,
        kept=not added.anything,
        **ids,
    )


def _fate(added: Added, *, damaged: bool = True) -> str:
    if added.anything and not damaged:
        return "The download was deleted from the Hub cache"
    if added.anything:
        return (
            "The download was deleted from the Hub cache; if it was cut short, run again, "
            "otherwise the file in the repository is damaged"
        )
    return (
        f"It was already in the Hub cache and was kept; to remove it, delete {added.removal_hint()}"
    )


def _names(directory: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(directory))
    except OSError:
        return frozenset()


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (other files of that commit), or gone
        directory.rmdir()
