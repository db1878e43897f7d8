"""What an RX collector connection holds until the collector has it.

```
push ─► unsent ─► next() ─► written to the collector's socket ─► ack(seq) once TCP acknowledged it
            ▲                                  │ connection lost
            └──────────── rewind() ◄───────────┘ (everything not acknowledged goes again)
```

- `MemoryBacklog`: two deques, bounded by `queue_limit` messages and
  `queue_bytes` in all; when full the oldest is dropped and counted.
- `SpoolBacklog`: the collector's own encrypted spool (bounded by `[spool]
  max_bytes`, drop-oldest, counted by the spool); it survives an RX restart.
  Messages appended in this run are also cached, so the drain reads (and
  decrypts) from disk only after a restart or a long outage.

Delivery is at least once: after a reconnect, what the old connection had
written but TCP had not acknowledged is sent again, so a collector may see a
message twice, never miss one that reached the backlog (TCP cannot tell what
a collector that acknowledged bytes then died before storing them had read).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from typing import Any

from agent.spool import Spool, SpoolFull
from agent.spool.reading import ReadCache, forget, skip_dropped


class MemoryBacklog:
    def __init__(self, limit: int, max_bytes: int = 1 << 62) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self._sent: deque[tuple[int, bytes]] = deque()
        self._unsent: deque[tuple[int, bytes]] = deque()
        self._seq = 0
        self.bytes = 0
        self.dropped = 0

    def push(self, payload: bytes) -> int:
        self.bytes += len(payload)
        while (len(self._sent) + len(self._unsent) >= self.limit
               or self.bytes > self.max_bytes) and (self._sent or self._unsent):
            self.bytes -= len((self._sent or self._unsent).popleft()[1])
            self.dropped += 1
        self._seq += 1
        self._unsent.append((self._seq, payload))
        return self._seq

    def next(self, n: int) -> list[tuple[int, bytes]]:
        q = self._unsent
        out = [q.popleft() for _ in range(min(n, len(q)))]
        self._sent.extend(out)
        return out

    def ack(self, seq: int) -> None:
        sent = self._sent
        while sent and sent[0][0] <= seq:
            self.bytes -= len(sent.popleft()[1])

    def rewind(self) -> None:
        self._unsent.extendleft(reversed(self._sent))
        self._sent.clear()

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def __len__(self) -> int:
        return len(self._sent) + len(self._unsent)

    def tick(self) -> None:
        pass

    def stats(self) -> dict[str, Any] | None:
        return None

    def close(self) -> int:
        """Messages lost with the process (not yet acknowledged)."""
        return len(self)


class SpoolBacklog:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._cache: ReadCache[bytes] = ReadCache()
        self._cursor = spool.acked_seq
        self.full_dropped = 0  # messages the spool could not keep at all (its disk is full)
        spool.on_conflated = self._forget

    def push(self, payload: bytes) -> int | None:
        """The message's seq; None when the spool could not keep it (counted)."""
        try:
            seq = self.spool.append(payload)
        except SpoolFull:
            self.full_dropped += 1
            return None
        self._cache.keep(seq, payload, len(payload))
        return seq

    def next(self, n: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        cache = self._cache
        self._skip_dropped()    # drops happen only inside spool calls: here and after peek
        while len(out) < n:
            payload = cache.pop(self._cursor + 1, None)
            if payload is not None:
                self._cursor += 1
                out.append((self._cursor, payload))
                continue
            self.spool.mark_taken(self._cursor)  # the read may meet a full disk and drop
            found = self.spool.peek(min(n - len(out), 500), after=self._cursor)
            if not found:
                break
            for rec in found:
                cache.pop(rec.seq, None)
                self._cursor = rec.seq
                out.append((rec.seq, rec.payload))
            self._skip_dropped()
        self.spool.mark_taken(self._cursor)
        return out

    def _skip_dropped(self) -> None:
        self._cursor = skip_dropped(self.spool, self._cursor, self._cache)

    def _forget(self, seqs: list[int]) -> None:
        forget(self._cache, seqs)

    def ack(self, seq: int) -> None:
        self.spool.ack(seq)

    def rewind(self) -> None:
        self._cursor = self.spool.acked_seq

    @property
    def unsent(self) -> int:
        return self.spool.last_seq - self._cursor

    @property
    def dropped(self) -> int:
        return self.spool.counters["dropped_oldest"] + self.full_dropped

    def __len__(self) -> int:
        return self.spool.last_seq - self.spool.acked_seq

    def tick(self) -> None:
        self.spool.maybe_sync()

    def stats(self) -> dict[str, Any]:
        return asdict(self.spool.stats())

    def close(self) -> int:
        self.spool.close()
        return 0
