"""The checked load: try a model file in a child process before this process loads it.

llama.cpp aborts the whole process (SIGABRT, no exception) on some malformed files that
no reader can see up front. Loading the file once in a child process, and decoding one
token there, turns such a crash into an ``UnsafeModelError`` here. The child also
tokenizes every byte value and some Unicode and detokenizes the result, as every prompt
will: a vocabulary that aborts on some characters fails there, not in the caller. The
verdict is kept per file identity (device, inode, size, modification time) with the
stamp of the header bytes it was taken on (``verdicts.py``), in memory and in the
serapeum cache, so a file is probed once per machine and llama-cpp-python version, and
again whenever its header changes, even with its size and mtime kept.

Run as ``python -m serapeum.llama_cpp.checked_load PATH``, this module is the child.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from attrs import frozen

from serapeum.core.errors import NotGGUFError
from serapeum.core.gguf import stamped_check_gguf
from serapeum.core.model_files import (
    FileStamp,
    file_identity,
    require_regular_file,
    take_stamp,
)
from serapeum.llama_cpp.errors import ModelLoadError, UnsafeModelError
from serapeum.llama_cpp.verdicts import VerdictStore

__all__ = ["PROBE_TIMEOUT_ENV", "Verdict", "checked_load", "forget_verdicts"]

logger = logging.getLogger("serapeum.llama_cpp")
PROBE_TIMEOUT_ENV = "SERAPEUM_CHECKED_LOAD_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 120.0
_PROBE_VERSION = 2  # bump when what the probe does changes: old verdicts no longer count


@frozen
class Verdict:
    """What the child said: ``ok``, else ``crashed`` (killed by a signal) or a load error."""

    ok: bool
    crashed: bool = False
    detail: str = ""


_verdicts: dict[tuple[int, int, int, int], tuple[FileStamp, Verdict]] = {}
_lock = threading.Lock()


def forget_verdicts() -> None:
    """Drop the in-memory verdicts (tests; the on-disk ones are keyed by identity anyway)."""
    with _lock:
        _verdicts.clear()


def _llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


_STORE = VerdictStore(
    "checked-loads", f"probe {_PROBE_VERSION}, llama-cpp-python {_llama_cpp_version()}"
)


def _read_verdict(path: Path, info: os.stat_result) -> tuple[FileStamp, Verdict] | None:
    found = _STORE.get(path, info)
    if found is None:
        return None
    stamp, data = found
    ok, crashed, detail = data.get("ok"), data.get("crashed"), data.get("detail")
    if not isinstance(ok, bool) or not isinstance(crashed, bool) or not isinstance(detail, str):
        return None  # not what _write_verdict writes: judge the file again
    return stamp, Verdict(ok=ok, crashed=crashed, detail=detail[:1000])


def _write_verdict(identity: tuple[int, int, int, int], stamp: FileStamp, verdict: Verdict) -> None:
    record = {"ok": verdict.ok, "crashed": verdict.crashed, "detail": verdict.detail}
    _STORE.put(identity, stamp, record)


def _timeout() -> float:
    try:
        return float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS))
    except ValueError:
        return DEFAULT_TIMEOUT_SECONDS


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _probe(path: Path, timeout: float) -> Verdict:
    # -P: the working directory (perhaps where untrusted files are) is not on sys.path.
    command = [sys.executable, "-P", "-m", "serapeum.llama_cpp.checked_load", str(path)]
    # ggml attaches gdb to print a backtrace when it aborts, if gdb is installed: seconds
    # per crash, for a report nobody reads here.
    environment = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    try:
        child = subprocess.run(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UnsafeModelError(
            f"loading {str(path)!r} in a child process did not finish within {timeout:.0f} s "
            f"(the checked load), so it is refused. If the file is just very large for this "
            f"machine, raise {PROBE_TIMEOUT_ENV} or pass checked_load=False"
        ) from exc
    stdout = child.stdout.decode("utf-8", "replace")
    stderr = child.stderr.decode("utf-8", "replace")
    if child.returncode < 0 or child.returncode >= 128:
        number = -child.returncode if child.returncode < 0 else child.returncode - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return Verdict(ok=False, crashed=True, detail=f"{name}; {_last_line(stderr)}".rstrip("; "))
    try:
        report = json.loads(_last_line(stdout))
        return Verdict(ok=bool(report["ok"]), detail=str(report.get("error", "")))
    except (ValueError, KeyError, TypeError):
        return Verdict(
            ok=False,
            detail=f"the child process exited with status {child.returncode}: "
            f"{_last_line(stderr) or _last_line(stdout)}",
        )


# Bytes stamped for a file the structure check refuses (its header size is unknown); in
# the engine such a file never reaches the checked load.
_FALLBACK_STAMP_BYTES = 1 << 20


def _stamp(path: Path) -> tuple[tuple[int, int, int, int], FileStamp]:
    """The identity and the stamp of the bytes a verdict on ``path`` depends on: the
    header, metadata and tensor table (what llama.cpp reads before the tensor data)."""
    try:
        _, identity, stamp = stamped_check_gguf(path)
    except NotGGUFError:
        info, stamp = take_stamp(path, _FALLBACK_STAMP_BYTES)
        return file_identity(info), stamp
    return identity, stamp


def _known_verdict(path: Path, info: os.stat_result) -> Verdict | None:
    """The verdict on this file's current bytes, from memory or from the disk store."""
    identity = file_identity(info)
    with _lock:
        known = _verdicts.get(identity)
    if known is not None:
        stamp, verdict = known
        renewed = stamp.renewed(path, info)
        if renewed is not None:
            if renewed is not stamp:
                with _lock:
                    _verdicts[identity] = (renewed, verdict)
            return verdict
    found = _read_verdict(path, info)
    if found is None:
        return None
    with _lock:
        _verdicts[identity] = found
    return found[1]


