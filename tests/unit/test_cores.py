"""The TX and RX cores joined in memory by the seeded lossy channel, on a fake clock:
records of two protocols end to end with no broker, server or process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from agent.adapter import Arrival, Carousel, LinkView, SinkState, SourceState
from agent.carousel import CarouselScheduler
from agent.link import records
from agent.link.health import HealthParams, LinkHealth
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt.codec import MqttMessage, encode_mqtt
from agent.opcua.codec import OpcuaValues
from agent.rxcore import RxCore
from agent.transport.lossy import LossyChannel
from agent.txcore import TxCore

KEY = bytes(range(32))


class ListSource:
    """A source holding encoded records in a bounded list, as the adapters' queues do."""

    def __init__(self, key: str, limit: int = 1_000_000, tagged: bool = False,
                 carousels: Sequence[Carousel] = ()) -> None:
        self._key, self.limit, self.tagged = key, limit, tagged
        self._carousels = tuple(carousels)
        self.queue: list[bytes] = []
        self.next_tag = 0
        self.released: list[object] = []
        self.drops = 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def state(self) -> SourceState:
        return SourceState.CONNECTED

    @property
    def carousels(self) -> Sequence[Carousel]:
        return self._carousels

    def put(self, data: bytes) -> None:
        if len(self.queue) >= self.limit:
            self.drops += 1
        else:
            self.queue.append(data)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        out, self.queue = self.queue[:limit], self.queue[limit:]
        tags: list[object] = []
        for _ in out:
            tags.append(self.next_tag if self.tagged else None)
            self.next_tag += 1
        return list(zip(out, tags, strict=True))

    def framed(self, tags: list[object]) -> None:
        self.released.extend(tags)

    def rewind(self) -> None: ...

    def waiting(self) -> int:
        return len(self.queue)

    def dropped(self) -> int:
        return self.drops

    @property
    def counters(self) -> Mapping[str, int]:
        return {"queue_dropped": self.drops}

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self.queue)}

    def tick(self) -> None: ...

    def close(self) -> None: ...


class ListSink:
    def __init__(self, key: str) -> None:
        self._key = key
        self.got: list[Any] = []

    @property
    def key(self) -> str:
        return self._key

    @property
    def state(self) -> SinkState:
        return SinkState.CONNECTED

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, record: Any, now: float, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> None:
        self.got.append(record)

    def tick(self) -> None: ...

    def dropped(self) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {}

    async def on_link(self, link: LinkView) -> None: ...


def run(tx: TxCore, rx: RxCore, channel: LossyChannel, seconds: float,
        start: float = 0.0, step: float = 0.001) -> float:
    """Drive both cores on a fake clock; the link loses what the channel says."""
    now = start
    while now < start + seconds:
        tx.poll(now, 1e9 + now)
        for d in tx.datagrams():
            for out in channel.transmit(d):
                rx.datagram(out, now)
        tx.sent()
        rx.timer(now)
        now += step
    tx.sender.flush(now)
    for d in tx.drain(now):
        for out in channel.transmit(d):
            rx.datagram(out, now)
    rx.timer(now + 10)
    return now


def pair(sources: list[ListSource], sinks: dict[tuple[str, str], ListSink], rate: float = 1e8,
         repeat: int = 3) -> tuple[TxCore, RxCore]:
    sender = LinkSender(SenderParams(repeat=repeat, interleave=4), KEY, epoch=7 << 22)
    tx = TxCore(sender, sources, CarouselScheduler(rate, 4 * 1400), 0.0)
    rx = RxCore(LinkReceiver(ReceiverParams(), KEY), LinkHealth(HealthParams()), sinks)
    return tx, rx


def test_an_mqtt_message_and_an_opcua_value_cross_a_lossy_link() -> None:
    mqtt_src, opcua_src = ListSource("mqtt:plant"), ListSource("opcua:plant")
    mqtt_sink, opcua_sink = ListSink("mqtt:plant"), ListSink("opcua:plant")
    tx, rx = pair([mqtt_src, opcua_src], {("mqtt", "plant"): mqtt_sink,
                                          ("opcua", "plant"): opcua_sink})
    mqtt_src.put(encode_mqtt("plant", "line1/temp", b"21.5", 1, True, {"expiry": 30}))
    value = ("ns=2;s=Temp", b"\x0b\x00\x00\x00\x00\x00\x805@", 0, 133_000_000_000_000_000, None)
    opcua_src.put(records.encode(OpcuaValues("plant", False, (value,))))
    run(tx, rx, LossyChannel(seed=3, loss=0.3), seconds=0.1)
    assert mqtt_sink.got == [MqttMessage("plant", "line1/temp", b"21.5", 1, True, {"expiry": 30})]
    assert opcua_sink.got == [OpcuaValues("plant", False, (value,))]
    assert rx.counters["unrouted"] == 0


