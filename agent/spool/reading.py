"""A consumer of a spool keeps this run's appends in a memory cache by seq, so it
sends them without reading the disk back: the cache, and what the consumer must do
when the spool drops or conflates records it had not taken yet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from agent.spool.store import Spool

T = TypeVar("T")
MAX_ITEMS = 50_000
MAX_BYTES = 16 << 20  # a few large records must not hold the board's memory


class ReadCache(Generic[T]):
    """Appended records by seq, at most MAX_ITEMS and MAX_BYTES of them: past that a
    record is simply read back from the spool when its turn comes."""

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: dict[int, tuple[T, int]] = {}
        self.bytes = 0

    def keep(self, seq: int, item: T, size: int) -> None:
        if len(self._items) < self.max_items and self.bytes + size <= self.max_bytes:
            self._items[seq] = (item, size)
            self.bytes += size

    def pop(self, seq: int, default: T | None = None) -> T | None:
        got = self._items.pop(seq, None)
        if got is None:
            return default
        self.bytes -= got[1]
        return got[0]

    def __len__(self) -> int:
        return len(self._items)


def skip_dropped(spool: Spool, cursor: int, cache: ReadCache[Any]) -> int:
    """The consumer's cursor past what the spool dropped for room (its ack point jumped
    past the cursor); those records leave the cache too, so they are never sent."""
    acked = spool.acked_seq
    if cursor >= acked:
        return cursor
    if cache:
        for seq in range(cursor + 1, acked + 1):
            cache.pop(seq, None)
    return acked


def forget(cache: ReadCache[Any], seqs: Iterable[int]) -> None:
    """Records conflation removed from the middle of the spool: gone from the cache too."""
    for seq in seqs:
        cache.pop(seq, None)
