"""A GGUF structure check that runs before llama.cpp sees a file.

llama.cpp trusts much of a GGUF file: a bad ``block_count``, a duplicated vocabulary
token or a broken header byte can end in a failed assertion, and that is ``abort()``,
which kills the whole Python process. ``check_gguf`` reads the header, every key/value
pair and every tensor description (never the tensor data) with ``struct``, checks what
llama.cpp asserts on, and raises a typed error instead. It reads the file rather than
mapping it: a file cut short under a memory map kills the process with SIGBUS.

Pure Python with no ``llama_cpp`` import, so plugins (model sources, downloaders) can
check a file before they install it. The rules follow the llama.cpp vendored by
llama-cpp-python 0.3.x (``ggml/src/gguf.cpp``, ``src/llama-model-loader.cpp``,
``src/llama-model.cpp``, ``src/llama-vocab.cpp``).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from attrs import frozen

from serapeum.core.errors import MalformedGGUFError, ModelFileError, NotGGUFError
from serapeum.core.model_files import FileStamp

__all__ = [
    "CHECK_VERSION",
    "GGML_TYPES",
    "GGUF_MAGIC",
    "GGUFSummary",
    "check_gguf",
    "clear_gguf_memo",
    "stamped_check_gguf",
]

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGUF_MAX_STRING_LENGTH = 1 << 30  # gguf.cpp: GGUF_MAX_STRING_LENGTH
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30  # gguf.cpp: GGUF_MAX_ARRAY_ELEMENTS
# Ours: 8 times Gemma 3's 262,144-token vocabulary, 7 times Llama 3's 280,147 merges. A
# string array costs a Python object per element here (and a std::string in llama.cpp):
# 80 million empty tokens fit in a 640 MB file and would take minutes and gigabytes.
MAX_STRING_ARRAY = 1 << 21
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
LLAMA_MAX_LAYERS = 512  # llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h
INT64_MAX = (1 << 63) - 1
SIZE_MAX = (1 << 64) - 1

# ggml type id -> (name, elements per block, bytes per block), from ggml.c's type_traits.
# Ids missing here (4, 5, 31-33, 36-38) are types whose support was removed: llama.cpp
# gives them a block size of 0 and refuses them.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}
_REMOVED_TYPES = {4: "Q4_2", 5: "Q4_3", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8"}
_REMOVED_TYPES |= {36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8"}

# GGUF value types: id -> (name, struct format or "" for string / array).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_VALUE_TYPES: dict[int, tuple[str, str]] = {
    _UINT8: ("u8", "<B"),
    _INT8: ("i8", "<b"),
    _UINT16: ("u16", "<H"),
    _INT16: ("i16", "<h"),
    _UINT32: ("u32", "<I"),
    _INT32: ("i32", "<i"),
    _FLOAT32: ("f32", "<f"),
    _BOOL: ("bool", "<b"),
    _STRING: ("str", ""),
    _ARRAY: ("arr", ""),
    _UINT64: ("u64", "<Q"),
    _INT64: ("i64", "<q"),
    _FLOAT64: ("f64", "<d"),
}
_SCALARS = {kind: struct.Struct(fmt) for kind, (_, fmt) in _VALUE_TYPES.items() if fmt}
_INTEGER_TYPES = {_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64}
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIqq")  # magic, version, n_tensors, n_kv

# Token types (llama.cpp's LLAMA_TOKEN_TYPE_*) whose text the engine decodes strictly.
_SPECIAL_TOKEN_TYPES = frozenset({2, 3, 4})  # UNKNOWN, CONTROL, USER_DEFINED
_SPECIAL_MARKS = bytes(1 if kind in _SPECIAL_TOKEN_TYPES else 0 for kind in range(256))
_MARK = re.compile(b"\x01")

_REDOWNLOAD = (
    "The file is damaged: download it again (an interrupted or altered download looks "
    "like this) or, if you made it yourself, re-convert it with a current llama.cpp "
    "(convert_hf_to_gguf.py)"
)
_TRUNCATED = (
    "The file is incomplete, most likely an interrupted download: download it again "
    "(the model's sources list its expected size and SHA-256)"
)


@frozen
class GGUFSummary:
    """What the check learnt about a file that passed it.

    ``architecture``, ``block_count`` and ``n_vocab`` are ``None`` where the file does
    not say (a vocabulary-less or non-LLM GGUF); ``header_size`` is where the header,
    key/value pairs and tensor infos end, ``data_offset`` where the tensor data starts.
    """

    version: int
    n_tensors: int
    n_kv: int
    architecture: str | None
    block_count: int | None
    n_vocab: int | None
    data_offset: int
    file_size: int
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    header_size: int = 0
    tokenizer_model: str | None = None
    kv_bytes_per_token: int | None = None  # f16 KV cache per token of context (upper bound)


class _Problem(Exception):
    """Internal: what is wrong (a few words), the detail, and what to do."""

    def __init__(self, problem: str, detail: str, advice: str = _REDOWNLOAD) -> None:
        super().__init__(problem)
        self.problem = problem
        self.detail = detail
        self.advice = advice


@frozen
class _ArrayInfo:
    element_type: int
    length: int
    offset: int  # of the first element
    strings: list[bytes] | None = None  # kept for the vocabulary only
    plain: bool = False  # no string is empty or holds a zero byte


@frozen
class _Tensor:
    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int


# -- the memo -----------------------------------------------------------------------------
_MEMO_SIZE = 128
# identity -> (stamp, summary) for a file that passed, (ctime, (problem, reason)) otherwise
_memo: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()
_memo_lock = threading.Lock()


def clear_gguf_memo() -> None:
    """Forget every remembered verdict (tests)."""
    with _memo_lock:
        _memo.clear()


def _remember(key: tuple[Any, ...], verdict: tuple[Any, Any]) -> None:
    with _memo_lock:
        _memo[key] = verdict
        _memo.move_to_end(key)
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)


def _identity(real: str, info: os.stat_result) -> tuple[Any, ...]:
    """The file, not its name: a download checked as ``.part`` and renamed is not re-read."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