def test_a_channel_this_rx_does_not_have_is_counted_unrouted() -> None:
    src = ListSource("mqtt:other")
    tx, rx = pair([src], {("mqtt", "plant"): ListSink("mqtt:plant")})
    src.put(encode_mqtt("other", "t", b"x", 0, False, None))
    src.put(encode_mqtt("other", "t", b"y", 0, False, None))
    run(tx, rx, LossyChannel(seed=1), seconds=0.05)
    assert rx.counters["unrouted"] == 2


def test_a_flooded_source_does_not_hold_back_a_quiet_one() -> None:
    """Each pass takes one batch from every source in turn: the quiet channel's
    records go into the very first frames, whatever the flooded one holds."""
    flood, quiet = ListSource("mqtt:flood", limit=50_000), ListSource("mqtt:quiet")
    sinks = {("mqtt", "flood"): ListSink("f"), ("mqtt", "quiet"): ListSink("q")}
    # a slow link: 2 Mbit/s, so the flood cannot drain within the run
    tx, rx = pair([flood, quiet], sinks, rate=2e6)  # type: ignore[arg-type]
    for i in range(60_000):
        flood.put(encode_mqtt("flood", "f", i.to_bytes(4, "big") * 20, 0, False, None))
    for i in range(100):
        quiet.put(encode_mqtt("quiet", "q", i.to_bytes(4, "big"), 0, False, None))
    assert flood.drops == 10_000 and quiet.drops == 0
    more = tx.poll(0.0, 0.0, batch=500)
    assert more and quiet.waiting() == 0 and flood.waiting() == 49_500


def test_a_pass_takes_no_more_than_its_budget_so_a_backlog_ages_in_the_queue() -> None:
    """With a byte budget, a pass takes about that much (records of any size, at least
    one), shared between the sources; the rest stays queued, where its age is known."""
    small, big = ListSource("mqtt:small"), ListSource("mqtt:big")
    tx, _ = pair([small, big], {})
    for _ in range(10_000):
        small.put(encode_mqtt("small", "s", bytes(100), 0, False, None))
    for _ in range(20):
        big.put(encode_mqtt("big", "b", bytes(100_000), 0, False, None))
    sent_before = tx.sender.counters["bytes"]
    assert tx.poll(0.0, 0.0, budget=20_000)
    taken_small, taken_big = 10_000 - small.waiting(), 20 - big.waiting()
    assert 50 <= taken_small <= 120, taken_small  # about 10 kB of 120-byte records
    assert taken_big == 1  # one record larger than its share, then no more
    for _ in range(5):  # later passes learn the sizes: never a large overshoot
        tx.poll(0.0, 0.0, budget=20_000)
    assert 20 - big.waiting() == 6
    assert tx.sender.counters["bytes"] >= sent_before


def test_framed_tags_return_to_their_own_source_in_order() -> None:
    a, b = ListSource("mqtt:a", tagged=True), ListSource("mqtt:b", tagged=True)
    tx, rx = pair([a, b], {("mqtt", "a"): ListSink("a"), ("mqtt", "b"): ListSink("b")})
    for i in range(300):
        a.put(encode_mqtt("a", "t", bytes(200), 1, False, None))
        if i % 3 == 0:
            b.put(encode_mqtt("b", "t", bytes(200), 1, False, None))
    run(tx, rx, LossyChannel(seed=2), seconds=0.2)
    assert a.released == list(range(300))
    assert b.released == list(range(100))


def test_carousels_keep_within_their_share_and_read_each_record_when_sent() -> None:
    state = {"v": 0}

    def one_round() -> Iterator[bytes]:
        for i in range(1000):
            yield encode_mqtt("c", f"t/{i}", state["v"].to_bytes(2, "big") * 50, 0, True, None,
                              carousel=True)

    sched = CarouselScheduler(8e6, 1400)  # 1 MB/s, share 0.1: 100 kB/s
    sched.add("mqtt:c", Carousel("retained", period=1.0, share=0.1, records=one_round), 0.0)
    sent = 0
    now = 0.0
    while now < 1.5:
        for data in sched.poll(now, 100):
            sent += len(data)
        state["v"] += 1  # state changes between polls: later records carry the new value
        now += 0.01
    # the round starts at 1.0 s: in 0.5 s at most 50 kB plus one burst went out
    assert 40_000 < sent <= 50_000 + 1400 + 200
    assert sched.next_deadline(now) is not None and not sched.overruns


