"""TX's own warnings and errors cross the link, rate-limited, and RX logs and keeps them."""

from __future__ import annotations

import logging

import pytest

from agent.carousel import CarouselScheduler
from agent.link import records
from agent.link.health import HealthParams, LinkHealth
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.rxcore import RxCore
from agent.status import render
from agent.transport.lossy import LossyChannel
from agent.txcore import TxCore
from agent.txlog import TxLog, TxLogHandler, TxLogSource
from tests.unit.test_cores import KEY, ListSource, run


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logger(handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger("diode.test-txlog")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg


def test_only_warnings_and_up_and_at_most_rate_a_minute() -> None:
    clock = Clock()
    handler = TxLogHandler(rate=5, clock=clock)
    lg = _logger(handler)
    lg.info("not this one")
    for i in range(12):
        lg.warning("w%d", i)
    assert [r.message for r in handler.queue] == ["w0", "w1", "w2", "w3", "w4"]
    assert handler.counters == {"logged": 5, "suppressed": 7, "overflow": 0}
    clock.now = 12.0  # one token back (5 a minute)
    lg.error("later")
    last = handler.queue[-1]
    assert (last.message, last.level, last.suppressed) == ("later", logging.ERROR, 7)
    for _ in range(3):
        lg.warning("again")  # suppressed: no token left
    clock.now = 24.0
    handler.flush_suppressed()  # nothing came since: one record says how many went
    assert handler.queue[-1].suppressed == 3 and "3 more" in handler.queue[-1].message
    handler.flush_suppressed()
    assert handler.queue[-1].suppressed == 3 and len(handler.queue) == 7


def test_an_exception_is_named_and_a_long_message_cut() -> None:
    handler = TxLogHandler()
    lg = _logger(handler)
    try:
        raise OSError(5, "I/O error")
    except OSError:
        lg.exception("send failed")
    lg.warning("x" * 5000)
    assert handler.queue[0].message == "send failed (OSError: [Errno 5] I/O error)"
    assert len(handler.queue[1].message) == 1000


@pytest.mark.parametrize("fields", [[9, 1.0, "40", "l", "m", 0], [9, 1.0, 40, "l", b"m", 0],
                                    [9, 1.0, 40, "l", "m", -1], [9, "t", 40, "l", "m", 0]])
def test_malformed_tx_log_records_are_record_errors(fields: list[object]) -> None:
    with pytest.raises(records.RecordError):
        records.decode_item(fields)


def test_tx_log_crosses_beside_a_flood_and_rx_logs_it_prefixed(
        caplog: pytest.LogCaptureFixture) -> None:
    handler = TxLogHandler()
    flood = ListSource("mqtt:flood")
    from agent.mqtt.codec import encode_mqtt
    for i in range(20_000):
        flood.put(encode_mqtt("flood", "f", i.to_bytes(4, "big") * 25, 0, False, None))
    sender = LinkSender(SenderParams(repeat=2, interleave=4), KEY, epoch=7 << 22)
    tx = TxCore(sender, [flood, TxLogSource(handler)], CarouselScheduler(1e8, 5600), 0.0)
    rx = RxCore(LinkReceiver(ReceiverParams(), KEY), LinkHealth(HealthParams()), {})
    _logger(handler).error("OT broker 'plant' (10.0.0.10:1883): connection lost")
    with caplog.at_level(logging.WARNING, logger="diode.tx-log"):
        # the first pass carries it, whatever the flood holds
        tx.poll(0.0, 0.0, batch=100)
        for d in tx.datagrams():
            rx.datagram(d, 0.0)
        tx.sender.flush(0.0)
        for d in tx.drain(0.0):
            rx.datagram(d, 0.0)
    assert rx.counters["tx_log"] == 1 and flood.waiting() > 19_000
    (entry,) = rx.tx_log
    assert entry["level"] == "ERROR" and entry["logger"] == "diode.test-txlog"
    assert "TX: diode.test-txlog: OT broker 'plant' (10.0.0.10:1883): connection lost" in \
        caplog.text
    text = render({"role": "rx", "time": 0, "tx_log": list(rx.tx_log)}, 0)
    assert "TX log" in text and "ERROR diode.test-txlog: OT broker 'plant'" in text


def test_tx_log_records_survive_a_lossy_link() -> None:
    handler = TxLogHandler()
    sender = LinkSender(SenderParams(repeat=3, interleave=4), KEY, epoch=7 << 22)
    tx = TxCore(sender, [TxLogSource(handler)], CarouselScheduler(1e8, 5600), 0.0)
    rx = RxCore(LinkReceiver(ReceiverParams(), KEY), LinkHealth(HealthParams()), {})
    lg = _logger(handler)
    for i in range(20):
        lg.warning("w%d", i)
    run(tx, rx, LossyChannel(seed=4, loss=0.2), seconds=0.05)
    assert [e["message"] for e in rx.tx_log] == [f"w{i}" for i in range(20)]
    assert isinstance(records.decode(records.encode(TxLog(1.0, 30, "a", "b", 2))), TxLog)
