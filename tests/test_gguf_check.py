"""The GGUF structure check (``serapeum.core.gguf.check_gguf``).

Malformed files are made from the tiny model by a small GGUF editor below (it rewrites the
header, key/value pairs and tensor infos and keeps the tensor data), so each test changes
exactly one thing. The cases that kill llama.cpp are loaded for real in a child process:
the test fails if they stop aborting (then the case no longer proves anything) or if the
check stops refusing them.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from serapeum.core import gguf as gguf_module
from serapeum.core.errors import (
    ConfigurationError,
    MalformedGGUFError,
    ModelFileError,
    NotGGUFError,
    SerapeumError,
)
from serapeum.core.gguf import GGUFSummary, check_gguf, clear_gguf_memo

ROOT = Path(__file__).resolve().parent.parent

# -- a small GGUF editor ------------------------------------------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?"}
_FMT |= {U64: "Q", I64: "q", F64: "d"}


def _gguf_string(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<Q", len(raw)) + raw


def encode_value(kind: int, value: Any, element: int | None = None) -> bytes:
    """The bytes after a key's type field (for arrays: element type, count, elements)."""
    if kind == STR:
        return _gguf_string(value)
    if kind == ARR:
        assert element is not None
        body = b"".join(encode_value(element, item) for item in value)
        return struct.pack("<iQ", element, len(value)) + body
    return struct.pack("<" + _FMT[kind], value)


class GGUFEdit:
    """A GGUF file as editable parts; ``write`` lays them out again (data kept as is)."""

    def __init__(self, path: Path) -> None:
        raw = path.read_bytes()
        magic, self.version, n_tensors, n_kv = struct.unpack_from("<4sIqq", raw, 0)
        assert magic == b"GGUF"
        pos = 24
        self.kv: list[list[Any]] = []  # [key, type, encoded value]
        for _ in range(n_kv):
            key, pos = self._string(raw, pos)
            (kind,) = struct.unpack_from("<i", raw, pos)
            start = pos + 4
            pos = self._skip(raw, start, kind)
            self.kv.append([key.decode(), kind, raw[start:pos]])
        self.tensors: list[list[Any]] = []  # [name, dims, type, offset]
        for _ in range(n_tensors):
            name, pos = self._string(raw, pos)
            (n_dims,) = struct.unpack_from("<I", raw, pos)
            dims = list(struct.unpack_from(f"<{n_dims}q", raw, pos + 4))
            pos += 4 + 8 * n_dims
            kind, offset = struct.unpack_from("<iQ", raw, pos)
            pos += 12
            self.tensors.append([name.decode(), dims, kind, offset])
        self.alignment = 32
        data_offset = pos + -pos % self.alignment
        self.data = raw[data_offset:]

    @staticmethod
    def _string(raw: bytes, pos: int) -> tuple[bytes, int]:
        (length,) = struct.unpack_from("<Q", raw, pos)
        return raw[pos + 8 : pos + 8 + length], pos + 8 + length

    def _skip(self, raw: bytes, pos: int, kind: int) -> int:
        if kind == STR:
            return self._string(raw, pos)[1]
        if kind == ARR:
            element, count = struct.unpack_from("<iQ", raw, pos)
            pos += 12
            for _ in range(count):
                pos = self._skip(raw, pos, element)
            return pos
        return pos + struct.calcsize("<" + _FMT[kind])

    # editing
    def index(self, key: str) -> int:
        return next(i for i, entry in enumerate(self.kv) if entry[0] == key)

    def set(self, key: str, kind: int, value: Any, element: int | None = None) -> GGUFEdit:
        entry = [key, kind, encode_value(kind, value, element)]
        try:
            self.kv[self.index(key)] = entry
        except StopIteration:
            self.kv.append(entry)
        return self

    def set_raw(self, key: str, kind: int, payload: bytes) -> GGUFEdit:
        self.kv[self.index(key)] = [key, kind, payload]
        return self

    def drop(self, key: str) -> GGUFEdit:
        del self.kv[self.index(key)]
        return self

    def strings(self, key: str) -> list[bytes]:
        entry = self.kv[self.index(key)]
        payload = entry[2]
        _, count = struct.unpack_from("<iQ", payload, 0)
        out, pos = [], 12
        for _ in range(count):
            item, pos = self._string(payload, pos)
            out.append(item)
        return out

    def set_strings(self, key: str, items: list[bytes]) -> GGUFEdit:
        return self.set(key, ARR, items, STR)

    def write(self, path: Path, *, header: bytes | None = None) -> Path:
        out = bytearray(
            header or struct.pack("<4sIqq", b"GGUF", self.version, len(self.tensors), len(self.kv))
        )
        for key, kind, payload in self.kv:
            out += _gguf_string(key.encode("utf-8", "surrogateescape"))
            out += struct.pack("<i", kind) + payload
        for name, dims, kind, offset in self.tensors:
            out += _gguf_string(name) + struct.pack("<I", len(dims))
            out += struct.pack(f"<{len(dims)}q", *dims) + struct.pack("<iQ", kind, offset)
        out += bytes(-len(out) % self.alignment)
        path.write_bytes(bytes(out) + self.data)
        return path


