"""The checked load: try a model file in a child process before this process loads it.

llama.cpp aborts the whole process (SIGABRT, no exception) on some malformed files that
no reader can see up front. Loading the file once in a child process, and decoding one
token there, turns such a crash into an ``UnsafeModelError`` here. The verdict is kept
per file identity (device, inode, size, modification time: unchanged by the rename that
installs a download, changed by any rewrite), in memory and in the serapeum cache, so a
file is probed once per machine and llama-cpp-python version.

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

from serapeum.core.model_files import file_identity, require_regular_file
from serapeum.llama_cpp.errors import ModelLoadError, UnsafeModelError
from serapeum.llama_cpp.verdicts import VerdictStore

__all__ = ["PROBE_TIMEOUT_ENV", "Verdict", "checked_load", "forget_verdicts"]

logger = logging.getLogger("serapeum.llama_cpp")
PROBE_TIMEOUT_ENV = "SERAPEUM_CHECKED_LOAD_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 120.0
_PROBE_VERSION = 1  # bump when what the probe does changes: old verdicts no longer count


@frozen
class Verdict:
    """What the child said: ``ok``, else ``crashed`` (killed by a signal) or a load error."""

    ok: bool
    crashed: bool = False
    detail: str = ""


_verdicts: dict[tuple[int, int, int, int], Verdict] = {}
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


def _read_verdict(identity: tuple[int, int, int, int]) -> Verdict | None:
    data = _STORE.get(identity)
    try:
        return (
            None
            if data is None
            else Verdict(
                ok=bool(data["ok"]), crashed=bool(data["crashed"]), detail=str(data["detail"])
            )
        )
    except KeyError:
        return None


def _write_verdict(identity: tuple[int, int, int, int], verdict: Verdict) -> None:
    _STORE.put(identity, {"ok": verdict.ok, "crashed": verdict.crashed, "detail": verdict.detail})


def _timeout() -> float:
    try:
        return float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS))
    except ValueError:
        return DEFAULT_TIMEOUT_SECONDS


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _probe(path: Path, timeout: float) -> Verdict:
    command = [sys.executable, "-m", "serapeum.llama_cpp.checked_load", str(path)]
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


def checked_load(path: Path) -> None:
    """Refuse ``path`` if loading it crashes, hangs or fails in a child process.

    Raises ``UnsafeModelError`` for a crash or a hang, ``ModelLoadError`` when llama.cpp
    refuses the file cleanly; returns at once for a file already known to be good.
    """
    identity = file_identity(require_regular_file(path))
    with _lock:
        verdict = _verdicts.get(identity)
    if verdict is None:
        verdict = _read_verdict(identity)
        if verdict is None:
            verdict = _probe(path, _timeout())
            _write_verdict(identity, verdict)
        with _lock:
            _verdicts[identity] = verdict
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


def _child(path: str) -> int:
    """Load the file, evaluate one token, report as one JSON line on stdout."""
    from serapeum.llama_cpp import native_log
    from serapeum.llama_cpp.llama_loader import new_llama

    native_log.install()
    report: dict[str, Any]
    try:
        llama = new_llama(
            Path(path),
            {"n_ctx": 64, "n_batch": 64, "n_ubatch": 64, "n_threads": 1, "verbose": False},
        )
        bos = llama.token_bos()
        llama.eval([bos if bos >= 0 else 0])
        report = {"ok": True}
    except Exception as exc:  # a clean refusal by llama.cpp: say what it was
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
