"""The GGUF structure check: its cost against llama.cpp's load, and a mutation fuzz.

    .venv/bin/python bench/bench_gguf_check.py            # Gemma 3 270M and the tiny model
    .venv/bin/python bench/bench_gguf_check.py --smoke    # seconds: the tiny model only
    .venv/bin/python bench/bench_gguf_check.py --fuzz     # every header byte set to 0xFF
                                                          # and 0x00 (about 3 minutes)

Speed: each run is a fresh child process that checks the file (the first check in a
process), loads it with ``llama_cpp.Llama(model_path, verbose=False)``, and checks it again
(a memo hit); medians over the runs, and the median of the per-run ratios check / load.
Also timed here: a warm check (``memo=False``) and the ``gguf`` package's ``GGUFReader``
(the alternative the issue suggested: about 11 s on Gemma 3's 262,144-token vocabulary).

Measured on the 2-core development machine: Gemma 3 270M, first check ~110 ms (warm
~85 ms) against ~490 ms for ``Llama()``: about 23 %, not the 5 % hoped for. The file is
small and its vocabulary large, so llama.cpp's own load is mostly vocabulary work (a
``vocab_only`` load alone takes ~0.5 s); the check must at least hash every token to
find duplicates (the walk ~35 ms, the set ~15 ms in pure Python). Bigger models with the
same vocabulary load for seconds while the check stays the same. The memo makes every
later check of the file in the process a ``stat`` (~0.1 ms), and the engine's
``require_gguf`` keeps the verdict on disk per file identity, so in every later process
the check is a ``stat`` and a small read ("engine check, file seen before").

Fuzz: each byte of the tiny model's header, key/value and tensor-info region is set to
0xFF and to 0x00 in turn; ``check_gguf`` judges every mutated file in-process, and a
child process (two at most) loads it with llama.cpp and tokenizes a prompt. A child that
dies of a signal (SIGABRT from a failed assertion, SIGSEGV, SIGFPE) is a crash; the run
fails if any crashing mutation passed the check. ``--fuzz-step N`` tries every Nth byte.
"""

from __future__ import annotations

import argparse
import os
import queue
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from serapeum.core.errors import NotGGUFError
from serapeum.core.gguf import check_gguf

# A child that loads model files named on stdin, one per line, and answers each with one
# line: "O" (loaded and tokenized) or "E <error>". If it dies instead, the parent knows
# which file killed it: the last one it sent.
LOAD_WORKER = r"""
import sys
import llama_cpp
for line in sys.stdin:
    path = line.rstrip("\n")
    try:
        llm = llama_cpp.Llama(model_path=path, verbose=False, n_ctx=256, n_threads=1)
        try:
            llm.tokenize(b"hello world", add_bos=True, special=True)
        finally:
            llm.close()
    except BaseException as exc:
        print("E", type(exc).__name__, flush=True)
    else:
        print("O", flush=True)
"""

# ggml's abort handler attaches gdb for a backtrace when gdb is installed: seconds per crash.
CHILD_ENV = {**os.environ, "GGML_NO_BACKTRACE": "1"}

CRASH = "crash"
HANG = "hang"
LOADED = "loaded"
FAILED = "failed"  # a Python exception: llama.cpp refused the file without dying


