"""The structured-output warm-up: llguidance's tokenizer bridge is built in the background
at load, in steps while the process is otherwise idle, once, without the model's lock, and
a failure there reaches the first constrained request as a typed error.

Real tiny models throughout. ``_build_tokenizer`` is wrapped (the real one still runs) to
count builds, see which thread ran them, and hold one at a gate so a request can be sent
while it is in progress: the moment a background build is under way cannot be provoked
otherwise on a vocabulary this small. A busy process is real CPU work on another thread
(``Busy``): that is what the warm-up measures, whatever the work is. The failure is real: a
token longer than the 16 KB piece buffer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serapeum.core.errors import SerapeumError
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend import structured
from serapeum.llama_cpp.backend.loading import STRUCTURED_WARMUP_ENV
from serapeum.llama_cpp.errors import ModelLoadError
from serapeum.llama_cpp.testing.tiny_model import (
    TinyModelSpec,
    Vocabulary,
    _builtin_vocabulary,
    build_tiny_gguf,
)

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
HANG_GUARD_SECONDS = 120.0  # a deadline for "eventually", never a performance limit


class BuildSpy:
    """Wraps ``_build_tokenizer``: counts calls, records the thread, can hold a build."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self._real = real
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(HANG_GUARD_SECONDS), "the test never opened the gate"
        return self._real(*args, **kwargs)


@pytest.fixture(autouse=True)
def warm_up_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root conftest turns the warm-up off for the rest of the suite."""
    monkeypatch.setenv(STRUCTURED_WARMUP_ENV, "1")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[BuildSpy]:
    build = BuildSpy(structured._build_tokenizer)
    monkeypatch.setattr(structured, "_build_tokenizer", build)
    yield build
    build.gate.set()


def _fresh_llm(path: Path, **kwargs: Any) -> LlamaCPP:
    """An instance with its own loaded model (its own cache entry), greedy."""
    n_batch = kwargs.pop("n_batch", 96)
    return LlamaCPP(
        model_path=str(path),
        formatter="llama2",
        temperature=0.0,
        max_new_tokens=24,
        model_kwargs={"n_batch": n_batch},
        **kwargs,
    )


def _wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_bridge_is_built_after_load_without_a_constrained_request(
    tiny_model_path: Path, spy: BuildSpy
) -> None:
    llm = _fresh_llm(tiny_model_path, n_batch=97)
    constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
    assert _wait_until(lambda: constraints.ready)
    assert spy.threads == [structured.WARMUP_THREAD_NAME]
    answer = llm.complete("Is it?", json_schema=SCHEMA)
    assert isinstance(json.loads(answer.text)["ok"], bool)
    assert spy.threads == [structured.WARMUP_THREAD_NAME]  # nothing built again


def test_a_constrained_request_during_the_build_waits_for_it_and_succeeds(
    tiny_model_path: Path, spy: BuildSpy
) -> None:
    spy.gate.clear()  # the warm-up's build starts, then waits here
    llm = _fresh_llm(tiny_model_path, n_batch=98)
    assert spy.entered.wait(HANG_GUARD_SECONDS)
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            answers.append(llm.complete("Is it?", json_schema=SCHEMA).text)
        except BaseException as exc:
            errors.append(exc)

    requests = [threading.Thread(target=ask) for _ in range(3)]
    for request in requests:
        request.start()
    time.sleep(0.2)  # give them time to finish if they would not wait (they must not)
    assert not answers and not errors
    spy.gate.set()
    for request in requests:
        request.join(HANG_GUARD_SECONDS)
    assert not errors
    assert len(answers) == 3 and all(isinstance(json.loads(a)["ok"], bool) for a in answers)
    assert spy.threads == [structured.WARMUP_THREAD_NAME]  # built once, by the warm-up


class Busy:
    """Other threads of this process spending CPU until stopped.

    Two of them, hashing outside the GIL (as llama.cpp decodes): on a crowded machine they
    still add up to well over the warm-up's idle threshold.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._spin, name="test-busy", daemon=True) for _ in range(2)
        ]

    def _spin(self) -> None:
        data = b"x" * 2**20
        while not self._stop.is_set():
            hashlib.sha256(data).digest()

    def __enter__(self) -> Busy:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_the_warm_up_never_holds_the_model_lock(tiny_model_path: Path, spy: BuildSpy) -> None:
    """It only reads the vocabulary (const in llama.cpp): an idle open stream does not stop it."""
    spy.gate.clear()
    llm = _fresh_llm(tiny_model_path, n_batch=99)
    model = llm.loaded_model
    constraints = model.constraints  # type: ignore[attr-defined]
    assert spy.entered.wait(HANG_GUARD_SECONDS)
    assert not model.lock.locked()  # the warm-up is under way, the model is free
    stream = llm.complete("Tell me", stream=True, max_new_tokens=4)
    next(stream)  # the stream holds the model lock until it is consumed or closed
    spy.gate.set()
    assert _wait_until(lambda: constraints.ready)  # built while the stream held the model
    assert len(list(stream)) >= 0
    assert not model.lock.locked()
    assert spy.threads == [structured.WARMUP_THREAD_NAME]


