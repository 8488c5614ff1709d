"""Hostile files, second look: what the first hardening let through (file side).

Each test failed before its fix:

* a SentencePiece vocabulary missing one byte-fallback token passed the structure check
  and the checked load, then aborted the process on the first prompt holding that byte;
* verdicts (the structure memo, the two verdict stores on disk, the SHA-256 memo) outlived
  a rewrite that kept the file's size and mtime (``cp -p``, ``os.utime``);
* a verdict file in the cache was trusted whatever it held, and read even when a FIFO;
* the checked-load child put the working directory on ``sys.path``;
* ``context_length`` made every tokenize allocate 4 bytes per trained token (2**32 - 1:
  a raw ``ValueError``; 2**31 - 1: 8 GiB a call);
* a NaN or negative norm epsilon passed the check and aborted on the first token.

Crash-prone loads run in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serapeum.core.errors import MalformedGGUFError, ModelFileError, SerapeumError
from serapeum.core.gguf import check_gguf, clear_gguf_memo
from serapeum.core.model_files import file_identity, sha256_of
from serapeum.llama_cpp import checked_load as checked_load_module
from serapeum.llama_cpp import gguf_file
from serapeum.llama_cpp.checked_load import checked_load, forget_verdicts
from serapeum.llama_cpp.gguf_file import require_gguf

CHILD_ENV = {**os.environ, "GGML_NO_BACKTRACE": "1"}


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _replace_bytes(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def _set_field(path: Path, key: str, value: float) -> Path:
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    del reader
    return path


def _rewrite_keeping_identity(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` in place, then restore its mtime (as ``cp -p`` does)."""
    before = path.stat()
    assert len(data) == before.st_size
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert file_identity(path.stat()) == file_identity(before)


@pytest.fixture
def no_byte_tab(tmp_path: Path, tiny_model_path: Path) -> Path:
    """The tiny model with its ``<0x09>`` token renamed: no token spells a tab."""
    path = _copy(tiny_model_path, tmp_path / "no-tab.gguf")
    return _replace_bytes(path, b"<0x09>", b"<0y09>")


# -- SentencePiece byte fallback ------------------------------------------------------------
def test_a_vocabulary_without_a_byte_token_aborted_on_the_first_prompt(no_byte_tab: Path) -> None:
    """The crash the check now prevents, confirmed in a child process."""
    script = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(sys.argv[1], verbose=False, n_ctx=64)\n"
        "llm.tokenize(b'a\\tb')\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(no_byte_tab)],
        capture_output=True,
        timeout=120,
        env=CHILD_ENV,
    )
    assert child.returncode in (-6, 134), "llama.cpp no longer aborts here"


def test_a_vocabulary_without_a_byte_token_is_refused(no_byte_tab: Path) -> None:
    with pytest.raises(MalformedGGUFError) as caught:
        check_gguf(no_byte_tab, memo=False)
    assert caught.value.problem == "missing byte token"
    assert "0x09" in str(caught.value)


def test_the_checked_load_tokenizes_every_byte(no_byte_tab: Path, cache_root: Path) -> None:
    """Belt and braces: the child probe alone also finds the crash."""
    verdict = checked_load_module._probe(no_byte_tab, 120.0)
    assert not verdict.ok and verdict.crashed, verdict


def test_the_real_gemma_vocabulary_passes(gemma_model_path: Path) -> None:
    assert check_gguf(gemma_model_path, memo=False).n_vocab == 262144


# -- verdicts and rewrites that keep size and mtime -------------------------------------------
@pytest.fixture
def good_and_bad(tmp_path: Path, tiny_model_path: Path) -> tuple[Path, bytes]:
    """A good file, and the bytes of a same-size one llama.cpp aborts on (0 blocks)."""
    bad = _set_field(_copy(tiny_model_path, tmp_path / "bad.gguf"), "llama.block_count", 0)
    return _copy(tiny_model_path, tmp_path / "model.gguf"), bad.read_bytes()


def test_the_structure_memo_sees_a_rewrite_with_the_mtime_restored(
    good_and_bad: tuple[Path, bytes],
) -> None:
    path, bad = good_and_bad
    check_gguf(path)
    _rewrite_keeping_identity(path, bad)
    with pytest.raises(MalformedGGUFError):
        check_gguf(path)


def test_the_disk_verdict_sees_a_rewrite_with_the_mtime_restored(
    good_and_bad: tuple[Path, bytes], cache_root: Path
) -> None:
    path, bad = good_and_bad
    require_gguf(path)
    _rewrite_keeping_identity(path, bad)
    clear_gguf_memo()  # a new process: only the verdict on disk is left
    with pytest.raises(MalformedGGUFError):
        require_gguf(path)


def test_the_checked_load_verdict_sees_a_rewrite_with_the_mtime_restored(
    good_and_bad: tuple[Path, bytes], cache_root: Path
) -> None:
    path, bad = good_and_bad
    forget_verdicts()
    checked_load(path)
    _rewrite_keeping_identity(path, bad)
    with pytest.raises(SerapeumError):
        checked_load(path)
    forget_verdicts()
    clear_gguf_memo()
    with pytest.raises(SerapeumError):  # nor from the verdict on disk
        checked_load(path)


def test_the_sha256_memo_sees_a_rewrite_with_the_mtime_restored(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 4096)
    first = sha256_of(path)
    _rewrite_keeping_identity(path, b"b" * 4096)
    assert sha256_of(path) != first


