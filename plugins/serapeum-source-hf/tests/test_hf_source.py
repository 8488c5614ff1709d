"""The Hugging Face source against a loopback fake Hub: downloads, cache, offline, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.plugins import ModelRequest
from serapeum_source_hf import (
    HF_SOURCE,
    HfAccessError,
    HfAmbiguousFilenameError,
    HfFileNotFoundError,
    HfOfflineError,
    HfRepositoryNotFoundError,
    HfRevisionNotFoundError,
    download_gguf,
    split_shards,
)

REPO = "serapeum/tiny-GGUF"


def request(filename: str, revision: str | None = None, repo: str = REPO) -> ModelRequest:
    return ModelRequest(hf_model_id=repo, hf_filename=filename, hf_revision=revision)


@pytest.fixture
def tiny_bytes(tiny_model_path: Path) -> bytes:
    return tiny_model_path.read_bytes()


@pytest.fixture
def repo(hub_env, tiny_bytes: bytes):
    """A repo with two quantisations of the tiny model (same bytes, different names)."""
    fake = hub_env.repo(REPO)
    fake.add_commit(
        "first",
        {
            "README.md": b"# tiny\n",
            "tiny-Q4_K_M.gguf": tiny_bytes,
            "tiny-Q8_0.gguf": tiny_bytes,
        },
        "main",
    )
    return fake


def test_handles_only_hf_requests() -> None:
    assert HF_SOURCE.handles(request("x.gguf"))
    assert not HF_SOURCE.handles(ModelRequest(model_path="x.gguf"))
    assert not HF_SOURCE.handles(ModelRequest(model_url="https://example.org/x.gguf"))


def test_the_entry_point_registers_the_source(plugin_host) -> None:
    names = [entry.item.name for entry in plugin_host.sources]
    assert "hf" in names


def test_downloads_into_the_hub_cache(hub_env, repo, tiny_bytes: bytes, tmp_path: Path) -> None:
    path = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    assert path.read_bytes() == tiny_bytes
    # The Hub's own cache layout, so `hf cache` tools and other HF libraries share it.
    cache = tmp_path / "hf-home" / "hub" / "models--serapeum--tiny-GGUF"
    assert path.parent.parent == cache / "snapshots"
    assert (cache / "refs" / "main").read_text() == path.parent.name
    assert hub_env.downloads() == [f"/{REPO}/resolve/main/tiny-Q4_K_M.gguf"]


def test_second_resolve_reuses_the_cache(hub_env, repo) -> None:
    first = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    hub_env.clear_log()
    second = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    assert second == first
    assert hub_env.downloads() == []  # at most a HEAD to check the revision, no content
    assert all(r.method == "HEAD" for r in hub_env.requests)


def test_pinned_commit_in_cache_needs_no_request_at_all(hub_env, repo) -> None:
    commit = repo.refs["main"]
    HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", revision=commit))
    hub_env.clear_log()
    HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", revision=commit))
    assert hub_env.requests == []


def test_offline_uses_the_cached_file(hub_env, repo, monkeypatch, tiny_bytes: bytes) -> None:
    online = HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    hub_env.clear_log()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf")) == online
    # Globs are matched against the cached snapshot when the Hub may not be asked.
    assert HF_SOURCE.resolve(request("*Q4_K_M.gguf")) == online
    assert hub_env.requests == []


def test_offline_without_a_cached_file_says_how_to_fix_it(hub_env, repo, offline) -> None:
    with pytest.raises(HfOfflineError) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf"))
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message
    assert "tiny-Q4_K_M.gguf" in message and REPO in message
    assert "Pre-fetch" in message
    assert hub_env.requests == []


def test_offline_glob_without_cache_fails_clearly(hub_env, repo, offline) -> None:
    with pytest.raises(HfOfflineError, match="HF_HUB_OFFLINE"):
        HF_SOURCE.resolve(request("*Q4_K_M.gguf"))


def test_revisions_are_pinned(hub_env, tiny_bytes: bytes, tiny_llama3_model_path: Path) -> None:
    other = tiny_llama3_model_path.read_bytes()
    fake = hub_env.repo(REPO)
    old = fake.add_commit("v1", {"model.gguf": tiny_bytes}, "v1.0")
    fake.add_commit("v2", {"model.gguf": other}, "main")

    latest = HF_SOURCE.resolve(request("model.gguf"))
    tagged = HF_SOURCE.resolve(request("model.gguf", revision="v1.0"))
    by_hash = HF_SOURCE.resolve(request("model.gguf", revision=old))
    assert latest.read_bytes() == other
    assert tagged.read_bytes() == tiny_bytes
    assert by_hash == tagged
    assert tagged.parent.name == old


def test_unknown_revision(hub_env, repo) -> None:
    with pytest.raises(HfRevisionNotFoundError) as caught:
        HF_SOURCE.resolve(request("tiny-Q4_K_M.gguf", revision="no-such-branch"))
    assert "no-such-branch" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.revision == "no-such-branch"


def test_glob_selects_the_single_match(hub_env, repo, tiny_bytes: bytes) -> None:
    path = HF_SOURCE.resolve(request("*Q8_0.gguf"))
    assert path.name == "tiny-Q8_0.gguf"
    assert path.read_bytes() == tiny_bytes
    assert hub_env.downloads() == [f"/{REPO}/resolve/main/tiny-Q8_0.gguf"]


def test_glob_without_match_lists_the_gguf_files(hub_env, repo) -> None:
    with pytest.raises(HfFileNotFoundError) as caught:
        HF_SOURCE.resolve(request("*Q2_K.gguf"))
    assert caught.value.available == ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf")
    assert "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf" in str(caught.value)
    assert "README.md" not in str(caught.value)


def test_glob_with_several_matches_is_refused(hub_env, repo) -> None:
    with pytest.raises(HfAmbiguousFilenameError) as caught:
        HF_SOURCE.resolve(request("tiny-*.gguf"))
    assert caught.value.matches == ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf")
    assert "matches 2 models" in str(caught.value)
    assert hub_env.downloads() == []


def test_split_names() -> None:
    assert split_shards("dir/m-Q4-00002-of-00003.gguf") == [
        "dir/m-Q4-00001-of-00003.gguf",
        "dir/m-Q4-00002-of-00003.gguf",
        "dir/m-Q4-00003-of-00003.gguf",
    ]
    assert split_shards("plain.gguf") == ["plain.gguf"]


@pytest.mark.parametrize(
    "filename", ["Q4/m-00001-of-00003.gguf", "Q4/m-00003-of-00003.gguf", "*Q4*.gguf"]
)
def test_split_models_download_every_shard(hub_env, tiny_bytes: bytes, filename: str) -> None:
    shards = {f"Q4/m-{i:05d}-of-00003.gguf": tiny_bytes + bytes([i]) for i in (1, 2, 3)}
    hub_env.repo(REPO).add_commit("split", {**shards, "Q8/m-Q8.gguf": tiny_bytes}, "main")

    path = HF_SOURCE.resolve(request(filename))
    assert path.name == "m-00001-of-00003.gguf"
    for name, content in shards.items():
        local = path.parent / Path(name).name
        assert local.read_bytes() == content  # every shard sits next to the first
    assert sorted(hub_env.downloads()) == sorted(f"/{REPO}/resolve/main/{n}" for n in shards)


def test_missing_shard_is_reported(hub_env, tiny_bytes: bytes) -> None:
    shards = {f"m-{i:05d}-of-00003.gguf": tiny_bytes for i in (1, 2)}
    hub_env.repo(REPO).add_commit("broken", shards, "main")
    with pytest.raises(HfFileNotFoundError) as caught:
        HF_SOURCE.resolve(request("m-00001-of-00003.gguf"))
    assert caught.value.filename == "m-00003-of-00003.gguf"


def test_file_not_found_lists_the_gguf_files(hub_env, repo) -> None:
    with pytest.raises(HfFileNotFoundError) as caught:
        HF_SOURCE.resolve(request("tiny-Q5_K_M.gguf"))
    message = str(caught.value)
    assert f"repository {REPO!r}, file 'tiny-Q5_K_M.gguf', revision 'main'" in message
    assert "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, ConfigurationError)


def test_repository_not_found(hub_env) -> None:
    with pytest.raises(HfRepositoryNotFoundError) as caught:
        HF_SOURCE.resolve(request("x.gguf", repo="nobody/nothing"))
    message = str(caught.value)
    assert "'nobody/nothing'" in message and "not found" in message
    assert "HF_TOKEN" in message


def test_repository_not_found_while_listing(hub_env) -> None:
    with pytest.raises(HfRepositoryNotFoundError):
        HF_SOURCE.resolve(request("*.gguf", repo="nobody/nothing"))


def test_gated_repository_without_token(hub_env, tiny_bytes: bytes) -> None:
    hub_env.repo("org/gated", gated=True).add_commit("g", {"m.gguf": tiny_bytes}, "main")
    with pytest.raises(HfAccessError) as caught:
        HF_SOURCE.resolve(request("m.gguf", repo="org/gated"))
    message = str(caught.value)
    assert "gated" in message and "HF_TOKEN" in message and "login" in message
    assert isinstance(caught.value, SerapeumError)


def test_gated_repository_with_hf_token(hub_env, tiny_bytes: bytes, monkeypatch) -> None:
    hub_env.repo("org/gated", gated=True).add_commit("g", {"m.gguf": tiny_bytes}, "main")
    monkeypatch.setenv("HF_TOKEN", "good-token")
    assert HF_SOURCE.resolve(request("m.gguf", repo="org/gated")).read_bytes() == tiny_bytes
    assert HF_SOURCE.resolve(request("*.gguf", repo="org/gated")).name == "m.gguf"


def test_wrong_token_is_reported_as_such(hub_env, tiny_bytes: bytes, monkeypatch) -> None:
    hub_env.repo("org/gated", gated=True).add_commit("g", {"m.gguf": tiny_bytes}, "main")
    monkeypatch.setenv("HF_TOKEN", "bad-token")
    with pytest.raises(HfAccessError, match="a token was sent"):
        download_gguf("org/gated", "m.gguf")


def test_unreachable_hub_and_empty_cache(hub_env, monkeypatch) -> None:
    import types

    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    # The client really retries (5 tries, 1-8 s apart); only its waiting is skipped here.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _s: None))

    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )
    with pytest.raises(HfOfflineError, match="could not be reached"):
        download_gguf(REPO, "tiny-Q4_K_M.gguf")
    with pytest.raises(HfOfflineError, match="could not be reached"):
        download_gguf(REPO, "*.gguf")


def test_llamacpp_end_to_end(hub_env, repo, plugin_host) -> None:
    from serapeum.llama_cpp import LlamaCPP

    llm = LlamaCPP(
        hf_model_id=REPO,
        hf_filename="*Q4_K_M.gguf",
        formatter="llama2",
        plugins=plugin_host,
        max_new_tokens=3,
    )
    response = llm.complete("hi", max_new_tokens=3)
    assert isinstance(response.text, str)
    assert llm.model_path is not None and llm.model_path.endswith("tiny-Q4_K_M.gguf")
    assert hub_env.downloads() == [f"/{REPO}/resolve/main/tiny-Q4_K_M.gguf"]


def test_environment_variables_in_a_fresh_process(
    hub_env, repo, tmp_path: Path, tiny_bytes: bytes
) -> None:
    """What users do: set HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE before Python starts."""
    script = textwrap.dedent(
        """
        import sys
        from serapeum.core.plugins import ModelRequest
        from serapeum_source_hf import HF_SOURCE, HfOfflineError
        req = ModelRequest(hf_model_id=sys.argv[1], hf_filename=sys.argv[2])
        try:
            print(HF_SOURCE.resolve(req))
        except HfOfflineError as error:
            print("OFFLINE:", error)
        """
    )
    cache = tmp_path / "fresh-cache"
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_env.endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "fresh-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }

    def run(filename: str, **extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, REPO, filename],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip()

    online = run("tiny-Q4_K_M.gguf")
    assert Path(online).read_bytes() == tiny_bytes
    assert Path(online).is_relative_to(cache)
    hub_env.clear_log()
    assert run("*Q4_K_M.gguf", HF_HUB_OFFLINE="1") == online
    assert run("tiny-Q8_0.gguf", HF_HUB_OFFLINE="1").startswith("OFFLINE:")
    assert hub_env.requests == []


def test_the_download_command_prefetches_for_offline_use(
    hub_env, repo, tmp_path: Path, tiny_bytes: bytes
) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_env.endpoint,
        "HF_HUB_CACHE": str(tmp_path / "cli-cache"),
    }
    env.pop("HF_TOKEN", None)

    def download(*extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serapeum.llama_cpp", "download", "--quiet", *extra],
            env={**env, **more_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    fetched = download(f"hf:{REPO}/*Q4_K_M.gguf")
    assert fetched.returncode == 0, fetched.stderr
    assert Path(fetched.stdout.strip()).read_bytes() == tiny_bytes
    hub_env.clear_log()
    offline = download(f"hf:{REPO}/tiny-Q4_K_M.gguf", HF_HUB_OFFLINE="1")
    assert offline.stdout == fetched.stdout and hub_env.requests == []
    missing = download(f"hf:{REPO}/tiny-Q8_0.gguf", HF_HUB_OFFLINE="1")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert REPO in missing.stderr


def test_passes_the_conformance_kit(hub_env, repo, tiny_bytes: bytes) -> None:
    from serapeum.llama_cpp.testing.conformance import check_source

    path = check_source(HF_SOURCE, request("tiny-Q4_K_M.gguf"))
    assert path.read_bytes() == tiny_bytes


@pytest.mark.parametrize("progress", [True, False, None])
def test_progress_into_a_log_is_one_line_per_downloaded_file(
    hub_env, repo, capsys: pytest.CaptureFixture[str], progress: bool | None
) -> None:
    """stderr here is pytest's capture, not a terminal: no bars, one line when asked for."""
    download_gguf(REPO, "tiny-Q4_K_M.gguf", progress=progress)
    stderr = capsys.readouterr().err
    if progress:
        assert stderr.splitlines() == [f"downloaded {REPO}/tiny-Q4_K_M.gguf: 0.6 MiB"]
    else:
        assert stderr == ""
    download_gguf(REPO, "tiny-Q4_K_M.gguf", progress=progress)  # from the cache: nothing
    assert capsys.readouterr().err == ""