def test_the_warm_up_pauses_while_the_process_is_busy(tiny_model_path: Path, spy: BuildSpy) -> None:
    with Busy():
        llm = _fresh_llm(tiny_model_path, n_batch=100)
        constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
        assert spy.entered.wait(HANG_GUARD_SECONDS)
        assert _wait_until(lambda: constraints._pacer is not None)
        pacer = constraints._pacer
        assert _wait_until(lambda: pacer.pauses >= 3)  # it keeps finding the process busy
        assert not constraints.ready
        assert llm.complete("Hi", max_new_tokens=2).text is not None  # requests still run
        assert not constraints.ready
    assert _wait_until(lambda: constraints.ready)  # idle again: it finishes
    assert spy.threads == [structured.WARMUP_THREAD_NAME]


def test_a_constrained_request_hurries_a_paused_warm_up(
    tiny_model_path: Path, spy: BuildSpy
) -> None:
    with Busy():
        llm = _fresh_llm(tiny_model_path, n_batch=101)
        constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
        assert _wait_until(lambda: constraints._pacer is not None)
        assert _wait_until(lambda: constraints._pacer.pauses >= 1)
        answer = llm.complete("Is it?", json_schema=SCHEMA)  # does not wait for idle
        assert isinstance(json.loads(answer.text)["ok"], bool)
        assert constraints.ready
    assert spy.threads == [structured.WARMUP_THREAD_NAME]  # the warm-up built it, hurried


def test_a_constrained_request_from_a_thread_holding_a_stream_still_fails_clearly(
    tiny_model_path: Path, spy: BuildSpy
) -> None:
    llm = _fresh_llm(tiny_model_path, n_batch=102)
    stream = llm.complete("Tell me", stream=True, max_new_tokens=4)
    next(stream)
    with pytest.raises(SerapeumError, match="unfinished stream"):  # ModelBusyError, as before
        llm.complete("Is it?", json_schema=SCHEMA)
    assert llm.loaded_model.constraints.ready  # type: ignore[attr-defined]
    stream.close()  # type: ignore[attr-defined]  # a generator
    assert spy.threads == [structured.WARMUP_THREAD_NAME]


def test_opting_out_leaves_the_build_to_the_first_constrained_request(
    tiny_model_path: Path, spy: BuildSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRUCTURED_WARMUP_ENV, "0")
    llm = _fresh_llm(tiny_model_path, n_batch=103)
    assert llm.complete("Hi", max_new_tokens=2).text is not None
    assert not spy.threads
    answer = llm.complete("Is it?", json_schema=SCHEMA)
    assert isinstance(json.loads(answer.text)["ok"], bool)
    assert len(spy.threads) == 1 and spy.threads[0] != structured.WARMUP_THREAD_NAME


def _warmup_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == structured.WARMUP_THREAD_NAME]


def test_closing_the_model_stops_a_warm_up_in_a_step(tiny_model_path: Path, spy: BuildSpy) -> None:
    spy.gate.clear()
    llm = _fresh_llm(tiny_model_path, n_batch=104)
    model = llm.loaded_model
    assert spy.entered.wait(HANG_GUARD_SECONDS)
    closer = threading.Thread(target=model.close)
    closer.start()
    spy.gate.set()  # the step under way finishes, then the warm-up stops
    closer.join(HANG_GUARD_SECONDS)
    assert not closer.is_alive()
    assert not model.constraints.ready  # type: ignore[attr-defined]
    warmup = model.constraints._warmup  # type: ignore[attr-defined]
    assert warmup is not None and not warmup.is_alive()  # close() waited for it
    with pytest.raises(ModelLoadError, match="closed"):
        model.constraints.check(SCHEMA)  # type: ignore[attr-defined]


