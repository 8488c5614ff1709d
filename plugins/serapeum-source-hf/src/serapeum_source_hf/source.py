"""Resolve ``hf_model_id`` + ``hf_filename`` to a GGUF file in the Hugging Face Hub cache.

Downloads go through ``huggingface_hub.hf_hub_download`` so that everything HF users
already rely on keeps working unchanged: the shared cache (``HF_HUB_CACHE`` /
``HF_HOME``), ``HF_TOKEN`` and ``hf auth login``, ``HF_ENDPOINT`` mirrors,
``HF_HUB_OFFLINE`` and pinned revisions (branches, tags, commit hashes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import TypedDict

from huggingface_hub import HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest, ModelSource

__all__ = [
    "HF_SOURCE",
    "HfAccessError",
    "HfAmbiguousFilenameError",
    "HfDownloadError",
    "HfFileNotFoundError",
    "HfOfflineError",
    "HfRepositoryNotFoundError",
    "HfRevisionNotFoundError",
    "HfSourceError",
    "download_gguf",
    "select_filename",
    "split_shards",
]

GLOB_CHARACTERS = frozenset("*?[")
# llama.cpp's gguf-split naming: <prefix>-00001-of-00003.gguf
SPLIT_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's "could not reach the server" errors, whichever client this hub version uses."""
    errors: list[type[Exception]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()
# Everything hf_hub_download raises that _translate knows how to explain.
DOWNLOAD_ERRORS: tuple[type[Exception], ...] = (
    HfHubHTTPError,
    EntryNotFoundError,
    HFValidationError,
    *TRANSPORT_ERRORS,
)


class _Where(TypedDict):
    repo_id: str
    filename: str | None
    revision: str | None


class HfSourceError(SerapeumError):
    """Fetching a model from the Hugging Face Hub failed; says which repo, file and revision."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision

    def __str__(self) -> str:
        # OSError subclasses would otherwise render "[Errno None] None: <filename>".
        return str(self.args[0]) if self.args else ""


class HfRepositoryNotFoundError(HfSourceError, ConfigurationError):
    """The repository does not exist (or is private and the request was not authenticated)."""


class HfRevisionNotFoundError(HfSourceError, ConfigurationError):
    """The repository exists but has no such branch, tag or commit."""


class HfFileNotFoundError(HfSourceError, ConfigurationError, FileNotFoundError):
    """No file in the repository matches ``hf_filename``; ``available`` lists its GGUF files."""

    def __init__(
        self,
        message: str,
        *,
        available: Iterable[str] = (),
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.available = tuple(available)


class HfAmbiguousFilenameError(HfSourceError, ConfigurationError):
    """The ``hf_filename`` glob matches several models; ``matches`` lists them."""

    def __init__(
        self,
        message: str,
        *,
        matches: Iterable[str] = (),
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.matches = tuple(matches)


class HfAccessError(HfSourceError, PermissionError):
    """The repository is gated or private and the token is missing or not allowed."""


class HfOfflineError(HfSourceError, ConnectionError):
    """The Hub cannot be used (``HF_HUB_OFFLINE`` or no network) and the file is not cached."""


class HfDownloadError(HfSourceError):
    """Any other failure talking to the Hub (server errors, bad responses)."""


# -- helpers ------------------------------------------------------------------------------------


def _where(repo_id: str, filename: str | None, revision: str | None) -> str:
    parts = [f"repository {repo_id!r}"]
    if filename is not None:
        parts.append(f"file {filename!r}")
    parts.append(f"revision {revision or constants.DEFAULT_REVISION!r}")
    return ", ".join(parts)


def _is_glob(filename: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in filename)


def _gguf_only(files: Iterable[str]) -> list[str]:
    return sorted(name for name in files if name.lower().endswith(".gguf"))


def _format_files(files: Iterable[str], limit: int = 40) -> str:
    names = list(files)
    if not names:
        return "the repository has no .gguf files"
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f".gguf files available: {shown}{more}"


def _auth_hint() -> str:
    if get_token() is None:
        return (
            "no Hugging Face token was sent: set HF_TOKEN or run `hf auth login` "
            "(`huggingface-cli login` in older versions)"
        )
    return "a token was sent; check that it has read access to this repository"


def _cached_files(repo_id: str, revision: str) -> list[str] | None:
    """The files of ``revision`` already in the local Hub cache, or None when none are."""
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit: str | None = revision if REGEX_COMMIT_HASH.fullmatch(revision) else None
    if commit is None:
        ref = storage / "refs" / revision
        if ref.is_file():
            commit = ref.read_text().strip()
    if commit is None:
        return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return sorted(
        path.relative_to(snapshot).as_posix()
        for path in snapshot.rglob("*")
        if path.is_file() or path.is_symlink()
    )


def _translate(
    error: Exception, repo_id: str, filename: str | None, revision: str | None
) -> HfSourceError:
    """Turn a huggingface_hub exception into one of ours, with a message that says what to do."""
    where = _where(repo_id, filename, revision)
    ids = _Where(repo_id=repo_id, filename=filename, revision=revision)
    endpoint = constants.ENDPOINT
    if isinstance(error, GatedRepoError):
        return HfAccessError(
            f"cannot download {where}: the repository is gated. Accept its conditions at "
            f"{endpoint}/{repo_id} and authenticate; {_auth_hint()}",
            **ids,
        )
    if isinstance(error, RepositoryNotFoundError):
        return HfRepositoryNotFoundError(
            f"cannot download {where}: the repository was not found on {endpoint}. Check "
            "hf_model_id (owner/name); if the repository is private or gated, "
            f"{_auth_hint()}",
            **ids,
        )
    if isinstance(error, RevisionNotFoundError):
        return HfRevisionNotFoundError(
            f"cannot download {where}: the repository has no revision {revision!r}; give a "
            "branch, tag or commit hash that exists (hf_revision)",
            **ids,
        )
    if isinstance(error, LocalEntryNotFoundError):
        if constants.is_offline_mode():
            return HfOfflineError(
                f"cannot load {where}: HF_HUB_OFFLINE is set and the file is not in the Hub "
                f"cache ({constants.HF_HUB_CACHE}). Pre-fetch it while online (for example "
                f"`hf download {repo_id} <file>`, or run once without HF_HUB_OFFLINE), or unset "
                "HF_HUB_OFFLINE",
                **ids,
            )
        return HfOfflineError(
            f"cannot download {where}: {endpoint} could not be reached and the file is not in "
            f"the Hub cache ({constants.HF_HUB_CACHE}). Check the network (HF_ENDPOINT, proxy "
            f"settings) and try again. Details: {error}",
            **ids,
        )
    if isinstance(error, EntryNotFoundError):
        available = _gguf_only(_list_files_quietly(repo_id, revision) or ())
        return HfFileNotFoundError(
            f"cannot download {where}: no such file in the repository; {_format_files(available)}",
            available=available,
            **ids,
        )
    if isinstance(error, HFValidationError):
        return HfRepositoryNotFoundError(f"cannot download {where}: {error}", **ids)
    if isinstance(error, HfHubHTTPError) and error.response.status_code in (401, 403):
        return HfAccessError(
            f"cannot download {where}: the Hub refused access "
            f"(HTTP {error.response.status_code}); {_auth_hint()}",
            **ids,
        )
    if isinstance(error, TRANSPORT_ERRORS):
        return HfOfflineError(
            f"cannot download {where}: {endpoint} could not be reached ({error})", **ids
        )
    return HfDownloadError(f"cannot download {where}: {error}", **ids)


def _list_files_quietly(repo_id: str, revision: str | None) -> list[str] | None:
    """Best-effort file listing for error messages; None when it cannot be had."""
    try:
        return list_files(repo_id, revision)
    except HfSourceError:
        return None


# -- public steps -------------------------------------------------------------------------------


def list_files(repo_id: str, revision: str | None) -> list[str]:
    """Every file in the repository at ``revision``, from the Hub or, when offline, the cache."""
    resolved_revision = revision or constants.DEFAULT_REVISION
    try:
        return sorted(HfApi().list_repo_files(repo_id, revision=revision))
    except TRANSPORT_ERRORS as error:
        cached = _cached_files(repo_id, resolved_revision)
        if cached is not None:
            return cached
        raise _translate(
            LocalEntryNotFoundError(f"cannot list the files of {repo_id}: {error}"),
            repo_id,
            None,
            revision,
        ) from error
    except (HfHubHTTPError, HFValidationError) as error:
        raise _translate(error, repo_id, None, revision) from error


def split_shards(filename: str) -> list[str]:
    """All shard names of a split GGUF (first first), or just ``filename`` when it is not split."""
    path = PurePosixPath(filename)
    match = SPLIT_PATTERN.match(path.name)
    if match is None:
        return [filename]
    count = int(match["count"])
    names = [f"{match['prefix']}-{index:05d}-of-{count:05d}.gguf" for index in range(1, count + 1)]
    return [str(path.with_name(name)) for name in names]


def _model_key(filename: str) -> str:
    """Shards of one split model share a key, so a glob over them picks one model, not several."""
    return split_shards(filename)[0]


def select_filename(repo_id: str, pattern: str, revision: str | None) -> str:
    """The one repository file ``pattern`` names: itself, or the single model a glob matches."""
    if not _is_glob(pattern):
        return pattern
    files = list_files(repo_id, revision)
    matches = [name for name in files if fnmatchcase(name, pattern)]
    models = sorted({_model_key(name) for name in matches})
    where = _Where(repo_id=repo_id, filename=pattern, revision=revision)
    if not models:
        available = _gguf_only(files)
        raise HfFileNotFoundError(
            f"hf_filename pattern {pattern!r} matches no file in "
            f"{_where(repo_id, None, revision)}; {_format_files(available)}",
            available=available,
            **where,
        )
    if len(models) > 1:
        raise HfAmbiguousFilenameError(
            f"hf_filename pattern {pattern!r} matches {len(models)} models in "
            f"{_where(repo_id, None, revision)}: {', '.join(models)}; make the pattern "
            "specific enough to match one (or give the exact file name)",
            matches=models,
            **where,
        )
    return models[0]


def download_gguf(repo_id: str, pattern: str, revision: str | None = None) -> Path:
    """Download the GGUF ``pattern`` names (every shard of a split model) and return its path.

    For split models the first shard's path is returned; llama.cpp finds the others
    next to it, which is why the snapshot path (not the blob it links to) is kept.
    """
    filename = select_filename(repo_id, pattern, revision)
    paths: list[Path] = []
    for shard in split_shards(filename):
        try:
            paths.append(Path(hf_hub_download(repo_id, shard, revision=revision)))
        except DOWNLOAD_ERRORS as error:
            raise _translate(error, repo_id, shard, revision) from error
    return paths[0]


def _handles(request: ModelRequest) -> bool:
    return request.kind == "hf"


def _resolve(request: ModelRequest) -> Path:
    assert request.hf_model_id is not None
    if not request.hf_filename:
        raise ConfigurationError(
            f"hf_model_id={request.hf_model_id!r} needs hf_filename, the GGUF file (or a glob "
            "such as '*Q4_K_M.gguf') in that repository"
        )
    return download_gguf(request.hf_model_id, request.hf_filename, request.hf_revision)


HF_SOURCE = ModelSource(
    name="hf",
    handles=_handles,
    resolve=_resolve,
    priority=0,
    description="GGUF files from the Hugging Face Hub (hf_model_id + hf_filename, globs, splits)",
)