# Bump when the check refuses more (or less): verdicts recorded by older checks then lapse.
CHECK_VERSION = 2


# -- the entry point ----------------------------------------------------------------------
def check_gguf(path: os.PathLike[str] | str, *, memo: bool = True) -> GGUFSummary:
    """Check the structure of the GGUF file at ``path`` and summarise it.

    Raises ``NotGGUFError`` if the file does not start with the GGUF magic (empty,
    an HTML or JSON page...), ``MalformedGGUFError`` if it does but llama.cpp would
    refuse, crash or abort on it, ``ModelFileError`` if it cannot be opened as a regular
    file. A verdict is remembered by file identity (size, mtime, inode, device) with a
    ``FileStamp``: checking an unchanged file again costs one ``stat``, and a file
    rewritten with its size and mtime kept (``cp -p``, a rewrite within one timestamp
    tick) is seen by its ctime or by the SHA-256 of its header.
    """
    return _check_gguf(path, memo)[0]


def stamped_check_gguf(
    path: os.PathLike[str] | str,
) -> tuple[GGUFSummary, tuple[int, int, int, int], FileStamp]:
    """``check_gguf``, with the identity and the stamp of the bytes it judged.

    For verdicts about the file kept elsewhere (the engine's stores on disk): they stay
    true exactly as long as the stamp holds.
    """
    return _check_gguf(path, True)