def test_closing_the_model_stops_a_paused_warm_up_without_waiting_for_idle(
    tiny_model_path: Path, spy: BuildSpy
) -> None:
    with Busy():
        llm = _fresh_llm(tiny_model_path, n_batch=105)
        model = llm.loaded_model
        constraints = model.constraints  # type: ignore[attr-defined]
        assert _wait_until(lambda: constraints._pacer is not None)
        assert _wait_until(lambda: constraints._pacer.pauses >= 1)
        model.close()  # returns while the process is still busy
        assert not constraints._warmup.is_alive()
        assert not constraints.ready


def test_no_warm_up_thread_outlives_its_build(tiny_model_path: Path, spy: BuildSpy) -> None:
    before = set(_warmup_threads())
    llm = _fresh_llm(tiny_model_path, n_batch=106)
    constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
    assert _wait_until(lambda: constraints.ready)
    assert _wait_until(lambda: not constraints._warmup.is_alive())
    assert set(_warmup_threads()) <= before


@pytest.fixture(scope="module")
def long_token_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model plus one token longer than the bridge's 16 KB piece buffer."""
    base = _builtin_vocabulary()
    vocabulary = Vocabulary(
        tokens=(*base.tokens, "\u2581" + "z" * 17_000),
        scores=(*base.scores, 1.0),
        types=(*base.types, 1),
    )
    spec = TinyModelSpec(vocabulary=vocabulary, name="serapeum-tiny-long-token")
    return build_tiny_gguf(tmp_path_factory.mktemp("long") / "long-token.gguf", spec)


def test_a_failed_warm_up_reaches_the_first_constrained_request_typed(
    long_token_model_path: Path, spy: BuildSpy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    llm = _fresh_llm(long_token_model_path)
    constraints = llm.loaded_model.constraints  # type: ignore[attr-defined]
    assert _wait_until(lambda: constraints._warmup_done.is_set())
    assert llm.complete("Hi", max_new_tokens=2).text is not None  # unconstrained: unaffected
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(ModelLoadError, match="longer than 16384 bytes") as failure:
        llm.complete("Is it?", json_schema=SCHEMA)
    assert isinstance(failure.value, SerapeumError) and isinstance(failure.value, RuntimeError)
    assert isinstance(failure.value.__cause__, ValueError)
    assert spy.threads == [structured.WARMUP_THREAD_NAME]
    # The next constrained request builds again (here, failing the same way), still typed.
    with pytest.raises(ModelLoadError, match="longer than 16384 bytes"):
        llm.complete("Is it?", json_schema=SCHEMA)
    assert len(spy.threads) == 2


EXIT_DURING_NATIVE_BUILD = """
import sys, time
from serapeum.llama_cpp.backend import structured

import contextlib

real = structured._build_tokenizer
native_steps = [0]

def build(llguidance, vocab, n_vocab, step):
    @contextlib.contextmanager
    def counting_step(native):
        with step(native):
            native_steps[0] += native  # counted once the step may start
            yield
    return real(llguidance, vocab, n_vocab, step=counting_step)

structured._build_tokenizer = build
from serapeum.llama_cpp import LlamaCPP
llm = LlamaCPP(model_path=sys.argv[1], formatter="gemma", context_window=512)
while native_steps[0] < 1:  # the first of llguidance's two native builds (~0.5 s each)
    time.sleep(0.001)  # runs when the step starts or the build lets go of the GIL
print("exiting during the native build", flush=True)
"""


def test_exiting_during_the_native_build_does_not_crash(
    gemma_model_path: Path, tmp_path: Path
) -> None:
    """Without the exit hook this child died with SIGSEGV after Python had finished (6/6)."""
    import subprocess
    import sys

    script = tmp_path / "exit_during_build.py"
    script.write_text(EXIT_DURING_NATIVE_BUILD)
    child = subprocess.run(
        [sys.executable, str(script), str(gemma_model_path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )
    assert "exiting during the native build" in child.stdout, child.stderr[-2000:]
    assert child.returncode == 0, child.stderr[-2000:]
