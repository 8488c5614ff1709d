"""Route llama.cpp's native log so it stays quiet unless ``verbose=True``.

llama-cpp-python 0.3.x maps ggml's log levels with an outdated enum (it reads WARN as
ERROR), so llama.cpp warnings reach stderr even with ``verbose=False``. This callback
uses ggml's current levels and the verbosity llama-cpp-python records on each load.

With ``verbose=False`` nothing reaches stderr, errors included: llama.cpp logs an error
for situations the engine handles and reports itself (a cancelled prompt evaluation
logs "failed to decode" four times). Those lines go to the ``serapeum.llama_cpp.native``
Python logger at DEBUG level instead, for whoever wants them.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the last line)
_GGML_TO_LOGGING = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
_CONTINUE = 5

_native_logger = logging.getLogger("serapeum.llama_cpp.native")
_installed: Any = None
_last_level = logging.CRITICAL


def install() -> None:
    """Install the callback once per process (llama.cpp's log callback is global)."""
    global _installed
    if _installed is not None:
        return
    import llama_cpp
    from llama_cpp import _logger as llama_logger

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        global _last_level
        mapped = _last_level if level == _CONTINUE else _GGML_TO_LOGGING.get(level, logging.INFO)
        _last_level = mapped
        verbose = llama_logger.logger.level < logging.ERROR
        if verbose:
            if llama_logger.logger.level <= mapped:
                print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)
        elif _native_logger.isEnabledFor(logging.DEBUG):
            _native_logger.debug("%s", text.decode("utf-8", errors="replace").rstrip("\n"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _installed = callback  # keep the ctypes callback alive
