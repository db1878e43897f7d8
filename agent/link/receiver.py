"""The sans-IO link receiver: datagrams in, records and events out.

```
datagram ─► header checks ─► epoch policy ─► dedupe ─► AEAD open ─► CBOR body
                 │                 │            │          │            │
              counted           counted      counted    counted     reorder buffer
              & dropped         & dropped   & dropped  & dropped        │
                                                          gaps declared lost after
                                                          `reorder_window` frames or
                                                          `reorder_timeout` seconds
                                                                        ▼
                                                 RecordReceived / FramesLost / EpochChanged
```

Bad bytes from the wire are never raised: nobody could be told. They are
counted by reason in `counters` and dropped; a datagram naming an epoch RX has
no key for while a flood of new epochs is over the key-derivation budget is
dropped unopened as `unverified` (see `ciphers.py`). Copies of a frame that was
already delivered count as `duplicates`; frames from far behind the window or
from a retired epoch count as `replayed`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.link import records, seal, wire
from agent.link.ciphers import EpochCiphers
from agent.link.events import EpochChanged, Event, FramesLost, RecordReceived

# How many lost seqs are remembered, to tell a late copy from a duplicate.
_LOST_MEMORY = 4096
# How many heartbeat frames' copy counts are kept (heartbeat_copies).
_HEARTBEAT_MEMORY = 64

REJECT_REASONS = ("truncated", "bad_version", "bad_flags", "wrong_link", "unverified",
                  "auth_failed", "replayed", "stale_epoch", "malformed_body")


@dataclass(frozen=True)
class ReceiverParams:
    link_id: int = 1
    reorder_window: int = 512      # frames a gap may trail the newest before it is lost
    reorder_timeout: float = 0.5   # seconds a gap is waited for
    epoch_takeover: float = 3.0    # silence after which an older-looking epoch is accepted
    replay_window: int = 1 << 16   # seqs behind the newest still told apart as duplicates
    max_record: int = 16 << 20     # largest reassembled record
    key_trials_first: float = 20.0  # new-epoch key derivations per second (first sight)
    key_trials_again: float = 50.0  # ... and for epoch values seen before (see ciphers.py)


class LinkReceiver:
    def __init__(self, params: ReceiverParams, link_key: bytes) -> None:
        self.params = params
        self._ciphers = EpochCiphers(link_key, params.link_id,
                                     first_rate=params.key_trials_first,
                                     again_rate=params.key_trials_again)
        self.epoch: int | None = None
        self._retired: deque[int] = deque(maxlen=16)
        self._next = 0                      # lowest seq not yet delivered or lost
        self._buffer: dict[int, tuple[float, list[Any]]] = {}
        self._lost: deque[int] = deque(maxlen=_LOST_MEMORY)
        self._lost_set: set[int] = set()
        self._frag: tuple[int, int, list[bytes], int] | None = None  # id, count, chunks, size
        self.last_valid_at: float | None = None
        # The latest heartbeat frames of this epoch, seq -> [copies received, datagrams
        # received in the epoch up to its first copy]: LinkHealth compares TX's count
        # with RX's at that first copy, and only from a heartbeat whose every copy came
        # (health.py), so the two line up.
        self.heartbeat_copies: dict[int, list[int]] = {}
        self._epoch_base = 0  # valid + duplicates before this epoch's first datagram
        self.counters: dict[str, int] = dict.fromkeys(
            ("datagrams", "valid", "frames", "records", "duplicates", "late", "lost",
             "unknown_record", "bad_record", "fragments_dropped", "epochs",
             *REJECT_REASONS), 0)

    # -- input ---------------------------------------------------------------

    def receive(self, datagram: bytes, now: float) -> list[Event]:
        """Take one datagram; never raises on any byte string."""
        c = self.counters
        c["datagrams"] += 1
        try:
            version, flags, link_id, epoch, seq = wire.unpack_header(datagram)
        except ValueError:
            c["truncated"] += 1
            return []
        if version != wire.VERSION:
            c["bad_version"] += 1
            return []
        if flags & ~wire.KNOWN_FLAGS:
            c["bad_flags"] += 1
            return []
        if link_id != self.params.link_id:
            c["wrong_link"] += 1
            return []
        events: list[Event] = []
        if epoch != self.epoch:
            if epoch in self._retired:
                c["replayed"] += 1
                return []
            if self.epoch is not None and epoch < self.epoch and (
                    self.last_valid_at is not None
                    and now - self.last_valid_at < self.params.epoch_takeover):
                c["stale_epoch"] += 1
                return []
            body = self._open(epoch, datagram, seq, now)
            if body is None:
                return []
            events.extend(self._switch_epoch(epoch, seq, now))
        else:
            if seq < self._next or seq in self._buffer:
                if seq in self._lost_set:
                    c["late"] += 1
                elif self._next - seq > self.params.replay_window:
                    c["replayed"] += 1
                else:
                    c["duplicates"] += 1
                    if flags & wire.FLAG_HEARTBEAT:
                        self._heartbeat_copy(seq)
                return []
            body = self._open(epoch, datagram, seq, now)
            if body is None:
                return []
        c["valid"] += 1
        self.last_valid_at = now
        if flags & wire.FLAG_HEARTBEAT:
            self._heartbeat_copy(seq)
        self._buffer[seq] = (now, self._decode_body(body))
        events.extend(self._deliver_ready(now))
        return events

    @property
    def keys_derived(self) -> int:
        """Epoch keys derived so far (HKDF): bounded by the budget under any flood."""
        return self._ciphers.derived

    def next_deadline(self) -> float | None:
        if not self._buffer:
            return None
        return min(t for t, _ in self._buffer.values()) + self.params.reorder_timeout

    def handle_timer(self, now: float) -> list[Event]:
        """Give up on gaps that have been waited for long enough.

        The gap below the lowest buffered seq has been known since the first
        buffered frame beyond it arrived, whichever seq that was, so it is
        timed from the earliest arrival (as `next_deadline` promises).
        """
        events: list[Event] = []
        while self._buffer:
            first_arrival = min(t for t, _ in self._buffer.values())
            if first_arrival + self.params.reorder_timeout > now:
                break
            events.extend(self._declare_lost_until(min(self._buffer)))
            events.extend(self._deliver_ready(now))
        return events

    # -- internals -----------------------------------------------------------

    def _heartbeat_copy(self, seq: int) -> None:
        copies = self.heartbeat_copies
        seen = copies.get(seq)
        if seen is not None:
            seen[0] += 1
            return
        c = self.counters
        copies[seq] = [1, c["valid"] + c["duplicates"] - self._epoch_base]
        if len(copies) > _HEARTBEAT_MEMORY:
            del copies[next(iter(copies))]

    def _open(self, epoch: int, datagram: bytes, seq: int, now: float) -> bytes | None:
        cipher = self._ciphers.get(epoch, now)
        if cipher is None:
            self.counters["unverified"] += 1
            return None
        body = seal.open_sealed(cipher, datagram, wire.HEADER_SIZE, seq)
        if body is None:
            self.counters["auth_failed"] += 1
        else:
            self._ciphers.trust(epoch, cipher)
        return body

    def _switch_epoch(self, epoch: int, seq: int, now: float) -> list[Event]:
        events: list[Event] = []
        old = self.epoch
        if old is not None:
            # Deliver what the old epoch still holds; its missing frames are lost.
            while self._buffer:
                events.extend(self._declare_lost_until(min(self._buffer)))
                events.extend(self._deliver_ready(now))
            self._retired.append(old)
        self.epoch = epoch
        # No flood of other epochs may push the followed epoch's key out.
        cipher = self._ciphers.get(epoch, now)
        if cipher is not None:
            self._ciphers.pin({epoch: cipher})
        self.counters["epochs"] += 1
        # After a TX restart the new stream is expected from seq 0, so its
        # first frames count as lost if they never come. An RX that just
        # started cannot know what was sent before it: it starts where it joins.
        self._next = 0 if old is not None and seq < self.params.reorder_window else seq
        self._lost.clear()
        self._lost_set.clear()
        self.heartbeat_copies.clear()
        self._epoch_base = self.counters["valid"] + self.counters["duplicates"]
        self._frag = None
        events.append(EpochChanged(old, epoch))
        return events

    def _decode_body(self, body: bytes) -> list[Any]:
        try:
            items = cbor2.loads(body)
        except Exception:  # cbor2 raises many types; any of them means a bad body
            items = None
        if not isinstance(items, list):
            self.counters["malformed_body"] += 1
            return []
        return items

    def _declare_lost_until(self, seq: int) -> list[Event]:
        if seq <= self._next:
            return []
        count = seq - self._next
        for s in range(max(self._next, seq - _LOST_MEMORY), seq):
            if len(self._lost) == _LOST_MEMORY:
                self._lost_set.discard(self._lost[0])
            self._lost.append(s)
            self._lost_set.add(s)
        event = FramesLost(self.epoch or 0, self._next, count)
        self.counters["lost"] += count
        self._next = seq
        if self._frag is not None:
            self.counters["fragments_dropped"] += 1
            self._frag = None
        return [event]

    def _deliver_ready(self, now: float) -> list[Event]:
        """Deliver the in-order prefix of the buffer; when the newest frame is a
        whole window ahead, give up on the gaps below it (only the missing
        seqs count as lost: buffered frames inside the window still go out)."""
        events: list[Event] = []
        buffer = self._buffer
        window = self.params.reorder_window
        while True:
            while self._next in buffer:
                seq = self._next
                _, items = buffer.pop(seq)
                self._next += 1
                self.counters["frames"] += 1
                for item in items:
                    record = self._record(item)
                    if record is not None:
                        events.append(RecordReceived(record, self.epoch or 0, seq))
            if not buffer:
                return events
            target = max(buffer) - window + 1
            if self._next >= target:
                return events
            events.extend(self._declare_lost_until(min(min(buffer), target)))

    def _record(self, item: Any) -> records.Record | None:
        try:
            # the common case without decode_item's checks: a tagged list of a known tag
            cls = (records.decoder(item[0])
                   if item.__class__ is list and item and item[0].__class__ is int else None)
            record: records.Record = (records.decode_item(item) if cls is None
                                      else cls.from_list(item))
        except records.UnknownRecord:
            self.counters["unknown_record"] += 1
            return None
        except (records.RecordError, ValueError, TypeError, OverflowError):
            self.counters["bad_record"] += 1
            return None
        if isinstance(record, records.Fragment):
            return self._reassemble(record)
        self.counters["records"] += 1
        return record

    def _reassemble(self, frag: records.Fragment) -> records.Record | None:
        if frag.index == 0:
            if self._frag is not None:
                self.counters["fragments_dropped"] += 1
            self._frag = (frag.frag_id, frag.count, [frag.chunk], len(frag.chunk))
        elif (self._frag is None or self._frag[0] != frag.frag_id
              or len(self._frag[2]) != frag.index):
            self.counters["fragments_dropped"] += 1
            self._frag = None
            return None
        else:
            fid, count, chunks, size = self._frag
            chunks.append(frag.chunk)
            self._frag = (fid, count, chunks, size + len(frag.chunk))
        fid, count, chunks, size = self._frag
        if size > self.params.max_record:
            self.counters["fragments_dropped"] += 1
            self._frag = None
            return None
        if len(chunks) < count:
            return None
        self._frag = None
        try:
            item = cbor2.loads(b"".join(chunks))
        except Exception:  # any decoder error means a bad record
            self.counters["bad_record"] += 1
            return None
        return self._record(item)
