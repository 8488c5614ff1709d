"""Resolve ``hf_model_id`` + ``hf_filename`` to a GGUF file in the Hugging Face Hub cache.

Downloads go through ``huggingface_hub.hf_hub_download`` so that everything HF users
already rely on keeps working unchanged: the shared cache (``HF_HUB_CACHE`` /
``HF_HOME``), ``HF_TOKEN`` and ``hf auth login``, ``HF_ENDPOINT`` mirrors,
``HF_HUB_OFFLINE`` and pinned revisions (branches, tags, commit hashes).

Every file is checked before it is returned: its GGUF structure, ``model_sha256`` (a
hash of its content: a blob's name is only what the server claimed) and the engine's
checked load (``ModelRequest.verify_file``). A refused file that this call downloaded is
removed from the Hub cache; one that was already there is kept, and the error says how
to remove it.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

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

from serapeum.core.cache_dir import cache_directory_error, ensure_cache_directory
from serapeum.core.errors import CacheDirectoryError as CoreCacheDirectoryError
from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest, ModelSource
from serapeum_source_hf.errors import (
    HfAccessError,
    HfAmbiguousFilenameError,
    HfCacheDirectoryError,
    HfDownloadError,
    HfFileNotFoundError,
    HfOfflineError,
    HfRepositoryNotFoundError,
    HfRevisionNotFoundError,
    HfSourceError,
)
from serapeum_source_hf.progress import bars, final_line
from serapeum_source_hf.verify import (
    Added,
    CacheState,
    Where,
    check_sha256,
    check_structure,
)

# The errors are exported by the package (``serapeum_source_hf``), their one public home.
__all__ = ["HF_SOURCE", "download_gguf", "select_filename", "split_shards"]

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


# Errors that mean the Hub cache itself cannot be written (not the network, not the Hub).
CACHE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EEXIST}
)


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
    ids = Where(repo_id=repo_id, filename=filename, revision=revision)
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
    where = Where(repo_id=repo_id, filename=pattern, revision=revision)
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


def download_gguf(
    repo_id: str,
    pattern: str,
    revision: str | None = None,
    *,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool | None = None,
) -> Path:
    """Download the GGUF ``pattern`` names (every shard of a split model) and return its path.

    ``progress``: None shows the hub's bars on a terminal only; False shows nothing; True
    shows them on a terminal, and otherwise (a log file) one line per file downloaded.

    For split models the first shard's path is returned; llama.cpp finds the others
    next to it, which is why the snapshot path (not the blob it links to) is kept.
    Each shard gets the GGUF structure check; ``sha256`` and ``verify`` (the engine's
    checked load) apply to the returned file. When a check refuses, whatever this call
    added to the Hub cache is removed (and nothing that was there before).
    """
    filename = select_filename(repo_id, pattern, revision)
    added: list[Added] = []
    for shard in split_shards(filename):
        state = CacheState.before(repo_id, shard)
        try:
            pointer = Path(
                hf_hub_download(repo_id, shard, revision=revision, tqdm_class=bars(progress))
            )
        except DOWNLOAD_ERRORS as error:
            _take_back(added)
            raise _translate(error, repo_id, shard, revision) from error
        except OSError as error:
            _take_back(added)
            raise _cache_error(error, repo_id, shard, revision) from error
        added.append(state.added(pointer))
        if progress and added[-1].blob and added[-1].blob_path is not None:
            final_line(f"{repo_id}/{shard}", added[-1].blob_path)
    try:
        _check(added, repo_id, filename, revision, sha256, verify)
    except SerapeumError:
        _take_back(added)
        raise
    return added[0].pointer


def _check(
    added: list[Added],
    repo_id: str,
    filename: str,
    revision: str | None,
    sha256: str | None,
    verify: Callable[[Path], None] | None,
) -> None:
    for shard in added:
        name = shard.pointer.name
        ids = Where(repo_id=repo_id, filename=name, revision=revision)
        check_structure(shard, _where(repo_id, name, revision), ids)
    first = added[0]
    ids = Where(repo_id=repo_id, filename=filename, revision=revision)
    if sha256 is not None:
        check_sha256(first, sha256, _where(repo_id, filename, revision), ids)
    if verify is not None:
        try:
            verify(first.pointer)
        except SerapeumError as error:  # the engine's verdict, kept as raised
            fate = (
                "it was deleted from the Hub cache"
                if any(shard.anything for shard in added)
                else f"it was already cached and was kept; to remove it, delete {first.removal_hint()}"
            )
            error.add_note(f"Refused: {_where(repo_id, filename, revision)}; {fate}.")
            raise


def _take_back(added: list[Added]) -> None:
    """Remove what this call added to the Hub cache (never a file that was there before)."""
    for shard in added:
        shard.remove()


def _cache_error(
    error: OSError, repo_id: str, filename: str, revision: str | None
) -> HfSourceError:
    """Explain a file-system error from the Hub client: the cache, if it is the cause."""
    ids = Where(repo_id=repo_id, filename=filename, revision=revision)
    where = _where(repo_id, filename, revision)
    cache = Path(constants.HF_HUB_CACHE)
    settings = {"env_var": "HF_HUB_CACHE", "what": "Hugging Face Hub cache"}
    try:  # the same diagnosis as serapeum's own cache: a file in the way, no permission...
        ensure_cache_directory(cache, **settings)
    except CoreCacheDirectoryError as diagnosis:
        return HfCacheDirectoryError(f"cannot download {where}: {diagnosis}", **ids)
    if isinstance(error, PermissionError) or error.errno in CACHE_ERRNOS:
        problem = f"{error.filename or cache}: {error.strerror or error}"
        reason = cache_directory_error(cache, problem, **settings)
        return HfCacheDirectoryError(f"cannot download {where}: {reason}", **ids)
    return HfDownloadError(f"cannot download {where}: {error}", **ids)


def _handles(request: ModelRequest) -> bool:
    return request.kind == "hf"


def _resolve(request: ModelRequest) -> Path:
    assert request.hf_model_id is not None
    if not request.hf_filename:
        raise ConfigurationError(
            f"hf_model_id={request.hf_model_id!r} needs hf_filename, the GGUF file (or a glob "
            "such as '*Q4_K_M.gguf') in that repository"
        )
    return download_gguf(
        request.hf_model_id,
        request.hf_filename,
        request.hf_revision,
        sha256=request.options.get("sha256"),
        verify=request.verify_file,
        progress=request.options.get("progress"),
    )


HF_SOURCE = ModelSource(
    name="hf",
    handles=_handles,
    resolve=_resolve,
    priority=0,
    description="GGUF files from the Hugging Face Hub (hf_model_id + hf_filename, globs, splits)",
)
