"""Link health from a watchdog on heartbeats and loss. Sans-IO.

| state    | when                                                                 |
|----------|----------------------------------------------------------------------|
| DOWN     | no authenticated frame for `timeout` seconds (or none yet)           |
|          | (`timeout` None: three of TX's announced heartbeat intervals)        |
|          | of RX's own attention: see below                                     |
| DEGRADED | frames lost, or datagram loss above `degraded_loss`, within `window` |
| UP       | otherwise                                                            |

Datagram loss compares TX's own count of datagrams sent (carried in its
heartbeats) with what RX received over the window, so RX sees raw link
quality even while repetition still hides it from the data.

Where the two counts line up. TX reads its count just before a heartbeat's
first copy goes out; RX reads its own when the heartbeat is delivered, which
on a clean link is that first copy. But an RX that starts while TX is already
sending (a cold board, TX started first, a board swap) may join the stream
between the copies of a heartbeat: its first copy went out before RX listened,
RX's count is read at a later copy, and the datagrams in between show as
loss: one to a few datagrams against the three or so sent per heartbeat
interval on a quiet link, so DEGRADED for several seconds on a clean link.
So, per epoch, loss is measured only from a heartbeat that RX has seen
*every* copy of (`repeat` of them, so also the first), and between that one
and the heartbeats after it, which TX sent after RX was listening. Until one
such heartbeat has come, the loss reads 0 (frame loss still counts).

RX's own stalls are not the link's silence. While RX's event loop is held up
(installing a mirror of 100,000 nodes, say), datagrams wait in its socket, and
the first judgement after the stall would see an old arrival and call the link
DOWN although TX sent all along. So the driver says since when RX has been
looking (`awake_since`, the end of its last stall), and the silence is counted
from then at the earliest: the link goes DOWN only after `timeout` seconds
during which RX was reading its socket and got no authenticated frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from agent.link.records import Heartbeat


class LinkState(StrEnum):
    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


@dataclass(frozen=True)
class HealthParams:
    timeout: float | None = None
    degraded_loss: float = 0.10
    window: float = 10.0


class LinkHealth:
    def __init__(self, params: HealthParams) -> None:
        self.params = params
        self.last_heartbeat: Heartbeat | None = None
        self.last_heartbeat_at: float | None = None
        # (rx time, TX datagrams sent, RX datagrams received) at each heartbeat
        self._samples: deque[tuple[float, int, int]] = deque()
        # Heartbeats of this epoch not yet known to line up: (seq, repeat, sample).
        self._unproven: deque[tuple[int, int, tuple[float, int, int]]] = deque(maxlen=16)
        self._proven = False
        self._losses: deque[float] = deque()
        self.state = LinkState.DOWN

    def on_heartbeat(self, hb: Heartbeat, received_in_epoch: int, now: float,
                     seq: int | None = None,
                     copies: Mapping[int, Sequence[int]] | None = None) -> None:
        """A heartbeat delivered in frame `seq`, with RX's datagram count of the epoch
        at its delivery. `copies` (LinkReceiver.heartbeat_copies): per heartbeat frame,
        the copies received and RX's count at the first one, which is what TX's count
        compares with (a heartbeat delivered late, behind a gap, would read more).
        Without them, every heartbeat counts as lined up, at its delivery."""
        self.last_heartbeat = hb
        self.last_heartbeat_at = now
        seen = None if seq is None or copies is None else copies.get(seq)
        if seen is not None:
            received_in_epoch = seen[1]
        sample = (now, int(hb.counters.get("datagrams", 0)), received_in_epoch)
        if self._proven or copies is None or seq is None:
            self._samples.append(sample)
        else:
            self._unproven.append((seq, max(1, hb.repeat), sample))
            self._prove(copies)
        self._trim(now)

    def _prove(self, copies: Mapping[int, Sequence[int]]) -> None:
        """The oldest heartbeat RX has every copy of starts the loss samples; those
        after it were sent once RX listened, so they line up too."""
        for i, (seq, repeat, _) in enumerate(self._unproven):
            seen = copies.get(seq)
            if seen is not None and seen[0] >= repeat:
                self._samples.extend(s for _, _, s in list(self._unproven)[i:])
                self._unproven.clear()
                self._proven = True
                return

    def on_epoch(self) -> None:
        """Counters restart with a new TX epoch; old samples no longer compare."""
        self._samples.clear()
        self._unproven.clear()
        self._proven = False

    def on_lost(self, now: float) -> None:
        self._losses.append(now)

    def datagram_loss(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        _, sent0, got0 = self._samples[0]
        _, sent1, got1 = self._samples[-1]
        sent = sent1 - sent0
        if sent <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - (got1 - got0) / sent))

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.last_heartbeat_at is None else now - self.last_heartbeat_at

    @property
    def timeout(self) -> float:
        if self.params.timeout is not None:
            return self.params.timeout
        hb = self.last_heartbeat
        return 3 * (hb.interval if hb is not None and hb.interval > 0 else 1.0)

    def evaluate(self, now: float, last_valid_at: float | None,
                 awake_since: float | None = None) -> LinkState:
        """The state at `now`; sets `state` and returns it. `awake_since`: when RX's last
        stall ended (None: it has not stalled), so silence before it does not count."""
        self._trim(now)
        silent_since = last_valid_at
        if last_valid_at is not None and awake_since is not None:
            silent_since = max(last_valid_at, awake_since)
        if silent_since is None or now - silent_since >= self.timeout:
            self.state = LinkState.DOWN
        elif self._losses or self.datagram_loss() > self.params.degraded_loss:
            self.state = LinkState.DEGRADED
        else:
            self.state = LinkState.UP
        return self.state

    def _trim(self, now: float) -> None:
        horizon = now - self.params.window
        while len(self._samples) > 2 and self._samples[1][0] <= horizon:
            self._samples.popleft()
        while self._losses and self._losses[0] <= horizon:
            self._losses.popleft()
