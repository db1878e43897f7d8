"""Where a TX source holds its items between its OT peer and the link.

```
source ─put─► MemoryQueue | SpoolQueue ─take─► TxCore ─► LinkSender
                                 ▲                           │ frame sealed (tag = spool seq)
                                 └────── framed(tags) ◄──────┘
```

Each source owns one queue, so a limit is the channel's own and a noisy
channel fills only its own queue.

- `MemoryQueue`: bounded, in memory; QoS 1/2 is acknowledged to the OT peer on
  arrival, so a crash loses what was queued (overflow is counted by the source).
- `SpoolQueue`: the channel's encrypted durable spool. An item is acknowledged
  to the OT peer only once it is durable on disk, and leaves the spool once its
  frame went out. Items appended in this run are also kept in a bounded cache,
  so reading the spool back touches the disk only after a restart or a long
  backlog. The cache follows the spool: what the spool dropped for room (its
  acked_seq jumped past our cursor) or conflated is skipped and forgotten, and
  the spool is told how far we have taken (`mark_taken`), so `dropped()` is
  exactly what will never go out. A dropped item, and one the spool refused
  (its disk full with nothing left to drop), is acknowledged to the OT peer
  all the same: it will never be durable, and an unacknowledged QoS 1/2
  message holds a place in the broker's in-flight window for good.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar

from agent.spool import Spool, SpoolFull
from agent.spool.reading import ReadCache, forget, skip_dropped

T = TypeVar("T")
Ack = Callable[[], object]



class MemoryQueue(Generic[T]):
    manual_ack = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._q: deque[T] = deque()

    def put(self, item: T, ack: Ack | None) -> bool:
        """False when full: the caller counts the drop."""
        if len(self._q) >= self.limit:
            return False
        self._q.append(item)
        return True

    def take(self, limit: int) -> list[tuple[int | None, T]]:
        q = self._q
        return [(None, q.popleft()) for _ in range(min(limit, len(q)))]

    def framed(self, tags: list[object]) -> None:
        pass

    def rewind(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._q)

    def close(self) -> None:
        pass

    def dropped(self) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self._q)}


class SpoolQueue(Generic[T]):
    manual_ack = True

    def __init__(self, spool: Spool, encode: Callable[[T], bytes],
                 decode: Callable[[bytes], T], conflate: Callable[[T], str | None]) -> None:
        self.spool = spool
        self._encode, self._decode, self._conflate = encode, decode, conflate
        self._cache: ReadCache[T] = ReadCache()
        self._cursor = spool.acked_seq
        self._acks: deque[tuple[int, Ack]] = deque()
        spool.on_conflated = self._forget

    def put(self, item: T, ack: Ack | None) -> bool:
        """Always True: a record the spool cannot keep is counted there (dropped_full)."""
        data = self._encode(item)
        try:
            seq = self.spool.append(data, self._conflate(item))
        except SpoolFull:
            if ack is not None:
                ack()
            return True
        self._cache.keep(seq, item, len(data))
        if ack is not None:
            self._acks.append((seq, ack))
        self._release()
        return True

    def take(self, limit: int) -> list[tuple[int | None, T]]:
        out: list[tuple[int | None, T]] = []
        cache = self._cache
        self._skip_dropped()    # drops happen only inside spool calls: here and after peek
        while len(out) < limit:
            item = cache.pop(self._cursor + 1, None)
            if item is not None:
                self._cursor += 1
                out.append((self._cursor, item))
                continue
            self.spool.mark_taken(self._cursor)     # the read may meet a full disk and drop
            found = self.spool.peek(min(limit - len(out), 1000), after=self._cursor)
            if not found:
                break
            for rec in found:
                cache.pop(rec.seq, None)
                self._cursor = rec.seq
                out.append((rec.seq, self._decode(rec.payload)))
            self._skip_dropped()
        self.spool.mark_taken(self._cursor)
        return out

    def _skip_dropped(self) -> None:
        self._cursor = skip_dropped(self.spool, self._cursor, self._cache)

    def _forget(self, seqs: list[int]) -> None:
        forget(self._cache, seqs)

    def framed(self, tags: list[object]) -> None:
        seqs = [t for t in tags if isinstance(t, int)]
        if seqs:
            self.spool.ack(max(seqs))
            self._release()

    def rewind(self) -> None:
        """Take again everything after the last release: it is still in the spool."""
        self._cursor = self.spool.acked_seq

    def tick(self) -> None:
        self.spool.maybe_sync()
        self._release()

    def _release(self) -> None:
        """Acknowledge to the OT peer what is now durable, or dropped for room."""
        acks, spool = self._acks, self.spool
        done = max(spool.durable_seq, spool.dropped_seq)
        while acks and acks[0][0] <= done:
            acks.popleft()[1]()

    def __len__(self) -> int:
        return self.spool.last_seq - max(self._cursor, self.spool.acked_seq)

    def close(self) -> None:
        self.spool.close()

    def dropped(self) -> int:
        c = self.spool.counters
        return c["dropped_oldest"] + c["dropped_conflated"] + c["dropped_full"]

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self), "spool": asdict(self.spool.stats())}