class LoadProbe:
    """One long-lived child that loads files with llama.cpp; restarted when a file kills it."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.pending = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LOAD_WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
                env=CHILD_ENV,
            )
            self.pending = b""
        return self.process

    def load(self, path: str | os.PathLike[str]) -> tuple[str, str]:
        """(verdict, detail): LOADED, FAILED (exception name), CRASH (signal) or HANG."""
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(os.fsencode(path) + b"\n")
        except BrokenPipeError:
            return self._died(process)
        deadline = time.monotonic() + self.timeout
        fd = process.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                process.kill()
                process.wait()
                return HANG, f"no answer in {self.timeout:.0f} s"
            chunk = os.read(fd, 4096)
            if not chunk:
                return self._died(process)
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        kind, _, rest = line.decode().strip().partition(" ")
        return (LOADED, "") if kind == "O" else (FAILED, rest)

    @staticmethod
    def _died(process: subprocess.Popen[bytes]) -> tuple[str, str]:
        code = process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return CRASH, name
        return CRASH, f"exit status {code}"  # e.g. 134 when a shell reports the abort

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def check_verdict(path: str | os.PathLike[str]) -> str:
    """'ok', or the ``problem`` of the error the check raised ('not GGUF' for the magic)."""
    try:
        check_gguf(path, memo=False)
    except NotGGUFError as error:
        return getattr(error, "problem", "not GGUF")
    return "ok"


def header_end(path: Path) -> int:
    """End of the header, key/value and tensor-info region (the fuzz's target)."""
    return check_gguf(path, memo=False).header_size


def mutations(model: bytes, offsets: Iterable[int], values: Iterable[int] = (0xFF, 0x00)):
    """(offset, value) pairs that change the file."""
    values = tuple(values)
    for offset in offsets:
        for value in values:
            if model[offset] != value:
                yield offset, value


def fuzz(
    model_path: Path,
    pairs: Iterable[tuple[int, int]],
    *,
    workers: int = 2,
    load_all: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int, str, str, str]]:
    """(offset, value, check verdict, load verdict, detail) for every mutation.

    With ``load_all=False`` only the mutations the check accepts are loaded (enough to
    show that no accepted file crashes llama.cpp); the others get load verdict "-".
    """
    base = model_path.read_bytes()
    jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
    count = 0
    for pair in pairs:
        jobs.put(pair)
        count += 1
    results: list[tuple[int, int, str, str, str]] = []
    lock = threading.Lock()
    scratch = Path(tempfile.mkdtemp(prefix="gguf-fuzz-"))

    def work(index: int) -> None:
        path = scratch / f"mutant-{index}.gguf"
        path.write_bytes(base)
        probe = LoadProbe()
        try:
            with open(path, "r+b") as handle:
                while True:
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        return
                    assert job is not None
                    offset, value = job
                    handle.seek(offset)
                    handle.write(bytes([value]))
                    handle.flush()
                    verdict = check_verdict(path)
                    if load_all or verdict == "ok":
                        loaded, detail = probe.load(path)
                    else:
                        loaded, detail = "-", ""
                    handle.seek(offset)
                    handle.write(base[offset : offset + 1])
                    handle.flush()
                    with lock:
                        results.append((offset, value, verdict, loaded, detail))
                        if progress is not None:
                            progress(len(results))
        finally:
            probe.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shutil.rmtree(scratch, ignore_errors=True)
    results.sort()
    assert len(results) == count
    return results


def fuzz_report(results: list[tuple[int, int, str, str, str]]) -> tuple[str, int]:
    """A summary and the number of crashing mutations the check let through."""
    crashes = [r for r in results if r[3] in (CRASH, HANG)]
    refused = [r for r in results if r[2] != "ok"]
    missed = [r for r in crashes if r[2] == "ok"]
    lines = [
        f"mutations tried: {len(results)}",
        f"crash or hang in llama.cpp: {len(crashes)} "
        f"({dict(Counter(r[4] or r[3] for r in crashes))})",
        f"refused by check_gguf: {len(refused)}",
        f"crashing mutations refused by the check: {len(crashes) - len(missed)} / {len(crashes)}",
        f"loaded fine although the check refused: "
        f"{sum(1 for r in results if r[2] != 'ok' and r[3] == LOADED)}",
        f"refusal reasons: {dict(Counter(r[2] for r in refused).most_common(12))}",
    ]
    for offset, value, _, loaded, detail in missed[:20]:
        lines.append(f"  MISSED: byte {offset} = {value:#04x}: {loaded} {detail}")
    return "\n".join(lines), len(missed)


# -- speed ----------------------------------------------------------------------------------
def _median(run: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# One fresh child per run, as an application starts: check the file, then load it.
CHECK_THEN_LOAD = """
import sys, time
import llama_cpp
from serapeum.core.gguf import check_gguf
from serapeum.llama_cpp.gguf_file import require_gguf
start = time.perf_counter()
require_gguf(sys.argv[1])  # the engine's check: a verdict recorded by an earlier process
known = time.perf_counter() - start
start = time.perf_counter()
check_gguf(sys.argv[1])
checked = time.perf_counter()
llm = llama_cpp.Llama(model_path=sys.argv[1], verbose=False)
loaded = time.perf_counter()
check_gguf(sys.argv[1])
print(checked - start, loaded - checked, time.perf_counter() - loaded, known)
"""


def _check_and_load(path: Path, repeats: int) -> list[tuple[float, float, float, float]]:
    """(first check, load, memo hit, engine check of a known file) seconds in a fresh child."""
    from serapeum.llama_cpp.gguf_file import require_gguf

    require_gguf(path)  # records the verdict the children find
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHECK_THEN_LOAD, str(path)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            env=CHILD_ENV,
        )
        first, load, memo, known = map(float, out.stdout.strip().splitlines()[-1].split())
        samples.append((first, load, memo, known))
    return samples


