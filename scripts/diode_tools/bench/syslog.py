"""`diode bench syslog`: end-to-end syslog throughput through the agents, against
rsyslog forwarding straight to the collector, measured in the same run.

```
ours:     sender ─ tcp ─► diode tx ══ UDP ══► diode rx ─ tcp ─► rsyslogd (collector A, file)
baseline: sender ─ tcp ─► rsyslogd (omfwd) ──────────── tcp ─► rsyslogd (collector B, file)
```

The sender writes a pre-framed burst of octet-counted RFC 5424 messages down one
TCP connection (C speed, so neither path is measured through a slow sender); the
rate is messages over the time from the first byte sent to the last line in the
collector's file. Both paths are up at once and measured in alternating rounds;
the figures are the medians. RX adds its default relay header (RFC 5424, about
90 bytes), which collector A writes too.
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from diode_tools.sim.agents import AgentPair
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_syslog import octet_stream
from diode_tools.sim.rsyslog import Rsyslog

SIZE = 100


def throughput(endpoint: str, collector: Rsyslog, burst: bytes, n: int) -> tuple[float, int]:
    """Messages per second from the first byte sent to the last line collected, and how
    many never arrived (the collector quiet for 5 s)."""
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    base = collector.count()
    t0 = time.time()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(burst)
    count, last_growth, done_at = 0, time.monotonic(), time.time()
    while count < n:
        time.sleep(0.01)
        now_count = collector.count() - base
        if now_count != count:
            count, last_growth, done_at = now_count, time.monotonic(), time.time()
        elif time.monotonic() - last_growth > 5:
            break
    return count / max(1e-9, done_at - t0), n - count


def run_syslog_bench(messages: int = 100_000, bitrate: int = 100_000_000,
                     rounds: int = 3) -> dict[str, Any]:
    """`bitrate`: the link budget TX paces to, by default the agents' own (100 Mbit/s, a
    Fast Ethernet diode). A syslog record of a 100-byte message costs about 135 bytes on
    the link, three times over (r = 3), so 100 Mbit/s allows about 30,000 msg/s and
    200 Mbit/s about 60,000. A one-way link has no flow control: above what RX takes in
    (its CPU, shared here with TX, the collectors and the sender), datagrams are lost at
    RX's socket, counted in `frames_lost` and `lost`; on this shared 2-core machine
    200 Mbit/s lost some, 100 Mbit/s none."""
    result: dict[str, Any] = {"messages": messages, "message_bytes": SIZE,
                              "link_bitrate": bitrate, "repeat": 3, "rounds": rounds,
                              "relay_header": "rfc5424"}
    burst = octet_stream(messages, SIZE)
    ours: list[float] = []
    base: list[float] = []
    with tempfile.TemporaryDirectory(prefix="diode-bench-") as tmp, \
            Rsyslog(name="collector-ours") as col_a, Rsyslog(name="collector-base") as col_b, \
            Rsyslog(name="forwarder", forward=col_b.endpoint("tcp")) as fwd:
        work = Path(tmp)
        listen = f"tcp://127.0.0.1:{free_port()}"
        pair = AgentPair(
            work, None, None, link_extra=f"bitrate = {bitrate}\nrepeat = 3",
            tx_extra=f'[[syslog]]\nname = "ot"\nlisten = ["{listen}"]\n'
                     'queue_limit = 1000000\n',
            rx_extra=f'[[syslog]]\nname = "ot"\ncollectors = ["{col_a.endpoint("tcp")}"]\n'
                     'queue_limit = 1000000\n')
        try:
            pair.start("rx")
            pair.start("tx")
            pair.wait_up()
            result["lost"] = result["rsyslog_lost"] = 0
            for _ in range(rounds):
                rate, lost = throughput(fwd.endpoint("tcp"), col_b, burst, messages)
                base.append(rate)
                result["rsyslog_lost"] += lost
                rate, lost = throughput(listen, col_a, burst, messages)
                ours.append(rate)
                result["lost"] += lost
            result["tx_rss_mb"] = pair.peak_rss_mb("tx")
            result["rx_rss_mb"] = pair.peak_rss_mb("rx")
            st = pair.status("rx") or {}
            result["frames_lost"] = st.get("counters", {}).get("lost")
            tx = pair.status("tx") or {}
            result["tx_paused"] = tx.get("counters", {}).get("syslog:ot.paused")
        finally:
            pair.close()
    result["msgs_per_s"] = round(statistics.median(ours))
    result["rsyslog_msgs_per_s"] = round(statistics.median(base))
    result["msgs_per_s_rounds"] = [round(r) for r in ours]
    result["rsyslog_msgs_per_s_rounds"] = [round(r) for r in base]
    result["ratio"] = round(result["msgs_per_s"] / max(1, result["rsyslog_msgs_per_s"]), 3)
    return result
