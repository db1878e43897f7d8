"""The contracts between the agents and the protocol adapters.

```
TX:  Source.take() ─► encoded records + tags ─► TxCore ─► LinkSender ─► framed tags ─► Source.framed()
     Source.carousels ─► CarouselScheduler (each within its share of the link) ─┘
RX:  LinkReceiver ─► record ─► registry: (record class, channel) ─► Sink.submit()
```

A protocol is one package under agent/ that exposes one `Adapter`, listed in
agent/protocols.py. docs/ARCHITECTURE.md has the checklist for adding one.

A source owns its queue (memory, or its own spool folder), so queue limits are
per channel and one noisy channel cannot starve another; it hands the TX core
encoded records, each with a tag when it wants to know that the record's frame
went out (to release a spool entry or an OT acknowledgement), and offers its
state as carousels that one scheduler paces. A sink takes decoded records of
its channel and owns everything from there to its IT peer.

Records RX missed and got late from TX's recovery window (agent/link/missed.py)
come with an `Arrival` other than LIVE. For protocols whose records replace
one another by key (an MQTT topic), the RX core tells a late record that a newer
one of its key already overtook (SUPERSEDED: a sink must not let it overwrite
the newer state) from one that did not (RECOVERED); a sink whose records carry
their own time (OPC UA values) compares those itself. An RX without state (a new
board) cannot place what it missed after what the board before it delivered:
those come UNPLACED, and a sink whose IT peer outlives RX (an MQTT broker's
retained store) treats them as superseded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Protocol

from agent.link.records import Record


class Arrival(Enum):
    LIVE = "live"               # in order, as it came
    RECOVERED = "recovered"     # missed, brought late; nothing newer of its key came first
    SUPERSEDED = "superseded"   # missed, brought late, after a newer record of its key
    # missed, brought late, from before this RX kept any state (a new board): an earlier
    # RX may have delivered it and newer ones, so the IT side may hold newer state
    UNPLACED = "unplaced"


class SourceState(StrEnum):
    """What a TX source is doing; crosses the diode in every heartbeat."""
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CRAWLING = "crawling"          # connected, reading the address space
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost; retrying with backoff
    REFUSED = "refused"            # the peer refused us: the log says the fix (MQTT: fatal;
                                   # OPC UA: tried again with backoff, fixed on the server)


class SinkState(StrEnum):
    """What an RX sink is doing; in the status and the metrics."""
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REFUSED = "refused"
    WAITING_MODEL = "waiting_model"  # a mirror started, no address space yet
    GROWING = "growing"              # a mirror building the nodes of TX's crawl in progress
    SERVING = "serving"


HEALTHY_SINK = (SinkState.CONNECTED, SinkState.SERVING)


@dataclass(frozen=True)
class Carousel:
    """State re-sent periodically so RX converges without asking.

    `records()` starts one round; each record is read when the scheduler takes it,
    so a round never re-sends a value older than one already given to the link.
    """
    name: str
    period: float                 # seconds between the starts of two rounds
    share: float                  # of the link's bit rate
    records: Callable[[], Iterator[bytes]]
    first_delay: float | None = None  # before the first round (default: one period)


class Source(Protocol):
    """One TX channel of one protocol."""

    @property
    def key(self) -> str:
        """"<protocol>:<channel>": the heartbeat's sources key and the counter prefix."""

    @property
    def state(self) -> SourceState: ...

    @property
    def carousels(self) -> Sequence[Carousel]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        """Up to `limit` encoded records, each with a tag (None: nothing to release).
        A record of None (dropped here, e.g. expired) still releases its tag in order."""

    def framed(self, tags: list[object]) -> None:
        """Tags of records whose frames went out; in the order they were taken."""

    def rewind(self) -> None:
        """Sends failed (the link interface is down): what was taken but not released
        is to be taken again once the link is back. Durable queues go back to their
        last release; memory queues cannot (their loss shows as send errors)."""

    def waiting(self) -> int:
        """Records queued here, not yet taken."""

    def dropped(self) -> int:
        """Records lost here so far (queue or spool overflow): the FAULT LED."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    def stats(self) -> dict[str, Any]:
        """The queue's state for the status file."""

    def tick(self) -> None:
        """Every spool fsync interval: batched fsync and the acknowledgements it releases."""

    def close(self) -> None:
        """After the last frame went out: close the queue."""