def _gguf_reader_seconds(path: Path) -> float | str:
    try:
        import gguf
    except ImportError:
        return "gguf package not installed"
    return _median(lambda: gguf.GGUFReader(path), 1)


def bench_speed(path: Path, label: str, repeats: int) -> dict[str, Any]:
    check_gguf(path, memo=False)  # page cache
    warm = _median(lambda: check_gguf(path, memo=False), repeats)
    runs = _check_and_load(path, repeats)
    summary = check_gguf(path)
    return {
        "label": label,
        "size_mb": path.stat().st_size / 1e6,
        "n_vocab": summary.n_vocab,
        "first_ms": statistics.median(r[0] for r in runs) * 1e3,
        "warm_ms": warm * 1e3,
        "memo_us": statistics.median(r[2] for r in runs) * 1e6,
        "gguf_reader_ms": _gguf_reader_seconds(path),
        "load_ms": statistics.median(r[1] for r in runs) * 1e3,
        "ratio": statistics.median(r[0] / r[1] for r in runs),
        "known_us": statistics.median(r[3] for r in runs) * 1e6,
        "known_ratio": statistics.median(r[3] / r[1] for r in runs),
    }


def _models(smoke: bool) -> Iterator[tuple[Path, str]]:
    from serapeum.llama_cpp.testing import build_tiny_gguf

    if not smoke:
        from serapeum.llama_cpp.demo import demo_model_path

        yield demo_model_path(), "Gemma 3 270M Q4_K_M"
    yield build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf"), "tiny Llama"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, one repeat")
    parser.add_argument("--fuzz", action="store_true", help="run the mutation fuzz")
    parser.add_argument("--fuzz-step", type=int, default=1, help="try every Nth byte")
    parser.add_argument("--workers", type=int, default=2, help="loader children (max 2)")
    parser.add_argument("--fuzz-out", type=Path, help="write every mutation's verdicts (TSV)")
    args = parser.parse_args()

    if args.fuzz:
        from serapeum.llama_cpp.testing import build_tiny_gguf

        model = build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf")
        data = model.read_bytes()
        end = header_end(model)
        pairs = list(mutations(data, range(0, end, max(1, args.fuzz_step))))
        print(f"fuzzing {len(pairs)} mutations of bytes 0..{end} of the tiny model", flush=True)
        started = time.monotonic()

        def progress(done: int) -> None:
            if done % 1000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done}/{len(pairs)} ({rate:.1f}/s)", flush=True)

        results = fuzz(model, pairs, workers=min(2, args.workers), progress=progress)
        report, missed = fuzz_report(results)
        print(report)
        if args.fuzz_out:
            rows = ["offset\tvalue\tcheck\tload\tdetail"]
            rows += ["\t".join(map(str, row)) for row in results]
            args.fuzz_out.write_text("\n".join(rows) + "\n")
        return 1 if missed else 0

    repeats = 1 if args.smoke else 7
    print(
        "| model | size | vocab | first check in a process | check, warm | memo hit "
        "| gguf.GGUFReader | llama.cpp load | first check / load "
        "| engine check, file seen before | / load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path, label in _models(args.smoke):
        r = bench_speed(path, label, repeats)
        reader = r["gguf_reader_ms"]
        reader_text = f"{reader * 1e3:.0f} ms" if isinstance(reader, float) else reader
        print(
            f"| {r['label']} | {r['size_mb']:.0f} MB | {r['n_vocab']:,} | "
            f"{r['first_ms']:.1f} ms | {r['warm_ms']:.1f} ms | {r['memo_us']:.0f} µs | "
            f"{reader_text} | {r['load_ms']:.0f} ms | {r['ratio']:.1%} | "
            f"{r['known_us']:.0f} µs | {r['known_ratio']:.2%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
