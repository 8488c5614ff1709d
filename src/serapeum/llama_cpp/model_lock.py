"""A per-model lock that refuses, instead of deadlocking, when its own holder asks again."""

from __future__ import annotations

import threading
from types import TracebackType

from serapeum.llama_cpp.errors import ModelBusyError


class ModelLock:
    """Serialises every use of one loaded model across all instances and threads."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._owner: int | None = None

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> ModelLock:
        me = threading.get_ident()
        if self._owner == me:
            raise ModelBusyError(
                f"model {self._name!r} is in use by an unfinished stream in this thread; "
                "consume the stream to the end or close it before starting another call"
            )
        self._lock.acquire()
        self._owner = me
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._owner = None
        self._lock.release()
