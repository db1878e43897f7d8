"""TX's SpoolQueue and RX's SpoolOutbox over a spool that drops for room (its bound, or a
full disk): exactly what never goes out is counted, nothing the spool dropped goes out
from their caches, nothing goes out twice or out of order, and on TX every OT
acknowledgement is given once, dropped messages included (or the OT broker's in-flight
window fills for good)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt.codec import MqttMessage
from agent.mqtt.outbox import SpoolOutbox
from agent.queues import SpoolQueue
from agent.spool import Spool
from tests.tmpfs import Filler, small_tmpfs

KEY = bytes(range(32))
MiB = 1 << 20


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Acks:
    """OT acknowledgements given, by message number."""

    def __init__(self) -> None:
        self.given: dict[int, int] = {}

    def of(self, i: int) -> Any:
        return lambda: self.given.__setitem__(i, self.given.get(i, 0) + 1)


def _item(i: int, size: int = 120) -> bytes:
    return b"%06d" % i + b"." * size


def _went_out(q: SpoolQueue[bytes], batch: list[tuple[int | None, bytes]],
              sent: list[int]) -> None:
    """The frames of these records went out."""
    q.framed([t for t, _ in batch])
    sent += [int(item[:6]) for _, item in batch]


def _check(sent: list[int], n: int) -> None:
    assert len(sent) == len(set(sent)), "a record went out twice"
    assert sent == sorted(sent), "out of order"
    assert 0 < len(sent) < n


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "2m") as where:
        yield where


def test_queue_counts_exactly_what_never_goes_out(tmp_path: Path) -> None:
    """Regression: records the pump had taken (in the sender, their frames not yet out)
    were counted as dropped although they went out, and records still in the queue's
    cache went out after the spool had dropped, and counted, them."""
    sp = Spool(tmp_path / "s", KEY, max_bytes=16 << 10, segment_bytes=2048, fsync="never")
    q: SpoolQueue[bytes] = SpoolQueue(sp, bytes, bytes, lambda item: None)
    acks, sent = Acks(), []
    in_flight: list[tuple[int | None, bytes]] = []
    n = 3000
    for i in range(n):
        q.put(_item(i), acks.of(i))
        if i % 7 == 0:
            in_flight += q.take(4)              # the pump takes a little, often
        if i % 29 == 0:                         # and now and then a frame goes out
            _went_out(q, in_flight, sent)
            in_flight = []
        if i % 50 == 0:
            q.tick()
    while batch := in_flight + q.take(100):
        _went_out(q, batch, sent)
        in_flight = []
    sp.sync()
    q.tick()
    _check(sent, n)
    assert sp.counters["dropped_oldest"] == q.dropped() == n - len(sent) > 1000
    assert acks.given == {i: 1 for i in range(n)}, "an OT acknowledgement missing or repeated"
    sp.close()


def test_queue_on_a_full_disk_acknowledges_what_it_cannot_keep(disk: Path) -> None:
    clock = Clock()
    sp = Spool(disk / "s", KEY, max_bytes=MiB, segment_bytes=32 << 10, clock=clock)
    q: SpoolQueue[bytes] = SpoolQueue(sp, bytes, bytes, lambda item: None)
    acks, sent = Acks(), []
    hog = Filler(disk / "hog")
    n = 6000
    for i in range(n):
        if i % 40 == 0:
            hog.take()                          # another writer takes every free byte
        q.put(_item(i, 200), acks.of(i))
        clock.t += 0.002
        if i % 11 == 0:
            _went_out(q, q.take(5), sent)
        if i % 25 == 0:
            q.tick()
    hog.close()
    clock.t += 2
    while batch := q.take(100):
        _went_out(q, batch, sent)
    sp.sync()
    q.tick()
    c = sp.counters
    assert c["dropped_full"] > 0 and c["full_errors"] > 0
    _check(sent, n)
    assert c["dropped_oldest"] + c["dropped_full"] == q.dropped() == n - len(sent)
    assert acks.given == {i: 1 for i in range(n)}
    sp.close()


# --- RX: the outbox, its broker stood in for ---------------------------------------------


class _Client:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, Any]] = []

    def publish_qos1(self, topic: str, payload: bytes, retain: bool, props: Any,
                     on_ack: Any) -> bool:
        self.published.append((payload, on_ack))
        return True

    def inflight(self) -> int:
        return 0  # nothing through paho's own QoS 1/2 flow here


class _Conn:
    def __init__(self) -> None:
        self.connected = False
        self.receive_maximum = 20
        self.client = _Client()
        self.what = "IT broker 'plant'"


class _Sink:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {"published": 0}
        self.conn = _Conn()

    def prepare(self, msg: MqttMessage, held: float) -> tuple[str, None]:
        return msg.topic, None


@pytest.mark.parametrize("where", ["bound", "full disk"])
def test_outbox_counts_exactly_what_the_broker_never_gets(tmp_path: Path, where: str) -> None:
    """The IT broker away, then back for a while, then away again: what the spool dropped
    never reaches it (from the cache either), what is in flight is not counted."""
    sink = _Sink()
    ctx: Any = None
    log: Filler | None = None
    if where == "bound":
        sp = Spool(tmp_path / "s", KEY, max_bytes=32 << 10, segment_bytes=2048, fsync="never")
    else:
        ctx = small_tmpfs(tmp_path / "disk", "2m")
        disk = ctx.__enter__()
        sp = Spool(disk / "s", KEY, max_bytes=MiB, segment_bytes=32 << 10)
        log = Filler(disk / "log")
        log.take(log_size := 1_400_000)         # a log file fills most of the disk
    try:
        box = SpoolOutbox(sink, sp)  # type: ignore[arg-type]
        box._kick = lambda: None  # type: ignore[method-assign]  # the test drives the drain
        conn, client = sink.conn, sink.conn.client
        delivered: list[int] = []

        def broker_acks(k: int) -> None:
            for payload, on_ack in client.published[:k]:
                delivered.append(int(payload[:6]))
                on_ack(0)
            del client.published[:k]

        n = 16_000
        for i in range(n):
            box.submit(MqttMessage("plant", "s/x", _item(i, 150)), 0.0)
            if i == 5000:
                conn.connected = True           # the broker is back
            if i == 9000:
                conn.connected = False          # and away again, what was in flight lost
                client.published.clear()
            if conn.connected or i % 500 == 0:
                box._drain()
            if conn.connected and i % 3 == 0:
                broker_acks(5)
            box.tick()
        conn.connected = True
        box.connected()
        while True:
            box._drain()
            if not client.published:
                break
            broker_acks(len(client.published))
        assert len(delivered) == len(set(delivered)) and delivered == sorted(delivered)
        c = sp.counters
        assert c["dropped_oldest"] + c["dropped_full"] == box.dropped() == n - len(delivered)
        assert 0 < len(delivered) < n and c["dropped_oldest"] > 1000
        assert where == "bound" or c["full_errors"] > 0 and log_size
        sp.close()
    finally:
        if log is not None:
            log.close()
        if ctx is not None:
            ctx.__exit__(None, None, None)