def checked_load(path: Path) -> None:
    """Refuse ``path`` if loading it crashes, hangs or fails in a child process.

    Raises ``UnsafeModelError`` for a crash or a hang, ``ModelLoadError`` when llama.cpp
    refuses the file cleanly; returns at once for a file already known to be good.
    """
    info = require_regular_file(path)
    identity = file_identity(info)
    verdict = _known_verdict(path, info)
    if verdict is None:
        # The stamp of the bytes judged, taken before the probe: a file that changes
        # while the child loads it does not inherit the verdict.
        identity, stamp = _stamp(path)
        verdict = _probe(path, _timeout())
        _write_verdict(identity, stamp, verdict)
        with _lock:
            _verdicts[identity] = (stamp, verdict)
    if verdict.ok:
        return
    if verdict.crashed:
        raise UnsafeModelError(
            f"llama.cpp crashed ({verdict.detail}) loading {str(path)!r} in a child process "
            "(the checked load), so this process does not load it. The file is damaged or "
            "malformed in a way its structure does not show: download or convert it again"
        )
    raise ModelLoadError(
        f"llama.cpp could not load {str(path)!r}: {verdict.detail}. The file may be damaged, "
        "or use an architecture or quantisation this llama-cpp-python version does not support"
    )


# Text the child tokenizes: every byte value (so a vocabulary missing a byte-fallback
# token shows), and characters from several scripts, with and without special tokens.
_PROBE_TEXT = bytes(range(256)) + " Hello, world! é ß Ω Ж 漢字 한국어 עברית 🙂\n\t".encode()


def _child(path: str) -> int:
    """Load the file, tokenize and detokenize the probe text, evaluate a few tokens;
    report as one JSON line on stdout."""
    from serapeum.llama_cpp.backend import native_log
    from serapeum.llama_cpp.backend.llama_loader import new_llama

    native_log.install()
    report: dict[str, Any]
    try:
        llama = new_llama(
            Path(path),
            {"n_ctx": 64, "n_batch": 64, "n_ubatch": 64, "n_threads": 1, "verbose": False},
        )
        for special in (False, True):
            tokens = llama.tokenize(_PROBE_TEXT, add_bos=True, special=special)
            llama.detokenize(tokens)
        bos = llama.token_bos()
        llama.eval([bos if bos >= 0 else 0, *tokens[1:8]])
        report = {"ok": True}
    except Exception as exc:  # a clean refusal by llama.cpp: say what it was
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