def refuse(path: Path, *words: str) -> MalformedGGUFError:
    """Check that ``path`` is refused with a message naming ``words``; return the error."""
    with pytest.raises(MalformedGGUFError) as caught:
        check_gguf(path, memo=False)
    error = caught.value
    message = str(error).lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    assert error.path == str(path)
    assert error.problem
    assert "download" in message or "convert" in message, "the message must say what to do"
    return error


# -- llama.cpp in a child process -----------------------------------------------------------
LOAD = (
    "import sys, llama_cpp\n"
    "llm = llama_cpp.Llama(model_path=sys.argv[1], verbose=False, n_ctx=256, n_threads=1)\n"
    "llm.tokenize(b'hello world', add_bos=True, special=True)\n"
)


def load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    """Load ``path`` with llama.cpp in a child, so an abort fails one test, not the run."""
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # no gdb attached on abort
    )


def aborted(result: subprocess.CompletedProcess[str]) -> bool:
    """Killed by a signal (SIGABRT from GGML_ASSERT, or SIGSEGV/SIGFPE), or exit 134."""
    return result.returncode < 0 or result.returncode == 134


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def tiny(tiny_model_path: Path) -> Callable[[], GGUFEdit]:
    """A fresh editor on the tiny model for each edit."""
    return lambda: GGUFEdit(tiny_model_path)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    clear_gguf_memo()


