"""Which epoch RX follows, and what it remembers of the epochs it followed. Sans-IO.

An epoch is one TX run: `unix ms << 22 | 22 random bits`, chosen by TX at start
from a clock nobody may trust (a Pi has no RTC; the OT side may have no NTP), so
a genuine new TX can have a *smaller* epoch than the one before it. The
attacker we design against sits on the link: holds no key, so cannot forge a
frame, but records every frame and can send any of them again, any number of
times, in any order, at the original pace or any other, and can send garbage.

What RX promises against that attacker, at any time, across RX restarts:

- a fresh genuine frame of the epoch RX follows is never dropped or held back
  because of injected packets;
- a frame RX delivered (epoch, seq) is never delivered again;
- only authenticated frames change what RX follows (the receiver opens a frame
  before it asks anything here), and a frame RX already had changes nothing.

A frame is *fresh* if RX has not had it. Per epoch it followed, RX keeps the
highest seq it handled (delivered or given up as lost); that memory
(`EpochMemory`: the last `MEMORY_EPOCHS` epochs, which one was followed, and the
newest epoch ever followed) is plain data that the driver saves in RX's state
file and hands back at start, so a replay of anything RX had before a restart
is known for what it is. Authenticated frames RX does not follow are counted
`stale_epoch` (an epoch on probation, held) or `replayed` (RX had it).

| authenticated frame (epoch E, seq s)                  | what RX does                               |
|-------------------------------------------------------|--------------------------------------------|
| E followed, s fresh                                   | delivers it; never waits for anything else |
| E remembered, s <= its high-water mark                | `replayed`, whatever the time or silence   |
| E followed before the restart (state file), s fresh   | follows E again, joining at s              |
| E newer than any epoch RX ever followed, s fresh      | follows E at once (a TX restart)           |
| E the epoch the followed one replaced in this run     | follows E again after 2 fresh frames of it |
| any other E, s fresh (older than the newest: a TX     | holds it (`stale_epoch`): follows E once   |
| whose clock is behind, or a replay RX cannot place)   | the followed epoch has had no fresh frame  |
|                                                       | for `takeover` s and E's fresh frames span |
|                                                       | `takeover` s; then delivers what it held   |

Why these, in the attacker's terms:

- A recording of an epoch RX followed is worthless: each frame in it is at or
  below the high-water mark, and stays so after restarts.
- An older epoch never replaces a live one: the followed epoch must be silent
  (no *fresh* frame: replayed copies do not count) for `takeover` seconds. A
  single replayed datagram, or a burst, is not enough either: the candidate's
  fresh frames must span `takeover` seconds.
- If a replay does win during a silence, the genuine epoch is not retired: it
  comes back at its second fresh frame (the "replaced in this run" row), and
  the loser is then an ordinary candidate again.
- A new TX with its clock behind is followed `takeover` seconds after its first
  frame, once the old TX is silent (it is: it was swapped out); what it sent
  meanwhile is held (up to `CANDIDATE_FRAMES` frames) and delivered.

What remains possible, and why (no back channel means freshness cannot be proven):

- Frames RX never had can be replayed to it and are delivered once, as if late,
  when RX cannot tell them from a live stream: a complete recording of an epoch
  RX never followed (from before RX first ran, or forgotten beyond
  `MEMORY_EPOCHS`), played while the genuine TX is silent for `takeover`
  seconds; or frames of the followed epoch sent while RX was down, replayed
  before the genuine TX's next frame reaches the restarted RX (the frames RX
  missed are then delivered late from TX's recovery window anyway: missed.py). An RX with no
  state file (or a new RX board) has no memory: whatever authenticates first is
  followed, and a newer epoch replaces it at once.
- A replayed epoch newer than every epoch RX followed is followed at once. That
  needs a recording RX never saw with a bigger epoch: RX must have been down, or
  without memory, while it ran. The genuine epoch, if older, comes back at its
  second fresh frame.
- After a crash or power cut (not a clean stop), the driver's last save may be
  up to its save interval behind: frames delivered in that interval can be
  replayed and delivered again, once, if they reach RX before the genuine TX's
  next frame does.
- Flooding RX with garbage or replays costs RX CPU; `ciphers.py` keeps that cost
  at the price of garbage, but a flood large enough to fill RX's socket buffer
  still loses genuine datagrams in the kernel, before RX sees them.
- Recorded copies of the last frames can be sent again to fill each frame up to
  the `repeat` copies TX announced, which makes the datagram-loss figure look as
  if those copies had arrived (the copies are byte-identical by design, so
  nothing tells them apart). Frames lost in every copy still count as lost, and
  forged datagrams count as `auth_failed` and mask nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MEMORY_EPOCHS = 64        # epochs remembered (and saved) with their high-water marks
MAX_CANDIDATES = 4        # epochs on probation at once
CANDIDATE_FRAMES = 512    # frames held per candidate until it is followed
TAKE_BACK_FRAMES = 2      # fresh frames that bring back the epoch a switch replaced
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class EpochMemory:
    """What RX remembers of epochs, as plain data for its state file.

    `seen` holds (epoch, highest seq handled) pairs, least recently followed
    first; `current` is the epoch followed (one of `seen`); `newest` the biggest
    epoch ever followed (kept even when its entry leaves `seen`); `uncertain`
    how many frames of `current` beyond its mark RX may have delivered after
    this was saved (0 when saved at a clean stop; see agent/link_state.py).
    """

    link_id: int
    current: int | None = None
    newest: int | None = None
    seen: tuple[tuple[int, int], ...] = ()
    uncertain: int = 0

    VERSION = 1

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "link_id": self.link_id, "current": self.current,
                "newest": self.newest, "seen": [[e, h] for e, h in self.seen],
                "uncertain": self.uncertain}

    @classmethod
    def from_dict(cls, data: Any) -> EpochMemory:
        """Parse what `to_dict` made; ValueError naming what is wrong otherwise."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != cls.VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")

        def u64(v: Any, what: str, lo: int = 0) -> int:
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= _U64:
                raise ValueError(f"{what}: expected an integer {lo}..2^64-1, got {v!r}")
            return v

        link_id = u64(data.get("link_id"), "link_id")
        raw_seen = data.get("seen")
        if not isinstance(raw_seen, list):
            raise ValueError("seen: expected a list of [epoch, seq] pairs")
        seen: dict[int, int] = {}
        for pair in raw_seen:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"seen: expected [epoch, seq], got {pair!r}")
            epoch = u64(pair[0], "seen epoch")
            seen.pop(epoch, None)
            seen[epoch] = u64(pair[1], "seen seq", lo=-1)
        current = data.get("current")
        if current is not None:
            current = u64(current, "current")
            if current not in seen:
                raise ValueError("current: not among the seen epochs")
        newest = data.get("newest")
        newest = None if newest is None else u64(newest, "newest")
        if seen:
            newest = max(newest or 0, max(seen))
        pairs = tuple(seen.items())[-MEMORY_EPOCHS:]
        if current is not None and current not in dict(pairs):
            pairs = pairs[1:] + ((current, seen[current]),)
        return cls(link_id, current, newest, pairs, u64(data.get("uncertain", 0), "uncertain"))