def _check_gguf(
    path: os.PathLike[str] | str, memo: bool
) -> tuple[GGUFSummary, tuple[int, int, int, int], FileStamp]:
    shown = str(path)
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {shown!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise ModelFileError(f"model file {shown!r} is not a valid path: {exc}") from exc
    key = _identity(real, info)
    if memo:
        with _memo_lock:
            entry = _memo.get(key)
        if entry is not None:
            stamp, verdict = entry
            if isinstance(verdict, GGUFSummary):
                renewed = stamp.renewed(Path(real), info)
                if renewed is not None:
                    if renewed is not stamp:
                        _remember(key, (renewed, verdict))
                    return verdict, key, renewed
            elif stamp == info.st_ctime_ns:
                problem, reason = verdict
                raise MalformedGGUFError(_message(shown, reason), path=shown, problem=problem)
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{shown!r} is not a regular file; a GGUF model must be one")

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise ModelFileError(f"cannot open model file {shown!r}: {exc.strerror or exc}") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise ModelFileError(f"{shown!r} is not a regular file; a GGUF model must be one")
        key = _identity(real, opened)
        taken_ns = time.time_ns()  # after the fstat: a later change moves the ctime
        head = os.pread(fd, len(GGUF_MAGIC), 0) if hasattr(os, "pread") else _read_head(fd)
        if head != GGUF_MAGIC:
            raise NotGGUFError(_not_gguf_message(shown, head))
        try:
            summary, header = _check_file(fd, opened.st_size)
        except _Problem as problem:
            reason = f"{problem.detail}. {problem.advice}."
            if memo:
                _remember(key, (opened.st_ctime_ns, (problem.problem, reason)))
            message = _message(shown, reason)
            raise MalformedGGUFError(message, path=shown, problem=problem.problem) from None
        digest = hashlib.sha256(header).hexdigest()
    finally:
        os.close(fd)
    stamp = FileStamp(opened.st_ctime_ns, taken_ns, summary.header_size, digest)
    if memo:
        _remember(key, (stamp, summary))
    return summary, key, stamp


def _message(shown: str, reason: str) -> str:
    return f"{shown!r} is not a usable GGUF model: {reason}"


def _read_head(fd: int) -> bytes:
    return _read(fd, len(GGUF_MAGIC))


def _read(fd: int, size: int) -> bytes:
    """The first ``size`` bytes (fewer if the file is shorter now)."""
    if hasattr(os, "pread"):
        chunks = []
        done = 0
        while done < size:
            chunk = os.pread(fd, min(size - done, 1 << 24), done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as handle:
        return handle.read(size)


class _NeedMore(Exception):
    """Internal: the header runs past the bytes read so far."""


_FIRST_READ = 8 << 20  # Gemma 3's header is 6.5 MB; bigger ones are read again, larger


def _check_file(fd: int, file_size: int) -> tuple[GGUFSummary, memoryview]:
    """Read as much of the file as its header needs (never the tensor data) and check it.

    Returns the summary and the header bytes it was drawn from."""
    limit = min(file_size, _FIRST_READ)
    while True:
        buf = _read(fd, limit)
        complete = len(buf) < limit or limit == file_size
        try:
            summary = _check(buf, file_size if len(buf) == limit else len(buf), complete)
            return summary, memoryview(buf)[: summary.header_size]
        except _NeedMore:
            limit = min(file_size, limit * 4)


def _not_gguf_message(shown: str, head: bytes) -> str:
    """The messages of ``gguf_file.require_gguf``: say what the file looks like instead."""
    if not head:
        found = "it is empty"
    elif head.lstrip().startswith((b"<", b"{")):
        found = "it looks like an HTML or JSON page, perhaps an error page saved as a model"
    else:
        found = f"it starts with {head!r} instead of {GGUF_MAGIC!r}"
    return (
        f"{shown!r} is not a GGUF model file: {found}. llama.cpp loads only .gguf files; "
        "download the GGUF version of the model or convert it with llama.cpp's "
        "convert_hf_to_gguf.py"
    )


# -- the structure ------------------------------------------------------------------------
class _Reader:
    """A cursor over the mapped file; every read is bounded by the file size."""

    __slots__ = ("buf", "complete", "end", "pos")

    def __init__(self, buf: bytes, complete: bool) -> None:
        self.buf = buf
        self.end = len(buf)
        self.complete = complete  # buf holds the whole file
        self.pos = 0

    def need(self, size: int, what: str) -> None:
        if size > self.end - self.pos:
            if not self.complete:
                raise _NeedMore
            raise _Problem(
                "truncated header",
                f"the file ends inside its header, while reading {what} at byte {self.pos} "
                f"({size} bytes needed, {self.end - self.pos} left)",
                _TRUNCATED,
            )

    def scalar(self, kind: int, what: str) -> Any:
        packer = _SCALARS[kind]
        self.need(packer.size, what)
        (value,) = packer.unpack_from(self.buf, self.pos)
        self.pos += packer.size
        return value

    def raw_string(self, what: str) -> bytes:
        self.need(8, what)
        (length,) = _U64.unpack_from(self.buf, self.pos)
        if length > GGUF_MAX_STRING_LENGTH:
            raise _Problem(
                "string too long",
                f"{what} at byte {self.pos} claims {length:,} bytes, more than llama.cpp's "
                f"limit of {GGUF_MAX_STRING_LENGTH:,}",
            )
        self.pos += 8
        self.need(length, what)
        start = self.pos
        self.pos += length
        return self.buf[start : self.pos]

    def text(self, what: str, *, name: bool = False) -> str:
        """A string as llama.cpp sees it: it reads C strings, so a value ends at its first
        zero byte; a name (key, tensor) holding one is refused."""
        start = self.pos
        raw = self.raw_string(what)
        if b"\0" in raw:
            if name:
                raise _Problem(
                    "zero byte in a name",
                    f"{what} at byte {start} holds a zero byte ({raw[:40]!r})",
                )
            raw = raw[: raw.index(0)]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Problem(
                "invalid UTF-8",
                f"{what} at byte {start} is not valid UTF-8 ({raw[:40]!r})",
            ) from None


def _check(buf: bytes, file_size: int, complete: bool) -> GGUFSummary:
    reader = _Reader(buf, complete)
    reader.need(_HEADER.size, "the header")
    _, version, n_tensors, n_kv = _HEADER.unpack_from(buf, 0)
    reader.pos = _HEADER.size
    _check_version(version)
    if n_tensors < 0 or n_tensors * 24 > file_size:
        raise _Problem(
            "bad tensor count",
            f"the header claims {n_tensors:,} tensors, impossible in a file of {file_size:,} bytes",
        )
    if n_kv < 0 or n_kv * 13 > file_size:
        raise _Problem(
            "bad key/value count",
            f"the header claims {n_kv:,} key/value pairs, impossible in a file of "
            f"{file_size:,} bytes",
        )
    values, arrays, kinds = _read_kv(reader, n_kv)
    alignment = _alignment(values, kinds)
    tensors = _read_tensor_infos(reader, n_tensors)
    header_size = reader.pos
    data_offset = _check_data(reader, tensors, alignment, file_size)
    architecture = values.get("general.architecture")
    if not isinstance(architecture, str):
        architecture = None
    block_count = _check_hparams(values, arrays, tensors, architecture, buf)
    n_vocab, tokenizer_model = _check_vocabulary(values, arrays, buf)
    return GGUFSummary(
        version=version,
        n_tensors=n_tensors,
        n_kv=n_kv,
        architecture=architecture,
        block_count=block_count,
        n_vocab=n_vocab,
        data_offset=data_offset,
        file_size=file_size,
        alignment=alignment,
        header_size=header_size,
        tokenizer_model=tokenizer_model,
        kv_bytes_per_token=_kv_bytes_per_token(values, arrays, architecture, block_count, buf),
    )


def _kv_bytes_per_token(
    values: dict[str, Any],
    arrays: dict[str, _ArrayInfo],
    arch: str | None,
    block_count: int | None,
    buf: bytes,
) -> int | None:
    """Bytes of KV cache one token of context takes with llama.cpp's default f16 cache.

    An upper bound (sliding-window layers take less), for refusing a context window the
    machine cannot hold before llama.cpp tries to allocate it. None where the file does
    not say enough.
    """
    if arch is None or not block_count:
        return None
    try:
        embedding = _integer(values, f"{arch}.embedding_length", "embedding length")
        heads = _integers(values, arrays, f"{arch}.attention.head_count", buf)
        kv_heads = _integers(values, arrays, f"{arch}.attention.head_count_kv", buf) or heads
        key_length = _integer(values, f"{arch}.attention.key_length", "key length")
        value_length = _integer(values, f"{arch}.attention.value_length", "value length")
    except _Problem:
        return None
    if not heads or not embedding or max(heads) <= 0:
        return None
    head_dim = embedding // max(heads)
    per_layer_heads = max(max(kv_heads), 0)
    k = key_length if key_length else head_dim
    vdim = value_length if value_length else head_dim
    return block_count * per_layer_heads * (k + vdim) * 2


def _check_version(version: int) -> None:
    if version in (2, 3):
        return
    if version != 0 and version & 0xFFFF == 0:
        detail = (
            f"its version field reads {version:#x}: the file was written for a big-endian "
            "machine, and llama.cpp here reads little-endian files"
        )
        raise _Problem(
            "big-endian file",
            detail,
            "Download the little-endian GGUF of the model, or convert it again without --bigendian",
        )
    if version == 1:
        raise _Problem(
            "GGUF version 1",
            "it is GGUF version 1, which llama.cpp no longer reads",
            "Download a current GGUF of the model or re-convert it with a current llama.cpp",
        )
    raise _Problem(
        "unknown GGUF version",
        f"its GGUF version is {version}; llama.cpp reads versions 2 and 3",
    )


def _read_kv(
    reader: _Reader, n_kv: int
) -> tuple[dict[str, Any], dict[str, _ArrayInfo], dict[str, int]]:
    """Every key/value pair: scalars as values (with their GGUF types), arrays as
    (element type, length, offset)."""
    values: dict[str, Any] = {}
    arrays: dict[str, _ArrayInfo] = {}
    kinds: dict[str, int] = {}
    for index in range(n_kv):
        key = reader.text(f"the name of key/value pair {index}", name=True)
        if not key:
            raise _Problem("empty key", f"key/value pair {index} has an empty name")
        if key in values or key in arrays:
            raise _Problem("duplicate key", f"the key {key!r} appears twice")
        kind = reader.scalar(_INT32, f"the type of {key!r}")
        kinds[key] = kind
        if kind == _ARRAY:
            element = reader.scalar(_INT32, f"the element type of {key!r}")
            length = reader.scalar(_UINT64, f"the length of {key!r}")
            if element not in _VALUE_TYPES or element == _ARRAY:
                why = "arrays of arrays" if element == _ARRAY else f"type {element}"
                raise _Problem(
                    "invalid value type",
                    f"the array {key!r} has elements of {why}, which GGUF does not allow",
                )
            offset = reader.pos
            strings, plain = _skip_array(reader, key, element, length)
            keep = strings if key == "tokenizer.ggml.tokens" else None
            arrays[key] = _ArrayInfo(element, length, offset, keep, plain)
        elif kind == _STRING:
            values[key] = reader.text(f"the value of {key!r}")
        elif kind == _BOOL:
            values[key] = reader.scalar(kind, f"the value of {key!r}") != 0
        elif kind in _SCALARS:
            values[key] = reader.scalar(kind, f"the value of {key!r}")
        else:
            raise _Problem(
                "invalid value type", f"the key {key!r} has value type {kind}, not a GGUF type"
            )
    return values, arrays, kinds


def _skip_array(
    reader: _Reader, key: str, element: int, length: int
) -> tuple[list[bytes] | None, bool]:
    """Move past an array; a string array's strings are returned, and whether they are
    plain (none empty, none holding a zero byte)."""
    if length > GGUF_MAX_ARRAY_ELEMENTS:
        raise _Problem(
            "array too long",
            f"the array {key!r} claims {length:,} elements, more than llama.cpp's limit of "
            f"{GGUF_MAX_ARRAY_ELEMENTS:,}",
        )
    if element == _STRING and length > MAX_STRING_ARRAY:
        raise _Problem(
            "array too long",
            f"the string array {key!r} claims {length:,} elements; no model has more than a "
            f"few hundred thousand tokens or merges, and this check stops at "
            f"{MAX_STRING_ARRAY:,} (each takes time and memory here and in llama.cpp)",
        )
    if element != _STRING:
        reader.need(_SCALARS[element].size * length, f"the elements of {key!r}")
        reader.pos += _SCALARS[element].size * length
        return None, True
    reader.need(8 * length, f"the strings of {key!r}")
    walked = _walk_short_strings(reader.buf, reader.pos, length, reader.end)
    if walked is None:
        walked = _walk_strings(reader, length, key)
    reader.pos, strings, plain = walked
    return strings, plain


def _walk_short_strings(
    buf: bytes, pos: int, count: int, end: int
) -> tuple[int, list[bytes], bool] | None:
    """The fast path for vocabularies: every string shorter than 256 bytes.

    Reads only the low byte of each 8-byte length (a 262,144-token vocabulary is walked
    in a few tens of milliseconds), then proves the other seven bytes of every length
    are zero by counting zero bytes: the region holds exactly 7 per length, plus those
    of the strings and of zero lengths, iff no high byte is set. ``None`` when a length
    does not fit (the exact walk then finds the problem).
    """
    start = pos
    strings: list[bytes] = []
    append = strings.append
    try:
        for _ in range(count):
            stop = pos + 8 + buf[pos]
            append(buf[pos + 8 : stop])
            pos = stop
    except IndexError:
        return None
    if pos > end:
        return None
    in_strings = b"".join(strings).count(0)
    empty = strings.count(b"")
    if buf.count(0, start, pos) != 7 * count + empty + in_strings:
        return None
    return pos, strings, in_strings == 0 and empty == 0


def _walk_strings(reader: _Reader, count: int, key: str) -> tuple[int, list[bytes], bool]:
    """The exact walk: every length checked against the end of the file."""
    buf, pos, end = reader.buf, reader.pos, reader.end
    unpack = _U64.unpack_from
    strings: list[bytes] = []
    append = strings.append
    for index in range(count):
        if pos > end - 8:
            if not reader.complete:
                raise _NeedMore
            _bad_string(key, index, pos, None, end)
        (length,) = unpack(buf, pos)
        if length > GGUF_MAX_STRING_LENGTH or pos + 8 + length > end:
            if not reader.complete and length <= GGUF_MAX_STRING_LENGTH:
                raise _NeedMore
            _bad_string(key, index, pos, length, end)
        pos += 8
        append(buf[pos : pos + length])
        pos += length
    return pos, strings, all(string and b"\0" not in string for string in strings)


def _bad_string(key: str, index: int, at: int, length: int | None, end: int) -> None:
    if length is None:
        detail = f"the file ends before string {index} of {key!r} (byte {at})"
    elif length > GGUF_MAX_STRING_LENGTH:
        detail = (
            f"string {index} of {key!r} at byte {at} claims {length:,} bytes, more than "
            f"llama.cpp's limit of {GGUF_MAX_STRING_LENGTH:,}"
        )
    else:
        detail = (
            f"string {index} of {key!r} at byte {at} claims {length:,} bytes, "
            f"past the end of the file ({end:,} bytes)"
        )
    raise _Problem("string past end of file", detail)


def _alignment(values: dict[str, Any], kinds: dict[str, int]) -> int:
    key = "general.alignment"
    if key not in kinds:
        return GGUF_DEFAULT_ALIGNMENT
    if kinds[key] != _UINT32:
        kind = _VALUE_TYPES.get(kinds[key], ("?",))[0]
        raise _Problem("bad alignment", f"{key!r} is of type {kind}; llama.cpp needs a u32")
    alignment: int = values[key]
    if alignment == 0 or alignment & (alignment - 1):
        raise _Problem("bad alignment", f"{key!r} is {alignment}, not a power of two")
    return alignment


def _read_tensor_infos(reader: _Reader, n_tensors: int) -> list[_Tensor]:
    tensors: list[_Tensor] = []
    seen: set[str] = set()
    for index in range(n_tensors):
        name = reader.text(f"the name of tensor {index}", name=True)
        if len(name.encode()) >= GGML_MAX_NAME:
            raise _Problem(
                "tensor name too long",
                f"tensor {index} is named {name[:80]!r}, {len(name.encode())} bytes; "
                f"llama.cpp allows at most {GGML_MAX_NAME - 1}",
            )
        if name in seen:
            raise _Problem("duplicate tensor", f"the tensor {name!r} appears twice")
        seen.add(name)
        n_dims = reader.scalar(_UINT32, f"the dimension count of {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise _Problem(
                "too many dimensions",
                f"the tensor {name!r} has {n_dims} dimensions; llama.cpp allows {GGML_MAX_DIMS}",
            )
        reader.need(8 * n_dims, f"the shape of {name!r}")
        dims = struct.unpack_from(f"<{n_dims}q", reader.buf, reader.pos)
        reader.pos += 8 * n_dims
        type_id = reader.scalar(_INT32, f"the type of {name!r}")
        offset = reader.scalar(_UINT64, f"the data offset of {name!r}")
        tensors.append(_Tensor(name, dims, type_id, offset, _tensor_nbytes(name, dims, type_id)))
    return tensors


def _tensor_nbytes(name: str, dims: tuple[int, ...], type_id: int) -> int:
    for dim in dims:
        if dim <= 0:
            raise _Problem(
                "bad tensor shape",
                f"the tensor {name!r} has shape {list(dims)}: every dimension must be positive",
            )
    elements = 1
    for dim in dims:
        elements *= dim
    if elements > INT64_MAX:
        raise _Problem(
            "bad tensor shape", f"the tensor {name!r} has shape {list(dims)}, too many elements"
        )
    if type_id not in GGML_TYPES:
        if type_id in _REMOVED_TYPES:
            detail = (
                f"the tensor {name!r} uses the ggml type {_REMOVED_TYPES[type_id]} "
                f"({type_id}), which llama.cpp no longer supports"
            )
            advice = "Download a current GGUF of the model (re-quantised with a recent llama.cpp)"
            raise _Problem("removed tensor type", detail, advice)
        raise _Problem("invalid tensor type", f"the tensor {name!r} has ggml type {type_id}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    row = dims[0] if dims else 1
    if row % block:
        raise _Problem(
            "bad tensor shape",
            f"the tensor {name!r} ({type_name}) has rows of {row} elements, not a multiple "
            f"of its block size {block}",
        )
    nbytes = elements // block * block_bytes
    if nbytes > SIZE_MAX:
        raise _Problem("bad tensor shape", f"the tensor {name!r} would need {nbytes:,} bytes")
    return nbytes


def _check_data(reader: _Reader, tensors: list[_Tensor], alignment: int, file_size: int) -> int:
    """Where the data section starts; every tensor's data must lie inside the file."""
    data_offset = reader.pos
    if tensors:
        data_offset += -data_offset % alignment
        if data_offset > file_size:
            raise _Problem(
                "truncated file",
                f"the tensor data should start at byte {data_offset:,} but the file has "
                f"{file_size:,} bytes",
                _TRUNCATED,
            )
    expected = 0
    for tensor in tensors:
        if tensor.offset != expected:
            raise _Problem(
                "bad tensor offset",
                f"the tensor {tensor.name!r} has data offset {tensor.offset:,}; llama.cpp "
                f"expects {expected:,} (tensors packed in order, aligned to {alignment})",
            )
        end = data_offset + tensor.offset + tensor.nbytes
        if end > file_size:
            raise _Problem(
                "truncated file",
                f"the data of tensor {tensor.name!r} ends at byte {end:,} but the file has "
                f"only {file_size:,} bytes",
                _TRUNCATED,
            )
        expected += tensor.nbytes + -tensor.nbytes % alignment
    return data_offset


# -- what llama.cpp asserts on while loading the hyperparameters --------------------------
def _integer(values: dict[str, Any], key: str, what: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise _Problem(f"bad {what}", f"{key!r} is {value!r}, not an integer")
    return value


def _integers(
    values: dict[str, Any], arrays: dict[str, _ArrayInfo], key: str, buf: bytes
) -> list[int]:
    """A key that may hold one integer or one per layer (llama.cpp's get_key_or_arr)."""
    if key in arrays:
        array = arrays[key]
        if array.element_type not in _INTEGER_TYPES or not array.length:
            return []
        fmt = _VALUE_TYPES[array.element_type][1][1]
        return list(struct.unpack_from(f"<{array.length}{fmt}", buf, array.offset))
    value = _integer(values, key, key.rsplit(".", 1)[-1].replace("_", " "))
    return [] if value is None else [value]


def _check_hparams(
    values: dict[str, Any],
    arrays: dict[str, _ArrayInfo],
    tensors: list[_Tensor],
    arch: str | None,
    buf: bytes,
) -> int | None:
    if arch is None:
        return None
    key = f"{arch}.block_count"
    if key in arrays:
        raise _Problem("bad block count", f"{key!r} is an array; llama.cpp needs one u32")
    block_count = _integer(values, key, "block count")
    if block_count is not None:
        split = _integer(values, "split.count", "split count") or 1
        _check_block_count(key, block_count, tensors, split=split > 1)
        layers = block_count
        nextn = _integer(values, f"{arch}.nextn_predict_layers", "nextn layer count")
        if nextn is not None and not 0 <= nextn <= layers:
            raise _Problem(
                "bad layer count",
                f"'{arch}.nextn_predict_layers' is {nextn}, more than the {layers} blocks",
            )
        for part in ("posnet", "convnext"):
            count = _integer(values, f"{arch}.{part}.block_count", f"{part} block count")
            if count is not None and not 0 <= count <= layers:
                raise _Problem(
                    "bad layer count",
                    f"'{arch}.{part}.block_count' is {count}, more than the {layers} blocks",
                )
    _check_experts(values, arrays, arch, buf)
    for name in ("layer_norm_rms_epsilon", "layer_norm_epsilon"):
        key = f"{arch}.attention.{name}"
        epsilon = values.get(key)
        # ggml_rms_norm / ggml_norm assert eps >= 0 when the first token is evaluated
        if isinstance(epsilon, (int, float)) and not epsilon >= 0:
            raise _Problem(
                "bad norm epsilon",
                f"{key!r} is {epsilon!r}; llama.cpp aborts the process on a negative or "
                "NaN epsilon",
            )
    scaling = values.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ("none", "linear", "yarn", "longrope"):
        raise _Problem(
            "unknown rope scaling",
            f"'{arch}.rope.scaling.type' is {scaling!r}; llama.cpp knows none, linear, yarn "
            "and longrope",
        )
    return block_count


def _check_block_count(
    key: str, block_count: int, tensors: list[_Tensor], *, split: bool = False
) -> None:
    """1 to 512 blocks (llama.cpp asserts), agreeing with the ``blk.N`` tensors present.

    One shard of a split model (``split.count`` > 1) holds only some blocks' tensors, so
    there only "no tensor of a block beyond the count" is required.
    """
    if not 1 <= block_count <= LLAMA_MAX_LAYERS:
        raise _Problem(
            "bad block count",
            f"{key!r} is {block_count}; llama.cpp accepts 1 to {LLAMA_MAX_LAYERS} blocks",
        )
    highest = -1
    for tensor in tensors:
        name = tensor.name
        if name.startswith("blk."):
            number = name[4 : name.find(".", 4)]
            if number.isdigit() and number.isascii():
                highest = max(highest, int(number))
    if highest >= block_count:
        raise _Problem(
            "bad block count",
            f"{key!r} is {block_count} but the file has tensors of block {highest} "
            f"(blk.{highest}.*), so it has at least {highest + 1} blocks",
        )
    if not split and highest >= 0 and block_count > highest + 1:
        raise _Problem(
            "bad block count",
            f"{key!r} is {block_count} but the file has tensors for blocks 0 to {highest} only",
        )


def _check_experts(
    values: dict[str, Any], arrays: dict[str, _ArrayInfo], arch: str, buf: bytes
) -> None:
    """The expert-count assertions of llama_model_base::load_hparams."""
    n_expert = _integer(values, f"{arch}.expert_count", "expert count") or 0
    if arch in ("hunyuan-dense", "hunyuan_vl") and n_expert <= 1:
        return  # llama.cpp resets both counts to 0 for these
    used = max(_integers(values, arrays, f"{arch}.expert_used_count", buf), default=0)
    groups = _integer(values, f"{arch}.expert_group_count", "expert group count") or 0
    group_used = _integer(values, f"{arch}.expert_group_used_count", "expert groups used") or 0
    counts = (
        f"expert_count {n_expert}, expert_used_count {used}, expert_group_count {groups}, "
        f"expert_group_used_count {group_used}"
    )
    if n_expert > 0:
        ok = n_expert <= LLAMA_MAX_EXPERTS and 0 < used <= n_expert and 0 <= groups < n_expert
        if ok and groups > 1:
            ok = n_expert % groups == 0 and 0 < group_used < groups
    else:
        ok = n_expert == 0 and used == 0 and groups == 0
    if not ok:
        raise _Problem(
            "bad expert counts", f"the mixture-of-experts settings do not fit together ({counts})"
        )


# -- the vocabulary -------------------------------------------------------------------------
# tokenizer.ggml.model -> (default bos, eos, sep ids; default add_bos, add_eos, add_sep),
# from llama_vocab::impl::load.
_TOKENIZER_DEFAULTS: dict[str, tuple[int | None, int | None, int | None, bool, bool, bool]] = {
    "llama": (1, 2, None, True, False, False),
    "bert": (101, None, 102, True, False, True),
    "gpt2": (11, 11, None, False, False, False),
    "hybriddna": (11, 11, None, False, False, False),
    "whitespace": (11, 11, None, False, False, False),
    "t5": (None, 1, None, False, True, False),
    "rwkv": (None, None, None, False, False, False),
    "test": (None, None, None, False, False, False),
    "plamo2": (1, 2, None, False, False, False),
    "gemma4": (None, None, None, True, False, False),
}
_ADD_BOS_PRE = frozenset(
    {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"}
    | {"lfm2", "jina-v5-nano", "tekken", "chameleon", "gemma4"}
)
_ADD_SEP_PRE = frozenset({"jina-v1-en", "jina-v2-code", "roberta-bpe"})
_NO_BOS_PRE = frozenset({"chatglm-bpe", "glm4", "glm5"})
_BPE_MODELS = frozenset({"gpt2", "hybriddna", "whitespace"})
_SPECIAL_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask")


def _check_vocabulary(
    values: dict[str, Any], arrays: dict[str, _ArrayInfo], buf: bytes
) -> tuple[int | None, str | None]:
    model = values.get("tokenizer.ggml.model")
    model = model if isinstance(model, str) else None
    key = "tokenizer.ggml.tokens"
    if key in values:
        raise _Problem("bad vocabulary", f"{key!r} is a single value, not an array of strings")
    if key not in arrays:
        return None, model
    tokens_info = arrays[key]
    if tokens_info.element_type != _STRING:
        raise _Problem("bad vocabulary", f"{key!r} is not an array of strings")
    n_vocab = tokens_info.length
    if n_vocab >= 1 << 31:
        raise _Problem("bad vocabulary", f"{key!r} has {n_vocab:,} tokens, too many")
    special_ids = _vocabulary_arrays(values, arrays, n_vocab, buf)
    if model in ("none", "no_vocab"):
        return n_vocab, model  # llama.cpp does not read the vocabulary then
    tokens = tokens_info.strings
    assert tokens is not None
    texts = _check_unique(tokens, tokens_info.plain)
    if model == "llama":
        _check_byte_fallback(texts)
    _check_special_tokens(values, tokens, special_ids, model)
    return n_vocab, model


def _vocabulary_arrays(
    values: dict[str, Any], arrays: dict[str, _ArrayInfo], n_vocab: int, buf: bytes
) -> list[int]:
    """Scores and token types: right element types, one per token.

    Returns the ids of the control, user-defined and unknown tokens.
    """
    for name, allowed in (("scores", (_FLOAT32, _INT32)), ("token_type", (_INT32,))):
        key = f"tokenizer.ggml.{name}"
        if key in values:
            raise _Problem("bad vocabulary", f"{key!r} is a single value, not an array")
        if key not in arrays:
            continue
        array = arrays[key]
        if array.element_type not in allowed:
            kinds = " or ".join(_VALUE_TYPES[kind][0] for kind in allowed)
            raise _Problem("bad vocabulary", f"{key!r} is not an array of {kinds}")
        if array.length != n_vocab:
            raise _Problem(
                "bad vocabulary",
                f"{key!r} has {array.length:,} entries for {n_vocab:,} tokens; the "
                "vocabulary arrays must have one entry per token",
            )
    if "tokenizer.ggml.token_type" not in arrays or not n_vocab:
        return []
    offset = arrays["tokenizer.ggml.token_type"].offset
    raw = buf[offset : offset + 4 * n_vocab]
    low = raw[0::4]
    if raw.count(0) == 3 * n_vocab + low.count(0):  # every type fits in its low byte
        return [found.start() for found in _MARK.finditer(low.translate(_SPECIAL_MARKS))]
    types = struct.unpack_from(f"<{n_vocab}i", raw)
    return [index for index, kind in enumerate(types) if kind in _SPECIAL_TOKEN_TYPES]


def _check_unique(tokens: list[bytes], plain: bool) -> set[bytes] | dict[bytes, int]:
    """llama.cpp asserts that no two tokens have the same text.

    It reads each token as a C string (so a token ends at its first zero byte) and renames
    an empty one ``[EMPTY_<id>]``; two tokens that are equal that way abort the process.
    Returns the token texts as llama.cpp sees them (for membership tests).
    """
    if plain:
        texts = set(tokens)
        if len(texts) == len(tokens):
            return texts
    else:
        read = [token.partition(b"\0")[0] or b"[EMPTY_%d]" % i for i, token in enumerate(tokens)]
        texts = set(read)
        if len(texts) == len(read):
            return texts
    seen: dict[bytes, int] = {}  # there is a duplicate: find the first one
    for index, token in enumerate(tokens):
        text = token.split(b"\0", 1)[0] or f"[EMPTY_{index}]".encode()
        first = seen.setdefault(text, index)
        if first != index:
            cut = ", read up to its first zero byte" if b"\0" in token else ""
            raise _Problem(
                "duplicate token",
                f"the vocabulary has the token {text[:60]!r} twice (ids {first} and {index}"
                f"{cut}); llama.cpp aborts the process on such a file",
            )
    return seen


# The byte-fallback tokens of a SentencePiece vocabulary, as llama.cpp names them.
_BYTE_TOKENS = tuple((f"<0x{value:02X}>".encode(), bytes([value])) for value in range(256))


def _check_byte_fallback(texts: set[bytes] | dict[bytes, int]) -> None:
    """A SentencePiece (``llama``) vocabulary must have a token for every byte.

    Text the vocabulary has no token for is split into bytes, and llama.cpp looks each one
    up as ``<0xXX>``, else as the one-byte string, with ``unordered_map::at``: a byte with
    neither throws through the C API and aborts the process on the first prompt holding
    it (the structure and the checked load both look fine until then).
    """
    for value, (named, raw) in enumerate(_BYTE_TOKENS):
        if named not in texts and (not value or raw not in texts):
            raise _Problem(
                "missing byte token",
                f"the SentencePiece vocabulary has no token for the byte {value:#04x} "
                f"({named.decode()}); llama.cpp aborts the process on the first prompt "
                "with a character it must spell out byte by byte",
                "Use another GGUF of the model (one converted with SentencePiece byte "
                "fallback, as llama.cpp's convert_hf_to_gguf.py writes them)",
            )


def _check_special_tokens(
    values: dict[str, Any], tokens: list[bytes], special_ids: list[int], model: str | None
) -> None:
    """The ids llama.cpp and llama-cpp-python really use must name tokens with UTF-8 text.

    An out-of-range id is only a warning in llama.cpp (it falls back to the tokenizer's
    default), and real files have such padding ids, so it is refused only where the
    fallback leaves no token while the tokenizer must add one (that aborts on the first
    prompt).
    """
    n_vocab = len(tokens)
    bos, eos, sep, add_bos, add_eos, add_sep = _TOKENIZER_DEFAULTS.get(
        model or "", (None, None, None, False, False, False)
    )
    pre = values.get("tokenizer.ggml.pre")
    if model in _BPE_MODELS:
        add_bos = add_bos or pre in _ADD_BOS_PRE
        add_sep = add_sep or pre in _ADD_SEP_PRE
        bos = None if pre in _NO_BOS_PRE else bos
    defaults = {"bos": bos, "eos": eos, "seperator": sep}
    effective: dict[str, int | None] = {}
    for name in _SPECIAL_ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        default = defaults.get(name)
        if default is not None and default >= n_vocab:
            default = None
        declared = values.get(key)
        if type(declared) is int and 0 <= declared < n_vocab:
            effective[name] = declared
        else:
            effective[name] = default
    add_bos = _flag(values, "tokenizer.ggml.add_bos_token", add_bos)
    add_bos = add_bos or model == "gemma4" or (model in _BPE_MODELS and pre == "gemma4")
    for name, add in (
        ("bos", add_bos),
        ("eos", _flag(values, "tokenizer.ggml.add_eos_token", add_eos)),
        ("seperator", _flag(values, "tokenizer.ggml.add_sep_token", add_sep)),
    ):
        if add:
            _require_token(values, effective, name, n_vocab)

    # llama-cpp-python decodes the BOS and EOS texts strictly when it loads the model,
    # the engine the texts of control, user-defined and unknown tokens.
    strict = [i for i in (effective["bos"], effective["eos"], effective["eot"]) if i is not None]
    for index in strict + special_ids:
        try:
            tokens[index].decode("utf-8")
        except UnicodeDecodeError:
            raise _Problem(
                "invalid UTF-8 token",
                f"the special token {index} ({tokens[index][:40]!r}) is not valid UTF-8",
            ) from None


def _flag(values: dict[str, Any], key: str, default: bool) -> bool:
    value = values.get(key)
    return bool(value) if type(value) is int or isinstance(value, bool) else default


def _require_token(
    values: dict[str, Any], effective: dict[str, int | None], name: str, n_vocab: int
) -> None:
    if effective[name] is not None:
        return
    key = f"tokenizer.ggml.{name}_token_id"
    declared = values.get(key)
    said = f"{key!r} is {declared!r}" if declared is not None else f"{key!r} is missing"
    raise _Problem(
        "missing special token",
        f"the tokenizer adds a {name.upper()} token to every prompt but {said} and the "
        f"default does not fit the {n_vocab:,}-token vocabulary; llama.cpp aborts on the "
        "first prompt",
    )
