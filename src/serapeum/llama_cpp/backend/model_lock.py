"""A per-model lock that refuses, instead of deadlocking, when its own holder asks again."""

from __future__ import annotations

import threading
from types import TracebackType

from serapeum.core.cancellation import CancelToken
from serapeum.llama_cpp.errors import GenerationCancelled, ModelBusyError

_POLL_SECONDS = 0.05


class ModelLock:
    """Serialises every use of one loaded model across all instances and threads."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._owner: int | None = None

    def locked(self) -> bool:
        return self._lock.locked()

    def acquire(self, cancel: CancelToken | None = None) -> None:
        """Wait for the model; with ``cancel``, give up (``GenerationCancelled``) once it is set."""
        self._check_owner()
        if cancel is None:
            self._lock.acquire()
        else:
            while not self._lock.acquire(timeout=_POLL_SECONDS):
                if cancel.is_set():
                    raise GenerationCancelled("cancelled while waiting for the model")
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def _check_owner(self) -> None:
        if self._owner == threading.get_ident():
            raise ModelBusyError(
                f"model {self._name!r} is in use by an unfinished stream in this thread; "
                "consume the stream to the end or close it before starting another call"
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
