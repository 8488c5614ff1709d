"""Token pieces to text, one token at a time, at a cost that does not grow with length.

``TextAssembler`` turns the bytes of each generated token into text (a character whose
UTF-8 bytes are split over several tokens comes out whole, with the last of them) and
holds back only the text that might be the start of a stop sequence. Both look at a
bounded tail, never at the whole completion.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

__all__ = ["StopScanner", "Utf8Assembler"]


class Utf8Assembler:
    """Bytes in, complete characters out; invalid bytes become U+FFFD."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    @property
    def pending(self) -> bool:
        """Whether a character is incomplete (some of its bytes are still to come)."""
        return bool(self._decoder.getstate()[0])

    def flush(self) -> str:
        """The end of the text: an incomplete character left over becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)


class StopScanner:
    """Finds stop sequences in streamed text, releasing everything that cannot be one.

    ``push`` returns the text that is safe to show and whether a stop sequence was
    found (the stop sequence and everything after it are dropped). Only a suffix that
    could still grow into a stop sequence is held back, so the work per call depends on
    the length of the new text and of the longest stop sequence, not on the text so far.
    """

    __slots__ = ("_first_chars", "_held", "_longest", "_stops")

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self._stops), default=0)
        self._first_chars = frozenset(s[0] for s in self._stops)
        self._held = ""

    @property
    def active(self) -> bool:
        return bool(self._stops)

    def push(self, text: str) -> tuple[str, bool]:
        window = self._held + text
        earliest = -1
        for stop in self._stops:
            found = window.find(stop)
            if found >= 0 and (earliest < 0 or found < earliest):
                earliest = found
        if earliest >= 0:
            self._held = ""
            return window[:earliest], True
        keep = self._partial_match_length(window)
        if keep:
            self._held = window[-keep:]
            return window[:-keep], False
        self._held = ""
        return window, False

    def flush(self) -> str:
        """Text held back at the end of generation: it turned out not to be a stop."""
        held, self._held = self._held, ""
        return held

    def _partial_match_length(self, window: str) -> int:
        """Length of the longest suffix of ``window`` that begins some stop sequence."""
        first_chars = self._first_chars
        for length in range(min(len(window), self._longest - 1), 0, -1):
            if window[-length] in first_chars:
                tail = window[-length:]
                if any(stop.startswith(tail) for stop in self._stops):
                    return length
        return 0
