"""Interrupting llama.cpp's prompt evaluation from another thread, without the GIL."""

from __future__ import annotations

from typing import Any

from serapeum.core.cancellation import CancelToken


def c_flag_reader() -> Any:
    """A native function that reports, without Python, whether a 2-byte flag is raised.

    llama.cpp calls its abort callback after every graph node; a Python callback would
    need the GIL each time (and wait for it whenever another thread runs Python). libc's
    ``strlen`` on a buffer we own, ``b"\\0\\0"`` or ``b"\\1\\0"``, returns 0 or 1: exactly
    the ``bool (*)(void *)`` that llama.cpp wants, answered in native code.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return libc.strlen
    except (OSError, AttributeError):  # pragma: no cover - platforms without a C library
        return None


class PromptAbort:
    """Lets a request's cancel token interrupt llama.cpp while it evaluates the prompt.

    Armed only for cancellable requests and disarmed at the first generated token, from
    where the per-token stopping check takes over.
    """

    def __init__(self, llama: Any) -> None:
        import ctypes

        import llama_cpp

        self._set_callback = llama_cpp.llama_set_abort_callback
        self._ctx = llama.ctx
        self._flag = ctypes.create_string_buffer(2)
        self._flag_address = ctypes.cast(self._flag, ctypes.c_void_p)
        reader = c_flag_reader()
        self._callback = (
            ctypes.cast(reader, llama_cpp.ggml_abort_callback) if reader is not None else None
        )
        self._no_callback = llama_cpp.ggml_abort_callback(0)
        self._undo: Any = None

    def _raise_flag(self) -> None:
        self._flag[0] = b"\x01"

    def arm(self, cancel: CancelToken) -> None:
        if self._callback is None:
            return
        self._flag[0] = b"\x00"
        self._undo = cancel.on_set(self._raise_flag)
        self._set_callback(self._ctx, self._callback, self._flag_address)

    def disarm(self) -> None:
        if self._undo is not None:
            self._set_callback(self._ctx, self._no_callback, None)
            self._undo()
            self._undo = None
