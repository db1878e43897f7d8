"""Repetition coding: each frame goes out `repeat` times, copies spread apart.

A convolutional delay line. Every step (a new frame, or an idle tick) emits
copy 0 of the new frame plus copy k of the frame pushed k*stride steps ago.
Under steady traffic every step emits `repeat` datagrams, so copies of one
frame stand `repeat*stride + 1 >= depth` datagrams apart and a burst of up to
`depth` consecutive lost datagrams takes at most one copy of any frame. When
traffic is light, idle ticks advance the line, so copies are spread in time by
`stride` ticks instead.
"""

from __future__ import annotations

import math


class Interleaver:
    def __init__(self, repeat: int, depth: int) -> None:
        if not 1 <= repeat <= 5:
            raise ValueError("repeat must be 1..5")
        if depth < 1:
            raise ValueError("interleave depth must be >= 1")
        self.repeat = repeat
        self.stride = max(1, math.ceil((depth - 1) / repeat))
        self._line: dict[int, list[tuple[int, bytes]]] = {}
        self._step = 0

    def push(self, frame: bytes) -> list[bytes]:
        """Schedule all copies of a frame and advance one step."""
        for k in range(self.repeat):
            self._line.setdefault(self._step + k * self.stride, []).append((k, frame))
        return self._advance()

    def tick(self) -> list[bytes]:
        """Advance one step with no new frame (idle)."""
        return self._advance() if self._line else []

    @property
    def pending(self) -> bool:
        return bool(self._line)

    def drain(self) -> list[bytes]:
        out: list[bytes] = []
        while self._line:
            out.extend(self._advance())
        return out

    def _advance(self) -> list[bytes]:
        due = self._line.pop(self._step, [])
        self._step += 1
        due.sort(key=lambda item: item[0])
        return [frame for _, frame in due]
