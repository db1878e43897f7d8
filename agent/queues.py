"""Where TX holds OT messages between the brokers and the link.

```
MqttSource ─put─► MemoryQueue | SpoolQueue ─take─► pump ─► LinkSender
                                     ▲                         │ frame sealed (tag = seq)
                                     └──────── framed(tags) ◄──┘
```

- `MemoryQueue`: bounded, in memory; paho acknowledges QoS 1/2 on arrival, so
  a crash loses what was queued (overflow is counted).
- `SpoolQueue`: the encrypted durable spool. A QoS 1/2 message is acknowledged
  to the OT broker only once it is durable on disk, and leaves the spool once
  its frame went out. Entries appended in this run are also kept in a bounded
  cache, so the pump reads disk only after a restart or a long backlog.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import cbor2

from agent.spool import Spool

# channel, topic, payload, qos, retain, properties, arrival (wall clock)
Entry = tuple[str, str, bytes, int, bool, dict[str, Any] | None, float]
Ack = Callable[[], object]

_CACHE = 50_000


class MemoryQueue:
    manual_ack = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._q: deque[Entry] = deque()

    def put(self, entry: Entry, ack: Ack | None) -> bool:
        """False when full: the caller counts the drop per channel."""
        if len(self._q) >= self.limit:
            return False
        self._q.append(entry)
        return True

    def take(self, limit: int) -> list[tuple[int | None, Entry]]:
        q = self._q
        return [(None, q.popleft()) for _ in range(min(limit, len(q)))]

    def framed(self, tags: list[object]) -> None:
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


class SpoolQueue:
    manual_ack = True

    def __init__(self, spool: Spool, conflate: Callable[[Entry], str | None]) -> None:
        self.spool = spool
        self._conflate = conflate
        self._cache: dict[int, Entry] = {}
        self._cursor = spool.acked_seq
        self._acks: deque[tuple[int, Ack]] = deque()

    def put(self, entry: Entry, ack: Ack | None) -> bool:
        seq = self.spool.append(cbor2.dumps(list(entry)), self._conflate(entry))
        if len(self._cache) < _CACHE:
            self._cache[seq] = entry
        if ack is not None:
            self._acks.append((seq, ack))
        self._release()
        return True

    def take(self, limit: int) -> list[tuple[int | None, Entry]]:
        out: list[tuple[int | None, Entry]] = []
        cache = self._cache
        while len(out) < limit:
            entry = cache.pop(self._cursor + 1, None)
            if entry is not None:
                self._cursor += 1
                out.append((self._cursor, entry))
                continue
            records = self.spool.peek(min(limit - len(out), 1000), after=self._cursor)
            if not records:
                break
            for rec in records:
                cache.pop(rec.seq, None)
                self._cursor = rec.seq
                out.append((rec.seq, _decode(rec.payload)))
        return out

    def framed(self, tags: list[object]) -> None:
        seqs = [t for t in tags if isinstance(t, int)]
        if seqs:
            self.spool.ack(max(seqs))
            self._release()

    def tick(self) -> None:
        self.spool.maybe_sync()
        self._release()

    def _release(self) -> None:
        """Acknowledge to the OT broker what is now durable."""
        acks, durable = self._acks, self.spool.durable_seq
        while acks and acks[0][0] <= durable:
            acks.popleft()[1]()

    def __len__(self) -> int:
        return self.spool.last_seq - self._cursor

    def close(self) -> None:
        self.spool.close()

    def dropped(self) -> int:
        c = self.spool.counters
        return c["dropped_oldest"] + c["dropped_conflated"]

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self), "spool": asdict(self.spool.stats())}


def _decode(payload: bytes) -> Entry:
    channel, topic, body, qos, retain, props, arrived = cbor2.loads(payload)
    return channel, topic, body, qos, retain, props, arrived