# -- good files -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fixture", ["tiny_model_path", "tiny_llama3_model_path", "tiny_gemma_model_path"]
)
def test_good_tiny_models_pass(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    summary = check_gguf(path)
    assert isinstance(summary, GGUFSummary)
    assert summary.version == 3
    assert summary.architecture == "llama"
    assert summary.block_count == 2
    assert summary.n_tensors == 3 + 9 * 2
    assert summary.n_vocab and summary.n_vocab > 300
    assert summary.tokenizer_model == "llama"
    assert summary.file_size == path.stat().st_size
    assert summary.data_offset % summary.alignment == 0
    assert summary.header_size <= summary.data_offset < summary.file_size


def test_a_rewritten_tiny_model_still_loads(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    """The editor itself changes nothing: the test cases below differ in one thing only."""
    path = tiny().write(tmp_path / "same.gguf")
    check_gguf(path)
    result = load_in_child(path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_version_2_is_accepted(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.version = 2
    assert check_gguf(edit.write(tmp_path / "v2.gguf")).version == 2


def test_ggml_type_table_matches_the_installed_ggml() -> None:
    """Block sizes and bytes per block, against the ggml that llama-cpp-python ships."""
    import ctypes

    import llama_cpp

    from serapeum.core.gguf import GGML_TYPES

    found = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base.*"))
    if not found:
        pytest.skip("this llama-cpp-python build has no separate ggml-base library")
    ggml = ctypes.CDLL(str(found[0]))
    ggml.ggml_blck_size.restype = ctypes.c_int64
    ggml.ggml_type_size.restype = ctypes.c_size_t
    for type_id in range(max(GGML_TYPES) + 1):
        block, size = ggml.ggml_blck_size(type_id), ggml.ggml_type_size(type_id)
        if type_id in GGML_TYPES:
            assert GGML_TYPES[type_id][1:] == (block, size), type_id
        else:
            assert block == 0, f"type {type_id} is supported again"


@pytest.mark.e2e
def test_gemma_passes(gemma_model_path: Path) -> None:
    summary = check_gguf(gemma_model_path)
    assert summary.architecture == "gemma3"
    assert summary.block_count == 18
    assert summary.n_vocab == 262_144
    assert summary.n_tensors > 200


# -- not GGUF at all --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["empty"]),
        (b"<!DOCTYPE html><html>Not Found</html>", ["html"]),
        (b'  {"error": "rate limited"}', ["json"]),
        (b"PK\x03\x04 a zip file", ["starts with"]),
        (b"GG", ["starts with"]),
    ],
)
def test_not_gguf(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(NotGGUFError) as caught:
        check_gguf(path)
    assert not isinstance(caught.value, MalformedGGUFError)
    message = str(caught.value).lower()
    assert all(word in message for word in words)
    assert "convert_hf_to_gguf" in message


def test_errors_are_typed() -> None:
    assert issubclass(MalformedGGUFError, NotGGUFError)
    assert issubclass(NotGGUFError, ConfigurationError)
    assert issubclass(MalformedGGUFError, SerapeumError)
    assert issubclass(MalformedGGUFError, ValueError)
    assert issubclass(ModelFileError, OSError)


# -- the header --------------------------------------------------------------------------------
def _header(version: int = 3, n_tensors: int = 21, n_kv: int = 20) -> bytes:
    return struct.pack("<4sIqq", b"GGUF", version, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("header", "problem", "words"),
    [
        (_header(version=1), "GGUF version 1", ["version 1"]),
        (_header(version=0), "unknown GGUF version", ["version is 0"]),
        (_header(version=4), "unknown GGUF version", ["version is 4"]),
        (_header(version=3 << 24), "big-endian file", ["big-endian"]),
        (_header(n_tensors=-1), "bad tensor count", ["-1 tensors"]),
        (_header(n_tensors=10**12), "bad tensor count", ["tensors"]),
        (_header(n_kv=2**62), "bad key/value count", ["key/value"]),
        (_header(n_kv=-5), "bad key/value count", ["key/value"]),
    ],
    ids=["v1", "v0", "v4", "big-endian", "-1 tensors", "10^12 tensors", "2^62 kv", "-5 kv"],
)
def test_bad_header(
    tiny: Callable[[], GGUFEdit], tmp_path: Path, header: bytes, problem: str, words: list[str]
) -> None:
    path = tiny().write(tmp_path / "bad.gguf", header=header)
    error = refuse(path, *words)
    assert error.problem == problem


def test_header_cut_short(tiny_model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(tiny_model_path.read_bytes()[:20])
    assert refuse(path, "ends inside its header").problem == "truncated header"


# -- key/value pairs -------------------------------------------------------------------------
def test_string_longer_than_the_file(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.set_raw("general.name", STR, struct.pack("<Q", 10**9) + b"x")
    assert refuse(edit.write(tmp_path / "bad.gguf"), "general.name").problem == "truncated header"


def test_huge_array_length(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.set_raw("tokenizer.ggml.scores", ARR, struct.pack("<iQ", F32, 2**40))
    assert refuse(edit.write(tmp_path / "bad.gguf"), "scores").problem == "array too long"


def test_array_past_the_end(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.set_raw("tokenizer.ggml.scores", ARR, struct.pack("<iQ", F32, 10**8))
    assert refuse(edit.write(tmp_path / "bad.gguf"), "scores").problem == "truncated header"


def test_string_in_an_array_past_the_end(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    payload = encode_value(ARR, tokens[:-1], STR)
    payload = struct.pack("<iQ", STR, len(tokens)) + payload[12:]
    payload += struct.pack("<Q", 10**9) + b"abc"
    edit.set_raw("tokenizer.ggml.tokens", ARR, payload)
    error = refuse(edit.write(tmp_path / "bad.gguf"), "tokenizer.ggml.tokens")
    assert error.problem == "string past end of file"


def test_empty_key(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.kv[0][0] = ""
    assert refuse(edit.write(tmp_path / "bad.gguf"), "empty name").problem == "empty key"


def test_duplicate_key(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.kv.append(list(edit.kv[edit.index("general.name")]))
    assert refuse(edit.write(tmp_path / "bad.gguf"), "general.name", "twice").problem == (
        "duplicate key"
    )


def test_key_not_utf8(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.kv[edit.index("general.name")][0] = "general.\udcff"
    assert refuse(edit.write(tmp_path / "bad.gguf"), "utf-8").problem == "invalid UTF-8"


@pytest.mark.parametrize("kind", [13, 255, -1])
def test_invalid_value_type(tiny: Callable[[], GGUFEdit], tmp_path: Path, kind: int) -> None:
    edit = tiny()
    edit.kv[edit.index("general.name")][1] = kind
    assert refuse(edit.write(tmp_path / "bad.gguf"), "general.name").problem == (
        "invalid value type"
    )


def test_array_of_arrays(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    edit.set_raw("general.name", ARR, struct.pack("<iQ", ARR, 1) + struct.pack("<iQ", U8, 0))
    assert refuse(edit.write(tmp_path / "bad.gguf"), "arrays of arrays").problem == (
        "invalid value type"
    )


@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [(U32, 0, ["power of two"]), (U32, 48, ["power of two"]), (U64, 32, ["u32"])],
)
def test_bad_alignment(
    tiny: Callable[[], GGUFEdit], tmp_path: Path, kind: int, value: int, words: list[str]
) -> None:
    edit = tiny().set("general.alignment", kind, value)
    assert refuse(edit.write(tmp_path / "bad.gguf"), *words).problem == "bad alignment"


def test_larger_alignment_is_fine(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny().set("general.alignment", U32, 32)
    assert check_gguf(edit.write(tmp_path / "ok.gguf")).alignment == 32


# -- tensor infos ------------------------------------------------------------------------------
def _edit_tensor(edit: GGUFEdit, index: int, **changes: Any) -> GGUFEdit:
    fields = {"name": 0, "dims": 1, "type": 2, "offset": 3}
    for field, value in changes.items():
        edit.tensors[index][fields[field]] = value
    return edit


@pytest.mark.parametrize(
    ("changes", "problem", "words"),
    [
        ({"name": "x" * 64}, "tensor name too long", ["63"]),
        ({"name": "output.weight"}, "duplicate tensor", ["output.weight", "twice"]),
        ({"dims": [64, 471, 1, 1, 1]}, "too many dimensions", ["5 dimensions"]),
        ({"dims": [0, 471]}, "bad tensor shape", ["positive"]),
        ({"dims": [-64, 471]}, "bad tensor shape", ["positive"]),
        ({"dims": [2**40, 2**40]}, "bad tensor shape", ["too many elements"]),
        ({"type": 99}, "invalid tensor type", ["99"]),
        ({"type": 4}, "removed tensor type", ["q4_2"]),
        ({"type": 36}, "removed tensor type", ["iq4_nl_4_4"]),
        ({"type": 12}, "bad tensor shape", ["block size 256"]),
        ({"offset": 32}, "bad tensor offset", ["expects 0"]),
    ],
)
def test_bad_tensor_info(
    tiny: Callable[[], GGUFEdit],
    tmp_path: Path,
    changes: dict[str, Any],
    problem: str,
    words: list[str],
) -> None:
    path = _edit_tensor(tiny(), 0, **changes).write(tmp_path / "bad.gguf")
    assert refuse(path, *words).problem == problem


def test_truncated_in_the_tensor_data(tiny_model_path: Path, tmp_path: Path) -> None:
    """An interrupted download: the header is whole, the last tensors are not."""
    data = tiny_model_path.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) - 1000])
    error = refuse(path, "download it again", "ends at byte")
    assert error.problem == "truncated file"


def test_truncated_before_the_data(tiny_model_path: Path, tmp_path: Path) -> None:
    summary = check_gguf(tiny_model_path)
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_model_path.read_bytes()[: summary.header_size + 3])
    assert refuse(path, "download it again").problem == "truncated file"


def test_truncated_in_the_header(tiny_model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_model_path.read_bytes()[:5000])
    assert refuse(path, "download it again").problem in {
        "truncated header",
        "string past end of file",
    }


def test_header_larger_than_the_first_read(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    """A header of more than 8 MiB (big vocabularies) is read again, whole."""
    edit = tiny().set("test.blob", ARR, list(range(256)) * 40_000, U8)  # 10 MB
    path = edit.write(tmp_path / "big.gguf")
    summary = check_gguf(path)
    assert summary.header_size > 10_000_000
    assert summary.n_vocab == check_gguf(tiny().write(tmp_path / "small.gguf")).n_vocab
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:9_000_000])
    assert refuse(tmp_path / "cut.gguf", "download it again").problem == "truncated header"


@pytest.mark.parametrize("first_read", [24, 100, 4096])
def test_small_first_reads_give_the_same_verdicts(
    tiny: Callable[[], GGUFEdit],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_read: int,
) -> None:
    """The header is re-read, larger, until it is whole: the verdicts do not change."""
    good = tiny().write(tmp_path / "good.gguf")
    bad = _duplicate_token(tiny()).write(tmp_path / "bad.gguf")
    expected = check_gguf(good, memo=False)
    monkeypatch.setattr(gguf_module, "_FIRST_READ", first_read)
    assert check_gguf(good, memo=False) == expected
    assert refuse(bad).problem == "duplicate token"


# -- hyperparameters --------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, 513, 1000, 2**32 - 1])
def test_block_count_out_of_range(tiny: Callable[[], GGUFEdit], tmp_path: Path, count: int) -> None:
    path = tiny().set("llama.block_count", U32, count).write(tmp_path / "bad.gguf")
    assert refuse(path, "1 to 512").problem == "bad block count"


@pytest.mark.parametrize(("count", "words"), [(1, ["block 1"]), (3, ["0 to 1 only"])])
def test_block_count_against_the_tensors(
    tiny: Callable[[], GGUFEdit], tmp_path: Path, count: int, words: list[str]
) -> None:
    path = tiny().set("llama.block_count", U32, count).write(tmp_path / "bad.gguf")
    assert refuse(path, "llama.block_count", *words).problem == "bad block count"


def test_block_count_not_an_integer(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    path = tiny().set("llama.block_count", STR, "2").write(tmp_path / "bad.gguf")
    assert refuse(path, "not an integer").problem == "bad block count"


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"llama.expert_count": 4}, "bad expert counts"),
        ({"llama.expert_used_count": 2}, "bad expert counts"),
        ({"llama.expert_count": 2000, "llama.expert_used_count": 2}, "bad expert counts"),
        ({"llama.expert_count": 4, "llama.expert_used_count": 8}, "bad expert counts"),
        ({"llama.nextn_predict_layers": 3}, "bad layer count"),
    ],
)
def test_hparams_llama_cpp_asserts_on(
    tiny: Callable[[], GGUFEdit], tmp_path: Path, keys: dict[str, int], problem: str
) -> None:
    edit = tiny()
    for key, value in keys.items():
        edit.set(key, U32, value)
    assert refuse(edit.write(tmp_path / "bad.gguf")).problem == problem


def test_unknown_rope_scaling(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    path = tiny().set("llama.rope.scaling.type", STR, "cubic").write(tmp_path / "bad.gguf")
    assert refuse(path, "cubic").problem == "unknown rope scaling"


# -- the vocabulary ---------------------------------------------------------------------------
def test_duplicate_token(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[-1] = tokens[-2]
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "bad.gguf")
    assert refuse(path, "twice", f"ids {len(tokens) - 2} and {len(tokens) - 1}").problem == (
        "duplicate token"
    )


def test_empty_token_colliding_with_its_placeholder(
    tiny: Callable[[], GGUFEdit], tmp_path: Path
) -> None:
    """llama.cpp renames an empty token i to "[EMPTY_i]"; a real "[EMPTY_i]" then collides."""
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[300], tokens[301] = b"", b"[EMPTY_300]"
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "bad.gguf")
    assert refuse(path, "[EMPTY_300]").problem == "duplicate token"


def test_empty_tokens_alone_are_fine(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[300] = tokens[301] = b""
    check_gguf(edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "ok.gguf"))


def test_long_and_binary_tokens_take_the_exact_path(
    tiny: Callable[[], GGUFEdit], tmp_path: Path
) -> None:
    """Tokens of 256+ bytes or holding zero bytes leave the fast walk; still checked."""
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[-1] = b"\xe2\x96\x81" * 200  # 600 bytes
    tokens[-2] = b"zq\x00\x00\x00\x00\x00\x00\x00\x00b"  # llama.cpp reads "zq"
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "ok.gguf")
    assert check_gguf(path).n_vocab == len(tokens)
    tokens[-3] = tokens[-1]
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "bad.gguf")
    assert refuse(path).problem == "duplicate token"


@pytest.mark.parametrize("name", ["scores", "token_type"])
def test_vocabulary_arrays_of_unequal_length(
    tiny: Callable[[], GGUFEdit], tmp_path: Path, name: str
) -> None:
    edit = tiny()
    key = f"tokenizer.ggml.{name}"
    kind = F32 if name == "scores" else I32
    path = edit.set(key, ARR, [0] * 10, kind).write(tmp_path / "bad.gguf")
    assert refuse(path, key, "one entry per token").problem == "bad vocabulary"


@pytest.mark.parametrize(
    ("key", "kind", "value", "element"),
    [
        ("tokenizer.ggml.tokens", ARR, [1, 2], I32),
        ("tokenizer.ggml.tokens", STR, "<s>", None),
        ("tokenizer.ggml.token_type", ARR, [b"a"] * 471, STR),
    ],
)
def test_vocabulary_arrays_of_the_wrong_type(
    tiny: Callable[[], GGUFEdit],
    tmp_path: Path,
    key: str,
    kind: int,
    value: Any,
    element: int | None,
) -> None:
    path = tiny().set(key, kind, value, element).write(tmp_path / "bad.gguf")
    assert refuse(path, key).problem == "bad vocabulary"


def test_special_token_ids_out_of_range_fall_back(
    tiny: Callable[[], GGUFEdit], tmp_path: Path
) -> None:
    """llama.cpp only warns about an out-of-range id (and real files have such padding ids):
    it falls back to the tokenizer's default, so the file is accepted."""
    edit = tiny().set("tokenizer.ggml.padding_token_id", U32, 2**32 - 1)
    edit.set("tokenizer.ggml.bos_token_id", U32, 10**6)
    check_gguf(edit.write(tmp_path / "ok.gguf"))


def test_no_bos_token_where_the_tokenizer_must_add_one(
    tiny: Callable[[], GGUFEdit], tmp_path: Path
) -> None:
    """A BPE vocabulary whose pre-tokenizer has no default BOS, told to add one."""
    edit = tiny().set("tokenizer.ggml.model", STR, "gemma4")
    edit.set("tokenizer.ggml.merges", ARR, [b"a b"], STR)
    edit.set("tokenizer.ggml.bos_token_id", U32, 10**6)
    path = edit.write(tmp_path / "bad.gguf")
    assert refuse(path, "bos").problem == "missing special token"


def test_special_token_not_utf8(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    """llama-cpp-python decodes the BOS text strictly while loading (UnicodeDecodeError)."""
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    bos = tokens.index(b"<s>")
    tokens[bos] = b"<s\xff>"
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "bad.gguf")
    assert refuse(path, "not valid utf-8", f"token {bos}").problem == "invalid UTF-8 token"


def test_normal_token_not_utf8_is_accepted(tiny: Callable[[], GGUFEdit], tmp_path: Path) -> None:
    """Byte-level vocabularies (RWKV) hold tokens that are not UTF-8; llama.cpp is fine."""
    edit = tiny()
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[-1] = b"\xe2\x96"
    path = edit.set_strings("tokenizer.ggml.tokens", tokens).write(tmp_path / "ok.gguf")
    check_gguf(path)
    assert load_in_child(path).returncode == 0


# -- the memo and special files ------------------------------------------------------------
def test_memo_by_file_identity(tiny_model_path: Path, tmp_path: Path) -> None:
    """A second check of an unchanged file does not read it; any change is seen."""
    path = tmp_path / "model.gguf"
    data = tiny_model_path.read_bytes()
    path.write_bytes(data)
    check_gguf(path)
    before = path.stat()
    broken = bytearray(data)
    broken[4] = 0xFF  # version 255
    with open(path, "r+b") as handle:  # same inode, same size...
        handle.write(broken)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...same mtime
    # A rewrite with its size and mtime restored (cp -p, rsync -t) still changes the ctime,
    # so the memo does not answer with a stale verdict.
    with pytest.raises(MalformedGGUFError):
        check_gguf(path)
    with pytest.raises(MalformedGGUFError):
        check_gguf(path, memo=False)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(MalformedGGUFError) as caught:
        check_gguf(path)
    with pytest.raises(MalformedGGUFError) as again:  # the refusal is remembered too
        check_gguf(path)
    assert str(again.value) == str(caught.value)
    assert again.value.problem == caught.value.problem


def test_memo_follows_the_real_path(tiny_model_path: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny_model_path)
    assert check_gguf(link) is check_gguf(tiny_model_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            check_gguf(fifo)
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)  # a guard against a hang, not a speed assertion
    if worker.is_alive():  # unblock the thread: it is stuck in open()
        with open(fifo, "wb"):
            pass
        pytest.fail("check_gguf blocked on a FIFO")
    assert isinstance(outcome[0], ModelFileError)
    assert "regular file" in str(outcome[0])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        check_gguf(tmp_path / "nothing.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="regular file"):
        check_gguf(tmp_path)


# -- the crashes: llama.cpp really aborts, and the check refuses ---------------------------
def _block_count(value: int) -> Callable[[GGUFEdit], GGUFEdit]:
    return lambda edit: edit.set("llama.block_count", U32, value)


def _duplicate_token(edit: GGUFEdit) -> GGUFEdit:
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[-1] = tokens[-2]
    return edit.set_strings("tokenizer.ggml.tokens", tokens)


def _token_equal_up_to_a_zero_byte(edit: GGUFEdit) -> GGUFEdit:
    """llama.cpp reads tokens as C strings: "<s>\\0x" is "<s>", a duplicate."""
    tokens = edit.strings("tokenizer.ggml.tokens")
    tokens[-1] = tokens[tokens.index(b"<s>")] + b"\x00x"
    return edit.set_strings("tokenizer.ggml.tokens", tokens)


def _set(key: str, kind: int, value: Any) -> Callable[[GGUFEdit], GGUFEdit]:
    return lambda edit: edit.set(key, kind, value)


CRASHES: dict[str, Callable[[GGUFEdit], GGUFEdit]] = {
    "block_count 0": _block_count(0),
    "block_count 513": _block_count(513),
    "block_count 1000": _block_count(1000),
    "duplicate token": _duplicate_token,
    "duplicate token up to a zero byte": _token_equal_up_to_a_zero_byte,
    "rope scaling unknown": _set("llama.rope.scaling.type", STR, "cubic"),
    "experts without expert_count": _set("llama.expert_used_count", U32, 2),
    "nextn layers over block_count": _set("llama.nextn_predict_layers", U32, 3),
    "more experts than llama.cpp allows": lambda edit: edit.set(
        "llama.expert_count", U32, 2000
    ).set("llama.expert_used_count", U32, 2),
    "architecture read up to a zero byte": lambda edit: edit.set(
        "general.architecture", STR, "llama\x00junk"
    ).set("llama.block_count", U32, 0),
    "no BOS where the tokenizer must add one": lambda edit: (
        edit.set("tokenizer.ggml.model", STR, "gemma4")
        .set("tokenizer.ggml.merges", ARR, [b"a b"], STR)
        .set("tokenizer.ggml.bos_token_id", U32, 10**6)
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_crash_cases_abort_llama_cpp_and_are_refused(
    case: str, tiny: Callable[[], GGUFEdit], tmp_path: Path
) -> None:
    path = CRASHES[case](tiny()).write(tmp_path / "crash.gguf")
    result = load_in_child(path)
    assert aborted(result), (
        f"{case}: llama.cpp no longer aborts (exit {result.returncode}); the case proves "
        "nothing now, update it"
    )
    refuse(path)


def test_header_byte_226_set_to_ff(tiny_model_path: Path, tmp_path: Path) -> None:
    """The single-byte mutation from the issue: it aborts llama.cpp."""
    data = bytearray(tiny_model_path.read_bytes())
    data[226] = 0xFF
    path = tmp_path / "byte226.gguf"
    path.write_bytes(data)
    assert aborted(load_in_child(path))
    refuse(path)


# -- a sample of the mutation fuzz ----------------------------------------------------------------
def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_gguf_check", ROOT / "bench" / "bench_gguf_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutation_fuzz_sample(tiny_model_path: Path) -> None:
    """Every 17th byte of the header region set to 0xFF and 0x00: no mutation the check
    accepts may crash llama.cpp (the full run: ``bench/bench_gguf_check.py --fuzz``)."""
    bench = _bench_module()
    end = bench.header_end(tiny_model_path)
    data = tiny_model_path.read_bytes()
    pairs = list(bench.mutations(data, range(0, end, 17)))
    results = bench.fuzz(tiny_model_path, pairs, workers=2, load_all=False)
    report, missed = bench.fuzz_report(results)
    assert missed == 0, report
    accepted = [r for r in results if r[2] == "ok"]
    assert accepted, "the sample should hold harmless mutations (names, padding bytes)"
    assert all(r[3] in {"loaded", "failed"} for r in accepted), report


def test_a_shard_of_a_split_model_holds_only_some_blocks(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """The first shard of ``gguf-split`` output names every block but holds a few of them."""
    import gguf

    reader = gguf.GGUFReader(str(tiny_model_path))

    def shard(path: Path, split: bool) -> Path:
        writer = gguf.GGUFWriter(str(path), "llama")
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        if split:
            writer.add_uint16("split.no", 0)
            writer.add_uint16("split.count", 2)
            writer.add_int32("split.tensors.count", len(reader.tensors))
        for tensor in reader.tensors:
            if not tensor.name.startswith("blk.1."):
                shape = list(reversed(tensor.shape.tolist()))
                writer.add_tensor(tensor.name, tensor.data, raw_shape=shape)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    assert check_gguf(shard(tmp_path / "m-00001-of-00002.gguf", split=True)).block_count == 2
    with pytest.raises(MalformedGGUFError, match="blocks 0 to 0 only"):
        check_gguf(shard(tmp_path / "whole.gguf", split=False))