def test_a_round_that_outlasts_its_period_is_reported() -> None:
    sched = CarouselScheduler(8e4, 200)  # 10 kB/s, share 1.0
    sched.add("opcua:p", Carousel("model", period=0.5, share=1.0,
                                  records=lambda: iter([bytes(1000)] * 10), first_delay=0.0), 0.0)
    now = 0.0
    while now < 2.0 and not sched.overruns:
        sched.poll(now, 100)
        now += 0.01
    assert sched.overruns and sched.overruns[0].records == 10 and sched.overruns[0].took > 0.5


class SpoolSource(ListSource):
    """A source whose queue is a real spool: records leave it only once framed."""

    def __init__(self, key: str, spool: Any) -> None:
        super().__init__(key)
        from agent.queues import SpoolQueue
        self.q = SpoolQueue(spool, lambda b: b, lambda b: b, lambda b: None)

    def put(self, data: bytes) -> None:
        self.q.put(data, None)

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        return [(data, seq) for seq, data in self.q.take(limit)]

    def framed(self, tags: list[object]) -> None:
        self.released.extend(tags)
        self.q.framed(tags)

    def rewind(self) -> None:
        self.q.rewind()

    def waiting(self) -> int:
        return len(self.q)


def test_records_whose_sends_failed_stay_in_the_spool_and_go_again(tmp_path: Any) -> None:
    """A flapped interface: sends fail for a while. Nothing of what failed is released,
    and once sends work again every record arrives, none lost, and each is released once."""
    from agent.spool import Spool
    spool = Spool(tmp_path / "spool", KEY, fsync="never")
    src = SpoolSource("mqtt:plant", spool)
    sink = ListSink("mqtt:plant")
    tx, rx = pair([src], {("mqtt", "plant"): sink}, repeat=1)
    now, sent_ok, down = 0.0, True, (0.02, 0.05)
    for i in range(600):
        src.put(encode_mqtt("plant", f"t/{i}", i.to_bytes(2, "big") * 50, 1, False, None))
        if i % 20 == 0:
            now += 0.005
            sent_ok = not down[0] <= now < down[1]
            tx.poll(now, now)
            datagrams = tx.datagrams()
            if sent_ok:
                for d in datagrams:
                    rx.datagram(d, now)
                tx.sent()
            else:
                tx.failed()
    while src.waiting() or tx.sender.next_deadline() is not None:
        now += 0.005
        tx.poll(now, now)
        for d in tx.datagrams():
            rx.datagram(d, now)
        tx.sent()
    rx.timer(now + 10)
    payloads = {m.topic for m in sink.got}
    assert payloads == {f"t/{i}" for i in range(600)}  # none lost (some twice: at least once)
    assert sorted(set(src.released)) == list(range(1, 601))
    assert spool.acked_seq == 600
    spool.close()


def test_a_heartbeat_too_large_for_one_frame_still_measures_datagram_loss() -> None:
    """Many channels' counters make a heartbeat larger than a frame: its fragments keep
    the heartbeat flag, so RX still lines TX's datagram count up with its own."""
    from agent.link import records as link_records
    src = ListSource("mqtt:plant")
    tx, rx = pair([src], {("mqtt", "plant"): ListSink("mqtt:plant")})
    channel = LossyChannel(seed=5, loss=0.2)
    now = 0.0
    for beat in range(12):
        counters = {f"source:{i}.counter_with_a_long_name": beat * i for i in range(120)}
        counters["datagrams"] = tx.sender.counters["datagrams"]
        tx.heartbeat(lambda c=counters, t=now: link_records.encode(link_records.Heartbeat(
            t, 1.0, 3, c, {})), now)
        for i in range(30):
            src.put(encode_mqtt("plant", f"t/{i}", bytes(200), 0, False, None))
        now = run(tx, rx, channel, seconds=0.2, start=now)
    assert 0.1 < rx.health.datagram_loss() < 0.3
