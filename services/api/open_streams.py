"""Streamed answers still open (exports, live feeds), counted per holder so a cap can be
kept on them. A stream counts from when its answer is made until it is gone (finished,
abandoned by its client, or never started), which a finalizer sees whichever way it
ends."""

from __future__ import annotations

import weakref

__all__ = ["OpenStreams"]


class OpenStreams:
    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, holder: str = "") -> int:
        return self._open.get(holder, 0)

    def hold(self, stream: object, holder: str = "") -> None:
        """Count ``stream`` for ``holder`` until it is gone."""
        self._open[holder] = self.count(holder) + 1
        weakref.finalize(stream, self._release, holder)

    def _release(self, holder: str) -> None:
        if self._open[holder] > 1:
            self._open[holder] -= 1
        else:
            del self._open[holder]
