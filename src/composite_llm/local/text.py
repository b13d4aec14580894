"""Turning one sequence's sampled token pieces into streamed text, with stop strings.

Kept apart from the scheduler so it is testable without llama.cpp. What it must get right:
- a token piece can end in the middle of a UTF-8 character (byte-level BPE): an incremental decoder
  holds the partial bytes back until the character is complete;
- a stop string can span several tokens: text that might be the start of a stop string is held back
  until it is known not to be one, so the client never sees any part of a stop string;
- the answer ends *before* the first stop string (OpenAI semantics), as llama-cpp-python's own
  completion did.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class StopText:
    """Accumulates decoded text for one sample; `feed` returns the text that is safe to emit now."""

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._sent = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything emitted so far (the answer, once finished)."""
        return self._text[: self._sent]

    def _first_stop(self) -> int:
        """Index of the earliest stop string in the text, or -1."""
        best = -1
        longest = max((len(s) for s in self._stops), default=0)
        start = max(0, self._sent - longest)
        for stop in self._stops:
            at = self._text.find(stop, start)
            if at != -1 and (best == -1 or at < best):
                best = at
        return best

    def _held_back(self) -> int:
        """How many trailing characters could still become a stop string."""
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), hold, -1):
                if self._text.endswith(stop[:k]):
                    hold = k
                    break
        return hold

    def _emit_until(self, end: int) -> str:
        end = max(end, self._sent)
        out = self._text[self._sent : end]
        self._sent = end
        return out

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; returns newly safe text. Sets `stopped` when a stop string appeared."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        at = self._first_stop()
        if at != -1:
            self.stopped = True
            out = self._emit_until(at)
            self._text = self._text[:at]
            return out
        return self._emit_until(len(self._text) - self._held_back())

    def finish(self) -> str:
        """The end of the sample (end-of-generation token or length): flush what was held back."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(b"", final=True)
        at = self._first_stop()
        if at != -1:
            self.stopped = True
            self._text = self._text[:at]
            return self._emit_until(at)
        return self._emit_until(len(self._text))
