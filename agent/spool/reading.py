"""What every consumer of a spool that keeps this run's appends in a memory cache by
seq must do when the spool drops or conflates records it had not taken yet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.spool.store import Spool


def skip_dropped(spool: Spool, cursor: int, cache: dict[int, Any]) -> int:
    """The consumer's cursor past what the spool dropped for room (its ack point jumped
    past the cursor); those records leave the cache too, so they are never sent."""
    acked = spool.acked_seq
    if cursor >= acked:
        return cursor
    if cache:
        for seq in range(cursor + 1, acked + 1):
            cache.pop(seq, None)
    return acked


def forget(cache: dict[int, Any], seqs: Iterable[int]) -> None:
    """Records conflation removed from the middle of the spool: gone from the cache too."""
    for seq in seqs:
        cache.pop(seq, None)
