"""The sans-IO link sender: records in, sealed datagrams out.

```
push(record) ─► open frame (packs records up to the MTU; big records fragmented)
                  │ closes when full, after `linger`, or on flush
                  ▼
               seal (header, seq, AEAD) ─► interleaver (repeat r, depth d) ─► datagrams
                  │
                  └► its body ─► recovery window (recovery.py) ─► resend(): sealed anew
```

It never reads a clock: every call takes `now`, and `next_deadline()` says
when `handle_timer(now)` is due. The driver pops datagrams and paces them.
A record pushed with a `tag` (e.g. its spool sequence number) shows up in
`pop_framed()` once its frame is sealed and its first copy is among the
datagrams to send, so a driver can release what it held for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.link import records, seal, wire
from agent.link.interleave import Interleaver
from agent.link.recovery import RecoveryWindow


@dataclass(frozen=True)
class SenderParams:
    link_id: int = 1
    mtu: int = 1400
    repeat: int = 3
    interleave: int = 8
    linger: float = 0.002
    tick: float = 0.002

    @property
    def body_capacity(self) -> int:
        return self.mtu - wire.OVERHEAD


# Worst-case CBOR size of a Fragment record around its chunk: array head,
# tag, frag_id (u64), index and count (u32), byte-string head.
_FRAGMENT_OVERHEAD = 1 + 1 + 9 + 5 + 5 + 5


class LinkSender:
    def __init__(self, params: SenderParams, link_key: bytes, epoch: int,
                 recovery: RecoveryWindow | None = None) -> None:
        if params.body_capacity < _FRAGMENT_OVERHEAD + 64:
            raise ValueError(f"mtu {params.mtu} is too small")
        self.params = params
        self._capacity = params.body_capacity
        self.epoch = epoch
        self._cipher = seal.derive_epoch_cipher(link_key, params.link_id, epoch)
        self._interleaver = Interleaver(params.repeat, params.interleave)
        self.recovery = recovery
        self._items: list[bytes] = []
        self._items_len = 0
        self._tags: list[object] = []
        self._framed: list[object] = []
        self._heartbeat = False
        self._opened_at = 0.0
        self._last_step = 0.0
        self._seq = 0
        self._frag_id = 0
        self._out: list[bytes] = []
        self.counters = {"frames": 0, "datagrams": 0, "records": 0, "fragments": 0,
                         "bytes": 0}

    # -- input ---------------------------------------------------------------

    def push(self, record: bytes, now: float, *, heartbeat: bool = False,
             tag: object = None) -> None:
        """Queue one CBOR-encoded record for the link."""
        self.counters["records"] += 1
        size = len(record)
        if 1 + size > self._capacity:  # 1: the array head of a frame of one record
            # a heartbeat this large (many channels' counters) is fragmented: its frames
            # still carry the heartbeat flag, or RX could never measure datagram loss
            self._push_fragments(record, now, heartbeat)
            if tag is not None:
                self._tags.append(tag)  # framed with the last fragment
            return
        count = len(self._items) + 1
        if (1 if count < 24 else wire.array_head_size(count)) + self._items_len + size \
                > self._capacity:
            self._close(now)
        if not self._items:
            self._opened_at = now
        self._items.append(record)
        self._items_len += size
        self._heartbeat |= heartbeat
        if tag is not None:
            self._tags.append(tag)

    def push_heartbeat(self, build: Callable[[], bytes], now: float) -> None:
        """A heartbeat record in a frame of its own, closed now.

        The open frame is closed first, so the counters `build` reads count every
        datagram before the heartbeat's own. RX compares them with what it has
        received up to that datagram; were a frame closed in between, the offset
        would vary from one heartbeat to the next and show as loss (or hide it).
        """
        self.flush(now)
        self.push(build(), now, heartbeat=True)
        self.flush(now)

    def tag(self, tag: object) -> None:
        """A tag with no record (one the driver dropped): released with the open frame."""
        (self._tags if self._items else self._framed).append(tag)

    def flush(self, now: float) -> None:
        """Close the open frame now instead of waiting for `linger`."""
        if self._items:
            self._close(now)

    def _push_fragments(self, record: bytes, now: float, heartbeat: bool = False) -> None:
        size = self.params.body_capacity - wire.array_head_size(1) - _FRAGMENT_OVERHEAD
        chunks = [record[i:i + size] for i in range(0, len(record), size)]
        frag_id = self._frag_id
        self._frag_id += 1
        self.counters["records"] -= 1  # counted per fragment below
        for index, chunk in enumerate(chunks):
            self.counters["fragments"] += 1
            self.push(records.encode(records.Fragment(frag_id, index, len(chunks), chunk)), now,
                      heartbeat=heartbeat)

    # -- timers --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._items:
            deadlines.append(self._opened_at + self.params.linger)
        if self._interleaver.pending:
            deadlines.append(self._last_step + self.params.tick)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self._items and now >= self._opened_at + self.params.linger:
            self._close(now)
        elif self._interleaver.pending and now >= self._last_step + self.params.tick:
            self._emit(self._interleaver.tick(), now)

    # -- output --------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._seq

    def resend(self, now: float, budget: int, overhead: int = 0) -> list[bytes]:
        """The recovery window's frames due again now, each sealed as its next re-send,
        `budget` bytes at most (each costing its size plus `overhead`)."""
        if self.recovery is None:
            return []
        return [seal.seal_resent(self._cipher, wire.Header(
                    wire.VERSION, wire.FLAG_RESENT, self.params.link_id, self.epoch,
                    seq).pack(), seq, k, age_ms, body)
                for seq, k, age_ms, body in self.recovery.take(now, budget, overhead)]

    def pop_datagrams(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def forget_tags(self) -> None:
        """Release nothing of what was pushed so far, framed or still in the open frame
        (the driver's sends failed, and it takes those records again)."""
        self._tags, self._framed = [], []

    def pop_framed(self) -> list[object]:
        """Tags of records whose frames went into the datagrams popped so far."""
        out, self._framed = self._framed, []
        return out

    def drain(self, now: float) -> list[bytes]:
        """Close everything and return every datagram still owed (for shutdown)."""
        self.flush(now)
        self._emit(self._interleaver.drain(), now)
        return self.pop_datagrams()

    def _close(self, now: float) -> None:
        body = wire.array_head(len(self._items)) + b"".join(self._items)
        flags = wire.FLAG_HEARTBEAT if self._heartbeat else 0
        header = wire.Header(wire.VERSION, flags, self.params.link_id, self.epoch, self._seq).pack()
        datagram = seal.seal(self._cipher, header, self._seq, body)
        if self.recovery is not None:
            # heartbeats too: RX waits for every seq it missed (it skips their records)
            self.recovery.keep(self._seq, body, now)
        self._seq += 1
        self._items = []
        self._items_len = 0
        self._heartbeat = False
        self._framed.extend(self._tags)
        self._tags = []
        self.counters["frames"] += 1
        self._emit(self._interleaver.push(datagram), now)

    def _emit(self, datagrams: list[bytes], now: float) -> None:
        self._last_step = now
        self._out.extend(datagrams)
        self.counters["datagrams"] += len(datagrams)
        self.counters["bytes"] += sum(map(len, datagrams))