def test_verdicts_survive_a_rename_without_a_new_probe(
    tmp_path: Path, tiny_model_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that installs a download moves the ctime: the header hash still matches."""
    path = _copy(tiny_model_path, tmp_path / "model.gguf.part")
    forget_verdicts()
    checked_load(path)
    installed = path.with_name("model.gguf")
    os.replace(path, installed)

    def no_probe(*_: object) -> None:
        raise AssertionError("probed again")

    monkeypatch.setattr(checked_load_module, "_probe", no_probe)
    checked_load(installed)
    forget_verdicts()
    clear_gguf_memo()
    checked_load(installed)
    require_gguf(installed)


# -- hostile verdict files in the cache -------------------------------------------------------
def _verdict_file(path: Path) -> Path:
    return gguf_file._PASSED._file(file_identity(path.stat()))


def test_a_forged_verdict_does_not_pass_a_bad_file(
    good_and_bad: tuple[Path, bytes], cache_root: Path
) -> None:
    path, bad = good_and_bad
    path.write_bytes(bad)
    clear_gguf_memo()
    forged = _verdict_file(path)
    forged.parent.mkdir(parents=True, exist_ok=True)
    forged.write_text(json.dumps({"ok": True, "kv_bytes_per_token": 1}))
    with pytest.raises(MalformedGGUFError):
        require_gguf(path)


@pytest.mark.parametrize(
    "content",
    ["", "{", "[]", "null", '{"judge": 1}', "[" * 50_000, '{"ok": "yes"}', "x" * 200_000],
)
def test_garbage_verdict_files_are_ignored(
    tmp_path: Path, tiny_model_path: Path, cache_root: Path, content: str
) -> None:
    path = _copy(tiny_model_path, tmp_path / "model.gguf")
    target = _verdict_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    clear_gguf_memo()
    assert require_gguf(path).kv_bytes_per_token == check_gguf(path).kv_bytes_per_token


def _finishes(run: object, timeout: float = 60.0) -> list[BaseException | None]:
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            run()  # type: ignore[operator]
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome


def test_a_fifo_or_link_as_verdict_file_neither_blocks_nor_is_written_through(
    tmp_path: Path, tiny_model_path: Path, cache_root: Path
) -> None:
    path = _copy(tiny_model_path, tmp_path / "model.gguf")
    target = _verdict_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    clear_gguf_memo()
    assert _finishes(lambda: require_gguf(path)) == [None], "blocked on a FIFO"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target.unlink()
    target.symlink_to(victim)
    clear_gguf_memo()
    assert _finishes(lambda: require_gguf(path)) == [None]
    assert victim.read_text() == "precious"


# -- the child process -------------------------------------------------------------------------
def test_the_checked_load_child_does_not_import_from_the_working_directory(
    tmp_path: Path, tiny_model_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service running in a directory of uploads must not run one as the probe."""
    planted = tmp_path / "uploads" / "serapeum"
    planted.mkdir(parents=True)
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.chdir(planted.parent)
    verdict = checked_load_module._probe(tiny_model_path, 120.0)
    assert verdict.ok, verdict
    assert not marker.exists()


# -- metadata llama-cpp-python or llama.cpp trusted --------------------------------------------
def test_a_huge_context_length_does_not_size_the_tokenizer_buffer(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    from serapeum.llama_cpp.backend.llama_loader import new_llama

    path = _set_field(
        _copy(tiny_model_path, tmp_path / "ctx.gguf"), "llama.context_length", 2**32 - 1
    )
    llama = new_llama(path, {"n_ctx": 64, "verbose": False})
    try:
        tokens = llama.tokenize(b"hello world", add_bos=True, special=False)
        long = llama.tokenize(b"x " * 5000, add_bos=True, special=False)  # past the first guess
    finally:
        llama.close()
    assert tokens and len(long) > 5000


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_a_bad_norm_epsilon_is_refused(tmp_path: Path, tiny_model_path: Path, value: float) -> None:
    path = _copy(tiny_model_path, tmp_path / "eps.gguf")
    _set_field(path, "llama.attention.layer_norm_rms_epsilon", value)
    with pytest.raises(MalformedGGUFError) as caught:
        check_gguf(path, memo=False)
    assert caught.value.problem == "bad norm epsilon"


def test_a_nan_norm_epsilon_aborts_llama_cpp(tmp_path: Path, tiny_model_path: Path) -> None:
    """What the rule prevents, seen by the checked load's child."""
    path = _set_field(
        _copy(tiny_model_path, tmp_path / "eps.gguf"),
        "llama.attention.layer_norm_rms_epsilon",
        float("nan"),
    )
    assert checked_load_module._probe(path, 120.0).crashed


def test_a_path_with_a_nul_byte_is_a_model_file_error() -> None:
    with pytest.raises(ModelFileError):
        check_gguf("model\0.gguf")


def test_a_string_array_past_the_cap_is_refused_before_it_is_walked(tmp_path: Path) -> None:
    """2**21 + 1 empty tokens: a 17 MB file that took seconds and hundreds of MB to walk
    (ten times that, minutes and gigabytes)."""
    import struct

    from serapeum.core.gguf import MAX_STRING_ARRAY

    def text(value: bytes) -> bytes:
        return struct.pack("<Q", len(value)) + value

    count = MAX_STRING_ARRAY + 1
    path = tmp_path / "huge-vocab.gguf"
    with open(path, "wb") as handle:
        handle.write(b"GGUF" + struct.pack("<Iqq", 3, 0, 2))
        handle.write(text(b"tokenizer.ggml.model") + struct.pack("<i", 8) + text(b"gpt2"))
        handle.write(text(b"tokenizer.ggml.tokens") + struct.pack("<iiQ", 9, 8, count))
        handle.write(bytes(8 * count))  # every token empty
    with pytest.raises(MalformedGGUFError) as caught:
        check_gguf(path, memo=False)
    assert caught.value.problem == "array too long"