class Verdict(Enum):
    STALE = "stale"          # RX had this frame: `replayed`
    HOLD = "hold"            # held on probation: `stale_epoch`
    REJOIN = "rejoin"        # the epoch followed before a restart, again
    NEW = "new"              # follow an epoch not followed in this run
    TAKE_BACK = "take_back"  # the epoch the last switch replaced comes back


@dataclass
class Candidate:
    """An epoch on probation: what it sent, held until it is followed."""

    first_at: float
    last_at: float
    floor: int                # highest seq RX had of it before (-1: none)
    held: dict[int, tuple[float, int, bytes]] = field(default_factory=dict)
    fresh: int = 0            # distinct fresh seqs heard
    high: int = -1            # highest seq heard

    def note(self, seq: int, flags: int, datagram: bytes, now: float) -> bool:
        """Take one authenticated frame; True if it was fresh."""
        if seq in self.held or (len(self.held) >= CANDIDATE_FRAMES and seq <= self.high):
            return False
        self.fresh += 1
        self.high = max(self.high, seq)
        self.last_at = now
        if len(self.held) < CANDIDATE_FRAMES:
            # A copy: a driver's datagram may sit in a much larger allocation
            # (recv(65535), shrunk in place), which holding it would pin.
            self.held[seq] = (now, flags, bytes(memoryview(datagram)))
        return True


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    floor: int = -1                    # highest seq of the epoch RX had before (-1: none)
    candidate: Candidate | None = None  # frames held for it, to deliver when followed