class Sink(Protocol):
    """One RX channel of one protocol."""

    @property
    def key(self) -> str: ...

    @property
    def state(self) -> SinkState: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, record: Record, now: float, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> object:
        """One record of this channel from the link; never raises on its content. `now`
        (monotonic) is when it came off the link, or for a late one when it would have
        without the wait in TX's recovery window. `raw`: the record's bytes as TX
        encoded them, once the sink asked for them (RxContext.keep_raw)."""

    def tick(self) -> None:
        """Every timer pass (20 ms)."""

    def dropped(self) -> int: ...

    def status(self) -> dict[str, Any]:
        """State and counters for the status file, the metrics and `diode status`."""

    async def on_link(self, link: LinkView) -> None:
        """Link and TX source health changed, or the periodic status tick."""


@dataclass(frozen=True)
class LinkView:
    """What a sink may know of the link, at one moment."""
    state: str                         # UP | DEGRADED | DOWN | UNKNOWN
    heartbeat_age: float | None
    tx_sources: Mapping[str, str]      # from TX's last heartbeat; "unknown" while DOWN
    tx_counters: Mapping[str, int] | None
    status: Mapping[str, Any]          # RX's whole status, for status topics


@dataclass(frozen=True)
class TxContext:
    """What a TX source gets from the agent."""
    wake: Callable[[], None]           # new records are waiting
    fail: Callable[[str], None]        # a fatal error (thread-safe); the agent stops
    # (channel, largest_record=0) -> the channel's own Spool, or None without [spool];
    # its segments fit a record of largest_record bytes
    open_spool: Callable[..., Any]
    # (name) -> that path under [spool] dir, or None without [spool]: for a source's own
    # files (the OPC UA model cache)
    data_dir: Callable[[str], Any] = lambda name: None


@dataclass(frozen=True)
class RxContext:
    fail: Callable[[str], None]
    open_spool: Callable[..., Any]     # as TxContext.open_spool
    # (folder name) -> that folder under [spool] dir, or None without [spool]: for a
    # sink's own files (the OPC UA mirror's history)
    data_dir: Callable[[str], Any] = lambda name: None
    # called by a sink that stores records as they came off the link (a spool): from
    # then on `submit` gets each record's bytes as `raw`, so it need not encode again
    keep_raw: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Adapter:
    """One protocol: its config table, record classes and factories.

    Factories import the protocol's heavy libraries only when called, so an agent
    that does not configure a protocol never imports its library.
    """
    name: str                                      # the TOML array of tables: [[name]]
    parse: Callable[[Any, str, bool], Any]         # (Table, role, spooled) -> channel config
    # (tables, configs, the [link] LinkConfig): rules across channels, and against the link
    # (a TX listener must not be on the link's side)
    check: Callable[[list[Any], list[Any], Any], None]
    source: Callable[[Any, TxContext], Source]
    sink: Callable[[Any, RxContext], Sink]
    channel_of: Callable[[Record], str | None]     # None: not one of this protocol's records
    record_types: tuple[type, ...]
    status_section: str                            # where RX's status lists its sinks
    # (channel config) -> bytes the largest record of that channel may take; RX
    # reassembles fragmented records up to the largest of every channel's
    largest_record: Callable[[Any], int] | None = None
    # (record) -> what it is the latest state of (a topic), or None: records of one key
    # that RX gets late are told apart by whether a newer one came first (`Arrival`)
    order_key: Callable[[Record], Hashable | None] | None = None
