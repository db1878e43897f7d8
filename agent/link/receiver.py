"""The sans-IO link receiver: datagrams in, records and events out.

```
datagram ─► header checks ─► AEAD open ─► epoch rules (epochs.py) ─► dedupe ─► CBOR body
                 │                │                  │                  │            │
              counted          counted     `replayed`/`stale_epoch`  counted   reorder buffer
              & dropped        & dropped       & dropped (or held)   & dropped       │
                                                          gaps declared lost after
                                                          `reorder_window` frames or
                                                          `reorder_timeout` seconds
                                                                        ▼
                                                 RecordReceived / FramesLost / EpochChanged
```

Bad bytes from the wire are never raised: nobody could be told. They are
counted by reason in `counters` and dropped, and nothing is counted as anything
but `auth_failed` before it authenticated (or `unverified`, when a flood of new
epochs is over the key-derivation budget of `ciphers.py`). So forged datagrams
can neither hide loss nor change state: RX's datagram loss compares TX's count
of datagrams sent with `valid + duplicates`, both authenticated only.

- `valid`: a fresh frame of the followed epoch.
- `duplicates`: a byte-identical copy of a frame RX has, up to the `repeat`
  copies TX announces in its heartbeats (`max_copies` until one came). Copies
  are compared with the kept datagram (`copy_window` of them), which costs a
  memcmp instead of an AES open.
- `replayed`: an authenticated frame RX had: a copy beyond `repeat`, a frame
  older than the copy window, or one of an epoch RX followed, at or below its
  high-water mark (remembered across restarts, see `epochs.py`).
- `late`: an authenticated frame RX never had that comes after its gap was
  given up (or was sent long before RX joined the stream): never delivered.
  Copies of the frames sent just before RX joined (within `copy_window`) count
  as `duplicates`: not delivered either, but the link carried them and TX
  counted them, so the datagram loss stays exact on a clean link.
- `stale_epoch`: an authenticated frame of an epoch RX does not follow (yet).
- `resent_used` / `resent_skipped`: copies from TX's recovery window that
  brought a frame RX missed before it joined the epoch (`missed.py`), and those
  it did not need, told apart by their header alone (never opened: counting
  them changes nothing else).
- Not outcomes of one datagram but of frames: `recovered`, a missed frame
  delivered late (from a resent copy or a late live one); `missed`, one given up
  once TX's window no longer had it (also counted in `lost`).

The hot path (a fresh frame of the followed epoch) is header, one dict look-up,
the AES open, a CBOR decode and the reorder buffer; everything about other
epochs is off it.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.link import records, seal, wire
from agent.link.ciphers import EpochCiphers
from agent.link.epochs import Decision, EpochBook, EpochMemory, Verdict
from agent.link.events import EpochChanged, Event, FramesLost, RecordReceived
from agent.link.fragments import Reassembly
from agent.link.missed import Missed

# How many lost seqs are remembered, to tell a late copy from a duplicate.
_LOST_MEMORY = 4096
# How many heartbeat frames' copy counts are kept (heartbeat_copies).
_HEARTBEAT_MEMORY = 64



class _Kept(NamedTuple):
    """A body item with its bytes as TX encoded them (`keep_raw`)."""
    item: Any
    raw: bytes


REJECT_REASONS = ("truncated", "bad_version", "bad_flags", "wrong_link", "unverified",
                  "auth_failed", "replayed", "stale_epoch", "malformed_body")


@dataclass(frozen=True)
class ReceiverParams:
    link_id: int = 1
    reorder_window: int = 512      # frames a gap may trail the newest before it is lost
    reorder_timeout: float = 0.5   # seconds a gap is waited for
    epoch_takeover: float = 3.0    # silence (and probation) before an older epoch is followed
    copy_window: int = 1024        # latest frames kept to recognise their copies
    max_copies: int = 5            # copies per frame believed until a heartbeat says `repeat`
    max_record: int = 16 << 20     # largest reassembled record
    key_trials_first: float = 20.0  # new-epoch key derivations per second (first sight)
    key_trials_again: float = 50.0  # ... and for epoch values seen before (see ciphers.py)


class LinkReceiver:
    def __init__(self, params: ReceiverParams, link_key: bytes,
                 memory: EpochMemory | None = None) -> None:
        """`memory`: what an earlier run remembered of epochs (`memory()`), or None."""
        if memory is not None and memory.link_id != params.link_id:
            raise ValueError(f"epoch memory is for link id {memory.link_id}, "
                             f"not {params.link_id}")
        self.params = params
        self._ciphers = EpochCiphers(link_key, params.link_id,
                                     first_rate=params.key_trials_first,
                                     again_rate=params.key_trials_again)
        self._book = EpochBook(params.epoch_takeover, memory)
        self._pins: dict[int, AESGCM] = {}
        if self._book.restored is not None:
            self._pin({self._book.restored: self._ciphers.derive(self._book.restored)})
        self.epoch: int | None = None
        self._cipher: AESGCM | None = None
        self._next = 0                      # lowest seq not yet delivered or lost
        self._joined_at = 0                 # seqs below were sent before RX joined the epoch
        self._floor = -1                    # seqs up to here RX had before (a restart)
        self._buffer: dict[int, tuple[float, list[Any]]] = {}
        self._lost: deque[int] = deque(maxlen=_LOST_MEMORY)
        self._lost_set: set[int] = set()
        # seq -> [the datagram accepted for it, copies received], for the last frames
        self._copies: dict[int, list[Any]] = {}
        self._repeat = params.max_copies
        self._copy_window = params.copy_window
        self._prejoin: dict[int, int] = {}   # copies of frames sent before RX joined
        self._missed: Missed | None = None  # what RX missed before it joined the epoch
        self._fresh = memory is None        # no saved state, nothing followed yet
        self._uncertain = memory.uncertain if memory is not None else 0
        self.last_valid_at: float | None = None
        self._listening_since: float | None = None
        # The latest heartbeat frames of this epoch, seq -> [copies received, datagrams
        # received in the epoch up to its first copy]: LinkHealth compares TX's count
        # with RX's at that first copy, and only from a heartbeat whose every copy came
        # (health.py), so the two line up. Authenticated copies only, `repeat` at most.
        self.heartbeat_copies: dict[int, list[int]] = {}
        self._epoch_base = 0  # valid + duplicates before this epoch's first datagram
        self.counters: dict[str, int] = dict.fromkeys(
            ("datagrams", "valid", "frames", "records", "duplicates", "late", "lost",
             "unknown_record", "bad_record", "fragments_dropped", "epochs", "recovered",
             "missed", "resent_used", "resent_skipped", *REJECT_REASONS), 0)
        self._frag = Reassembly(params.max_record, self.counters)
        self._recovered_frag = Reassembly(params.max_record, self.counters)
        # Set when a sink stores records as they came (a spool): every RecordReceived
        # then carries its bytes, so that sink need not encode again what was just
        # decoded. Off, the body decodes in one call, which is cheaper for all others.
        self.keep_raw = False

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
        if flags & wire.FLAG_RESENT:
            return self._resent(datagram, epoch, seq)
        if epoch != self.epoch:
            return self._other_epoch(datagram, flags, epoch, seq, now)
        if seq < self._next or seq in self._buffer:
            kept = self._copies.get(seq)
            if kept is not None and kept[0] == datagram \
                    and self._next - seq <= self._copy_window:
                kept[1] += 1   # a copy of a frame RX has: authentic, no AES open needed
                if kept[1] > self._repeat:
                    c["replayed"] += 1
                else:
                    c["duplicates"] += 1
                    if flags & wire.FLAG_HEARTBEAT:
                        self._heartbeat_copy(seq)
                return []
            return self._behind(datagram, seq, kept is not None)
        body = seal.open_sealed(self._cipher, datagram, wire.HEADER_SIZE, seq)  # type: ignore[arg-type]
        if body is None:
            c["auth_failed"] += 1
            return []
        c["valid"] += 1
        self.last_valid_at = now
        if flags & wire.FLAG_HEARTBEAT:
            self._heartbeat_copy(seq)
        # A compact copy: the driver's datagram may sit in a far larger allocation
        # (recv(65535), shrunk in place), and 1024 of those pinned 26 MB here.
        copies = self._copies
        copies[seq] = [bytes(memoryview(datagram)), 1]
        copies.pop(seq - self._copy_window, None)
        if len(copies) > 2 * self._copy_window:
            self._sweep_copies(seq)
        items = self._decode_body(body)
        if flags:
            self._learn_repeat(items)
        self._buffer[seq] = (now, items)
        return self._deliver_ready(now)

    def heartbeat(self, beat: records.Heartbeat) -> list[Event]:
        """A heartbeat of the followed epoch was delivered (whole, even when it came in
        fragments): the oldest frame of TX's recovery window ends the wait for older
        missed ones; a TX without a window names none, and RX gives up all it misses."""
        if self._missed is None:
            return []
        return self._give_up_missed(beat.counters.get("recovery_oldest"))

    @property
    def missing(self) -> int:
        """Frames RX missed before it joined and still hopes to get (`missed.py`)."""
        return 0 if self._missed is None else self._missed.wanted

    @property
    def keys_derived(self) -> int:
        """Epoch keys derived so far (HKDF): bounded by the budget under any flood."""
        return self._ciphers.derived

    def memory(self) -> EpochMemory:
        """What to remember of epochs across a restart (plain data, for the driver)."""
        high = None
        if self.epoch is not None:
            high = max(self._next - 1, max(self._buffer) if self._buffer else -1)
            if self._missed is not None and self._missed.owed:
                # what is still missed must stay fresh across a restart, or it would be
                # taken for replays: what RX had beyond may come twice (at least once)
                high = self._missed.lo - 1
        return self._book.memory(self.params.link_id, self.epoch, high)

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

    def _behind(self, datagram: bytes, seq: int, kept: bool) -> list[Event]:
        """A datagram of the followed epoch at a seq already delivered, buffered or lost,
        that is not a copy of the datagram RX keeps for it (`kept`: RX keeps one)."""
        c = self.counters
        body = seal.open_sealed(self._cipher, datagram, wire.HEADER_SIZE, seq)  # type: ignore[arg-type]
        if body is None:
            c["auth_failed"] += 1
            return []
        recovered = self._recover(seq, body) if self._missed is not None else []
        if kept:
            c["replayed"] += 1
        elif self._floor < seq < self._joined_at and seq >= self._joined_at - self._copy_window:
            # Sent just before RX joined (delivered above if RX missed it); the link
            # carried it and TX counted it, so it counts as received (health), `repeat`
            # copies at most.
            n = self._prejoin[seq] = self._prejoin.get(seq, 0) + 1
            c["duplicates" if n <= self._repeat else "replayed"] += 1
        elif seq in self._lost_set or self._floor < seq < self._joined_at:
            c["late"] += 1
        else:
            c["replayed"] += 1
        return recovered

    def _resent(self, datagram: bytes, epoch: int, seq: int) -> list[Event]:
        """A copy from TX's recovery window: delivered if it is a frame RX missed, else
        skipped without opening it (it can change nothing)."""
        missed = self._missed
        if epoch != self.epoch or missed is None or not missed.wants(seq):
            self.counters["resent_skipped"] += 1
            return []
        opened = seal.open_resent(self._cipher, datagram, wire.HEADER_SIZE, seq)  # type: ignore[arg-type]
        if opened is None:
            self.counters["auth_failed"] += 1
            return []
        self.counters["resent_used"] += 1
        age_ms, body = opened
        return self._recover(seq, body, age_ms / 1000)

    def _recover(self, seq: int, body: bytes, age: float = 0.0) -> list[Event]:
        """An authenticated copy of frame `seq`, sent `age` seconds after the frame first
        was: its records, if RX missed it."""
        missed = self._missed
        if missed is None or not missed.wants(seq):
            return []
        missed.got(seq)
        if missed.done:
            self._missed = None
        self.counters["recovered"] += 1
        self.counters["frames"] += 1
        epoch = self.epoch or 0
        events: list[Event] = []
        for item in self._decode_body(body):
            ev = self._received(item, epoch, seq, self._recovered_frag)
            if ev is not None and not isinstance(ev.record, records.Heartbeat):
                ev.recovered, ev.unplaced, ev.age = True, seq < missed.placed_from, age
                events.append(ev)
        return events

    def _give_up_missed(self, below: int | None) -> list[Event]:
        """Stop waiting for the missed frames below `below` (None: all of them); those
        RX was owed count as lost."""
        missed = self._missed
        if missed is None:
            return []
        first, n = missed.give_up_below(missed.hi if below is None else below)
        if missed.owed:
            n += missed.untracked
        missed.untracked = 0
        if missed.done:
            self._missed = None
        if not missed.owed or n == 0:
            return []
        self.counters["lost"] += n
        self.counters["missed"] += n
        return [FramesLost(self.epoch or 0, first, n, while_away=True)]

    def _other_epoch(self, datagram: bytes, flags: int, epoch: int, seq: int,
                     now: float) -> list[Event]:
        c = self.counters
        cipher = self._ciphers.get(epoch, now)
        if cipher is None:
            c["unverified"] += 1
            return []
        body = seal.open_sealed(cipher, datagram, wire.HEADER_SIZE, seq)
        if body is None:
            c["auth_failed"] += 1
            return []
        self._ciphers.trust(epoch, cipher)
        if self._listening_since is None:
            self._listening_since = now
        quiet = self.last_valid_at if self.last_valid_at is not None else self._listening_since
        decision = self._book.judge(epoch, seq, flags, datagram, now, quiet)
        if decision.verdict is Verdict.STALE:
            c["replayed"] += 1
            return []
        if decision.verdict is Verdict.HOLD:
            c["stale_epoch"] += 1
            return []
        return self._follow(epoch, cipher, seq, flags, datagram, body, decision, now)

    def _follow(self, epoch: int, cipher: AESGCM, seq: int, flags: int, datagram: bytes,
                body: bytes, decision: Decision, now: float) -> list[Event]:
        """Switch to `epoch`, whose authenticated frame `seq` decided it."""
        events: list[Event] = []
        old, old_cipher = self.epoch, self._cipher
        if old is not None:
            # Deliver what the old epoch still holds; its missing frames are lost.
            while self._buffer:
                events.extend(self._declare_lost_until(min(self._buffer)))
                events.extend(self._deliver_ready(now))
        held = sorted(decision.candidate.held.items()) if decision.candidate else []
        first = min(seq, held[0][0]) if held else seq
        if decision.verdict is Verdict.TAKE_BACK:
            start = decision.floor + 1       # the same stream, continuing: gaps are lost
        elif old is not None and first < self.params.reorder_window:
            start = 0   # a TX restart: its first frames count as lost if they never come
        else:
            start = first  # RX (re)joins a stream where it first hears it
        start = max(start, decision.floor + 1)
        events.extend(self._give_up_missed(None))   # of the old epoch: nothing more comes
        lo = decision.floor + 1
        # after a crash, the first frames beyond the saved mark may have been delivered
        uncertain = self._uncertain if decision.verdict is Verdict.REJOIN else 0
        self._missed = (Missed(lo, start, owed=not self._fresh,
                               placed_from=None if self._fresh else lo + uncertain)
                        if start > lo else None)
        self._fresh = False
        self._book.followed(epoch, old, self._next - 1, decision.verdict)
        pins = {epoch: cipher}
        if old is not None and old_cipher is not None and self._book.displaced == old:
            pins[old] = old_cipher   # it may come back: no flood may evict its key
        self._pin(pins)
        self.epoch, self._cipher = epoch, cipher
        self._next = self._joined_at = start
        self._floor = decision.floor
        self._buffer.clear()
        self._lost.clear()
        self._lost_set.clear()
        self._copies.clear()
        self._prejoin.clear()
        self.heartbeat_copies.clear()
        self._epoch_base = self.counters["valid"] + self.counters["duplicates"]
        self._frag.reset()
        self._recovered_frag.reset()
        self.counters["epochs"] += 1
        events.append(EpochChanged(old, epoch))
        # Of heartbeats held on probation only the newest is worth delivering: the
        # others would all reach the health watchdog at once, as stale samples.
        beats = [s for s, (_, f, _) in held if f] + ([seq] if flags else [])
        newest_beat = max(beats, default=None)
        for s, (arrival, f, d) in held:
            opened = seal.open_sealed(cipher, d, wire.HEADER_SIZE, s)
            if opened is None or s < start:  # (cannot be: it opened, and is fresh)
                continue
            self._keep_copy(s, d)
            self._buffer[s] = (arrival, [] if f and s != newest_beat
                               else self._decode_body(opened))
        self.counters["valid"] += 1
        self.last_valid_at = now
        if flags & wire.FLAG_HEARTBEAT:
            self._heartbeat_copy(seq)
        self._keep_copy(seq, bytes(memoryview(datagram)))
        items = [] if flags and seq != newest_beat else self._decode_body(body)
        if flags:
            self._learn_repeat(items)
        self._buffer[seq] = (now, items)
        events.extend(self._deliver_ready(now))
        return events

    def _pin(self, pins: dict[int, AESGCM]) -> None:
        """The followed, restored and displaced epochs' ciphers: safe from floods."""
        self._pins = pins
        self._ciphers.pin(pins)

    def _keep_copy(self, seq: int, datagram: bytes) -> None:
        """`datagram` must be compact (see `receive`): it is kept."""
        copies = self._copies
        copies[seq] = [datagram, 1]
        copies.pop(seq - self._copy_window, None)
        if len(copies) > 2 * self._copy_window:
            self._sweep_copies(seq)

    def _sweep_copies(self, seq: int) -> None:
        """Drop kept datagrams a gap left behind (their seq + window was never accepted)."""
        horizon = seq - self._copy_window
        for s in [s for s in self._copies if s <= horizon]:
            del self._copies[s]

    def _learn_repeat(self, items: list[Any]) -> None:
        """A heartbeat frame: TX's `repeat` bounds how many copies of a frame are genuine."""
        for item in items:
            try:
                rec = records.decode_item(item.item if item.__class__ is _Kept else item)
            except (records.RecordError, ValueError, TypeError, OverflowError):
                continue
            if isinstance(rec, records.Heartbeat) and 1 <= rec.repeat <= 5:
                self._repeat = rec.repeat

    def _decode_body(self, body: bytes) -> list[Any]:
        try:
            items = self._split_body(body) if self.keep_raw else cbor2.loads(body)
        except Exception:  # cbor2 raises many types; any of them means a bad body
            items = None
        if not isinstance(items, list):
            self.counters["malformed_body"] += 1
            return []
        return items

    @staticmethod
    def _split_body(body: bytes) -> Any:
        """The body's items, each with its bytes: TX's frame is an array head and the
        items' bytes one after the other (sender.py), so these are TX's own."""
        try:
            count, start = wire.read_array_head(body)
        except ValueError:   # not TX's shape: decoded as any body is, with no bytes kept
            return cbor2.loads(body)
        fp = io.BytesIO(body)
        fp.seek(start)
        decode, tell = cbor2.CBORDecoder(fp).decode, fp.tell
        items = []
        for _ in range(count):
            item = decode()
            end = tell()
            items.append(_Kept(item, body[start:end]))
            start = end
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
        self._frag.drop()
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
                    ev = self._received(item, self.epoch or 0, seq, self._frag)
                    if ev is not None:
                        events.append(ev)
            if not buffer:
                return events
            target = max(buffer) - window + 1
            if self._next >= target:
                return events
            events.extend(self._declare_lost_until(min(min(buffer), target)))

    def _received(self, item: Any, epoch: int, seq: int,
                  frag: Reassembly) -> RecordReceived | None:
        raw = None
        if item.__class__ is _Kept:
            item, raw = item
        record = self._record(item)
        if record.__class__ is records.Fragment:
            data = frag.take(record)
            if data is None:
                return None
            try:
                record = self._record(cbor2.loads(data))
            except Exception:  # any decoder error means a bad record
                record = None
                self.counters["bad_record"] += 1
            if record.__class__ is records.Fragment:  # TX never fragments a fragment
                record = None
                self.counters["bad_record"] += 1
            raw = data if raw is not None else None
        return None if record is None else RecordReceived(record, epoch, seq, raw=raw)

    def _record(self, item: Any) -> records.Record | None:
        """The record an item holds (a Fragment is not counted in `records`)."""
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
        if record.__class__ is not records.Fragment:
            self.counters["records"] += 1
        return record