_STALE = Decision(Verdict.STALE)


class EpochBook:
    """The rules of the module docstring over authenticated frames of epochs RX
    does not follow right now. The receiver keeps the followed epoch's own state
    (what was delivered, the reorder buffer) and tells the book when it switches."""

    def __init__(self, takeover: float, memory: EpochMemory | None = None) -> None:
        self.takeover = takeover
        self.seen: OrderedDict[int, int] = OrderedDict(memory.seen if memory else ())
        self.newest = memory.newest if memory else None
        self.restored = memory.current if memory else None  # until followed again or replaced
        self.displaced: int | None = None
        self.candidates: dict[int, Candidate] = {}

    def judge(self, epoch: int, seq: int, flags: int, datagram: bytes, now: float,
              quiet_since: float) -> Decision:
        """An authenticated frame of `epoch`, which RX does not follow now.

        `quiet_since`: when the followed epoch last had a fresh frame (or, with none
        yet, when RX started listening).
        """
        floor = self.seen.get(epoch, -1)
        if seq <= floor:
            return _STALE
        if epoch == self.restored:
            return Decision(Verdict.REJOIN, floor)
        if self.newest is None or epoch > self.newest:
            return Decision(Verdict.NEW, floor)
        cand = self._candidate(epoch, floor, now)
        if not cand.note(seq, flags, datagram, now):
            return Decision(Verdict.HOLD)
        if epoch == self.displaced:
            if cand.fresh >= TAKE_BACK_FRAMES:
                return Decision(Verdict.TAKE_BACK, floor, cand)
        elif (cand.fresh >= 2 and now - quiet_since >= self.takeover
              and now - cand.first_at >= self.takeover):
            return Decision(Verdict.NEW, floor, cand)
        return Decision(Verdict.HOLD)

    def followed(self, epoch: int, old: int | None, old_high: int, verdict: Verdict) -> None:
        """The receiver now follows `epoch`; `old` (None: nothing in this run) was
        followed up to `old_high`."""
        if old is not None:
            self.seen[old] = max(self.seen.get(old, -1), old_high)
        self.seen[epoch] = self.seen.get(epoch, -1)
        self.seen.move_to_end(epoch)
        while len(self.seen) > MEMORY_EPOCHS:
            self.seen.popitem(last=False)
        self.newest = epoch if self.newest is None else max(self.newest, epoch)
        # The loser of a take-back gets no privilege: it was most likely a replay.
        self.displaced = old if verdict is not Verdict.TAKE_BACK else None
        self.restored = None
        self.candidates.pop(epoch, None)

    def memory(self, link_id: int, followed: int | None, high: int | None) -> EpochMemory:
        seen = self.seen
        if followed is not None and high is not None and high > seen.get(followed, -1):
            seen[followed] = high
        current = followed if followed is not None else self.restored
        return EpochMemory(link_id, current, self.newest, tuple(seen.items()))

    def _candidate(self, epoch: int, floor: int, now: float) -> Candidate:
        # A candidate silent for long is forgotten (it starts its probation again):
        # probation means a continuing stream, not two frames an hour apart.
        idle = max(10.0, 3 * self.takeover)
        cand = self.candidates.get(epoch)
        if cand is not None and now - cand.last_at <= idle:
            return cand
        for e in [e for e, c in self.candidates.items() if now - c.last_at > idle]:
            del self.candidates[e]
        if len(self.candidates) >= MAX_CANDIDATES:
            # The epoch a switch replaced keeps its place: it may be the genuine one.
            others = [e for e in self.candidates if e != self.displaced]
            del self.candidates[min(others, key=lambda e: self.candidates[e].last_at)]
        cand = self.candidates[epoch] = Candidate(now, now, floor)
        return cand
