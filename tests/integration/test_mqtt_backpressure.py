"""An IT broker that stalls with its connection open (overloaded, swapping, SIGSTOP):
RX must not buffer without bound, and must count what it cannot keep."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from agent.mqtt.connection import WRITE_BACKLOG
from diode_tools.sim.mosquitto import Broker
from tests.integration.conftest import Collector, Diode, publish_all

MakeCollector = Callable[..., Collector]

N, SIZE, QUEUE_LIMIT = 40_000, 2_000, 2_000  # 80 MB through the link, 4 MB may wait


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_stalled_it_broker_bounds_rx_memory_and_counts_drops(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    rx = diode.start_rx(mqtt={"queue_limit": QUEUE_LIMIT})
    diode.start_tx(mqtt={"qos": 0}, link={"bitrate": 200_000_000})
    out = collector(it_broker, ["b/#", "probe/#"])
    diode.wait_ready(out)
    baseline = _rss_mb(rx.pid)
    it_pid = it_broker.pid
    assert it_pid is not None
    os.kill(it_pid, signal.SIGSTOP)
    try:
        publish_all(ot_broker.host, ot_broker.port,
                    [("b/x", b"%08d" % i + b"\0" * (SIZE - 8), 0, False) for i in range(N)])
        st = diode.wait_status(rx, lambda s: s["counters"]["records"] >= N, 60,
                               "every message over the link")
        grown = _rss_mb(rx.pid) - baseline
        st = diode.wait_status(rx, lambda s: s["sinks"]["plant"]["queue_dropped"] > 0, 5,
                               "drops counted")
        # Without a bound RX held all the broker did not take (220 MB of RSS for
        # 120 MB of messages, in paho's queue); now at most the write backlog and
        # the queue (with Python's overhead per message) wait.
        assert grown < WRITE_BACKLOG / 2**20 + 25, f"RX grew by {grown:.0f} MB"
        assert st["sinks"]["plant"]["state"] == "connected"
    finally:
        os.kill(it_pid, signal.SIGCONT)
    out.wait_for(lambda msgs: any(m.payload.startswith(b"%08d" % (N - 1)) for m in msgs), 30,
                 "the newest message")
    seen = [int(m.payload[:8]) for m in out.snapshot() if m.topic == "b/x"]
    assert seen == sorted(seen), "order kept"
    dropped = diode.wait_status(rx, lambda s: True, 5, "status")["sinks"]["plant"][
        "queue_dropped"]
    assert len(seen) + dropped == N, (len(seen), dropped)
