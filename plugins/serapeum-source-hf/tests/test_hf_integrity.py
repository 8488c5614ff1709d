"""Hub files are checked before use; a refused download is taken back, a cached file never.

Against the loopback fake Hub of conftest.py, through the real ``huggingface_hub`` client
and its real cache layout (``blobs/<etag>`` and ``snapshots/<commit>/<file>`` links).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import serapeum_source_hf
from serapeum.core import errors as core_errors
from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest
from serapeum_source_hf import (
    HF_SOURCE,
    HfCacheDirectoryError,
    HfChecksumMismatchError,
    HfMalformedModelError,
    HfNotAModelError,
    HfSourceError,
)

REPO = "serapeum/tiny-GGUF"


def request(filename: str, **fields: object) -> ModelRequest:
    return ModelRequest(hf_model_id=REPO, hf_filename=filename, **fields)  # type: ignore[arg-type]


def storage(tmp_path: Path) -> Path:
    return tmp_path / "hf-home" / "hub" / "models--serapeum--tiny-GGUF"


def blobs(tmp_path: Path) -> list[str]:
    folder = storage(tmp_path) / "blobs"
    return sorted(os.listdir(folder)) if folder.exists() else []


def links(tmp_path: Path) -> list[str]:
    """Every snapshot entry (link or file), as ``<commit>/<name>``."""
    snapshots = storage(tmp_path) / "snapshots"
    if not snapshots.exists():
        return []
    return sorted(
        p.relative_to(snapshots).as_posix()
        for p in snapshots.rglob("*")
        if p.is_symlink() or p.is_file()
    )


@pytest.fixture
def tiny_bytes(tiny_model_path: Path) -> bytes:
    return tiny_model_path.read_bytes()


@pytest.fixture
def repo(hub_env, tiny_bytes: bytes):
    fake = hub_env.repo(REPO)
    fake.add_commit(
        "first",
        {
            "README.md": b"# tiny\n",
            "tiny-Q4_K_M.gguf": tiny_bytes,
            "tiny-Q8_0.gguf": tiny_bytes,  # same bytes: one blob, two links
            "short.gguf": tiny_bytes[: len(tiny_bytes) // 2],
        },
        "main",
    )
    return fake


class Refused(ConfigurationError):
    """What an engine check raises for a file it will not load."""


def refuse(path: Path) -> None:
    raise Refused(f"{path} would not load")


# -- the structure check and the engine's check ---------------------------------------------


def test_a_truncated_hub_file_is_refused_and_taken_back(hub_env, repo, tmp_path: Path) -> None:
    with pytest.raises(HfMalformedModelError) as caught:
        HF_SOURCE.resolve(request("short.gguf"))
    error = caught.value
    assert isinstance(error, core_errors.MalformedGGUFError) and isinstance(error, HfNotAModelError)
    assert isinstance(error, HfSourceError) and isinstance(error, ValueError)
    assert error.filename == "short.gguf" and error.problem
    assert "deleted from the Hub cache" in str(error)
    assert blobs(tmp_path) == [] and links(tmp_path) == []
    # Nothing bad was cached: the next try downloads again (and is refused again).
    with pytest.raises(HfMalformedModelError):
        HF_SOURCE.resolve(request("short.gguf"))
    assert hub_env.downloads().count(f"/{REPO}/resolve/main/short.gguf") == 2


def test_a_file_that_is_not_gguf_is_refused(hub_env, repo, tmp_path: Path) -> None:
    with pytest.raises(HfNotAModelError) as caught:
        HF_SOURCE.resolve(request("README.md"))
    assert isinstance(caught.value, core_errors.NotGGUFError)
    assert links(tmp_path) == [] and blobs(tmp_path) == []


def test_the_engine_check_runs_before_the_file_is_returned(hub_env, repo) -> None:
    seen: list[Path] = []
    path = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", verify=seen.append))
    assert seen == [path]


def test_a_fresh_download_the_engine_refuses_is_taken_back(hub_env, repo, tmp_path: Path) -> None:
    with pytest.raises(Refused) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", verify=refuse))
    assert any("deleted from the Hub cache" in note for note in caught.value.__notes__)
    assert blobs(tmp_path) == [] and links(tmp_path) == []


def test_a_refusal_never_deletes_what_was_already_cached(
    hub_env, repo, tmp_path: Path, tiny_bytes: bytes
) -> None:
    q4 = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    [blob] = blobs(tmp_path)
    # Q8 has the same bytes: this call adds only a link to the existing blob.
    with pytest.raises(Refused):
        HF_SOURCE.resolve(request("tiny-Q8_0.gguf", verify=refuse))
    assert blobs(tmp_path) == [blob]  # the blob Q4 uses stays
    assert [name.split("/")[1] for name in links(tmp_path)] == ["tiny-Q4_K_M.gguf"]
    assert q4.read_bytes() == tiny_bytes
    # Q4 itself, already cached, refused: kept, and the note says how to remove it.
    with pytest.raises(Refused) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", verify=refuse))
    assert any("was kept" in note and str(q4) in note for note in caught.value.__notes__)
    assert q4.read_bytes() == tiny_bytes and blobs(tmp_path) == [blob]


# -- model_sha256 -------------------------------------------------------------------------------


def test_model_sha256_is_checked_for_hub_files(
    hub_env, repo, tmp_path: Path, tiny_bytes: bytes
) -> None:
    good = hashlib.sha256(tiny_bytes).hexdigest()
    typo = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(HfChecksumMismatchError) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", options={"sha256": typo}))
    error = caught.value
    assert isinstance(error, core_errors.ChecksumMismatchError) and isinstance(error, ValueError)
    assert (error.expected, error.actual, error.kept) == (typo, good, False)
    assert blobs(tmp_path) == [] and links(tmp_path) == []  # this call's download: discarded
    path = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", options={"sha256": good}))
    assert path.read_bytes() == tiny_bytes
    assert blobs(tmp_path) == [good]  # an LFS blob is named by its SHA-256: no hashing needed


def test_a_wrong_sha256_for_a_cached_hub_file_keeps_it(
    hub_env, repo, tmp_path: Path, tiny_bytes: bytes
) -> None:
    path = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    good = hashlib.sha256(tiny_bytes).hexdigest()
    with pytest.raises(HfChecksumMismatchError) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", options={"sha256": "0" * 64}))
    error = caught.value
    assert error.kept is True and error.actual == good
    message = str(error)
    assert "was kept" in message and str(path) in message and good in message
    assert path.read_bytes() == tiny_bytes and blobs(tmp_path) == [good]


def test_model_sha256_of_a_non_lfs_file_is_hashed(
    hub_env, tmp_path: Path, tiny_bytes: bytes
) -> None:
    fake = hub_env.repo(REPO)
    fake.lfs = False
    fake.add_commit("git", {"small.gguf": tiny_bytes}, "main")
    good = hashlib.sha256(tiny_bytes).hexdigest()
    with pytest.raises(HfChecksumMismatchError) as caught:
        HF_SOURCE.resolve(request("small.gguf", options={"sha256": "1" * 64}))
    assert caught.value.actual == good
    path = HF_SOURCE.resolve(request("small.gguf", options={"sha256": good}))
    assert path.read_bytes() == tiny_bytes
    [blob] = blobs(tmp_path)
    assert len(blob) == 40  # a git SHA-1 names the blob: the file had to be hashed


# -- the Hub cache directory ----------------------------------------------------------------


def test_a_hub_cache_that_is_under_a_file(hub_env, repo, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(in_the_way / "hub"))
    with pytest.raises(HfCacheDirectoryError) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    error = caught.value
    assert isinstance(error, core_errors.CacheDirectoryError) and isinstance(error, OSError)
    assert "HF_HUB_CACHE" in str(error) and str(in_the_way) in str(error)


# -- one error root -----------------------------------------------------------------------------


def test_every_exported_error_is_a_serapeum_error_and_a_builtin() -> None:
    builtins = (ValueError, OSError, LookupError, TypeError, RuntimeError)
    exported = [
        value
        for name in serapeum_source_hf.__all__
        if isinstance(value := getattr(serapeum_source_hf, name), type)
        and issubclass(value, BaseException)
    ]
    assert len(exported) >= 12
    for cls in exported:
        assert issubclass(cls, SerapeumError), cls
        assert cls.__module__ == "serapeum_source_hf.errors", cls
        if cls is not HfSourceError:  # the common base, never raised itself
            assert issubclass(cls, builtins), cls
