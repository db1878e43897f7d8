"""MQTT end to end over the serial transport, through a linked pseudo-terminal pair.

```
paho ─► OT Mosquitto ─► diode tx ─► /dev/pts/A ══ socat ══ /dev/pts/B ─► diode rx ─► IT Mosquitto ─► collector
```

Both agents open their port by path, as they open /dev/ttyAMA0 on a board. A
single `openpty` pair cannot do that (the master has no path), so `socat`
links two ptys and gives each a stable symlink. socat's ptys do not enforce a
baud rate; TX still paces at the configured 115,200 baud.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from diode_tools.sim.mosquitto import Broker, free_port
from tests.integration.conftest import Collector, Diode, publish_all, wait_until

pytestmark = pytest.mark.timeout(120)

BAUD = 115_200


def _socat() -> str:
    """Path of socat, installing it with apt-get if missing; fails (never skips) without it."""
    found = shutil.which("socat")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        done = subprocess.run([apt, "install", "-y", "socat"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("socat")
        if found:
            return found
        pytest.fail(f"socat missing and `apt-get install -y socat` failed:\n{done.stderr[-2000:]}")
    pytest.fail("socat is needed to link two pseudo-terminals for the serial test; install it "
                "with `apt-get install -y socat` (scripts/setup.sh does this)")


@pytest.fixture
def pty_link(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Two pty paths joined by socat, like the two ends of a null-modem cable."""
    tx_end, rx_end = tmp_path / "ttyTX", tmp_path / "ttyRX"
    log_path = tmp_path / "socat.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [_socat(), "-d", "-d", f"pty,raw,echo=0,link={tx_end}",
             f"pty,raw,echo=0,link={rx_end}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_until(lambda: proc.poll() is not None or
                   b"starting data transfer loop" in log_path.read_bytes(), 10, "socat ptys")
        assert proc.poll() is None, f"socat exited {proc.returncode}: {log_path.read_text()}"
        assert tx_end.is_symlink() and rx_end.is_symlink()
        yield str(tx_end), str(rx_end)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_1000_messages_over_a_serial_line_arrive_intact_and_in_order(
        diode: Diode, ot_broker: Broker, it_broker: Broker,
        collector: Callable[..., Collector], pty_link: tuple[str, str]) -> None:
    tx_port, rx_port = pty_link
    # Two copies of each frame: the receiver drops the duplicates.
    serial = {"transport": "serial", "baudrate": BAUD, "repeat": 2}
    rx = diode.start_rx(link={**serial, "serial_port": rx_port})
    tx = diode.start_tx(link={**serial, "serial_port": tx_port, "heartbeat_interval": 1.0},
                        mqtt={"carousel_period": 2.0})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)

    rng = random.Random(115200)
    plan = [(f"serial/{rng.randrange(20):02d}", rng.randbytes(rng.randint(1, 64)), 1,
             rng.random() < 0.2) for _ in range(1000)]
    t0 = time.monotonic()
    publish_all(ot_broker.host, ot_broker.port, plan)
    got = sub.wait_count(len(plan), "serial/", timeout=60)
    took = time.monotonic() - t0
    time.sleep(0.5)
    got = sub.data("serial/")

    want_by: dict[str, list[tuple[bytes, bool]]] = defaultdict(list)
    got_by: dict[str, list[tuple[bytes, bool]]] = defaultdict(list)
    for t, p, _, r in plan:
        want_by[t].append((p, r))
    for m in got:
        got_by[m.topic].append((m.payload, m.retain))
    assert len(got) == len(plan)
    assert got_by == want_by

    st = diode.wait_status(rx, lambda s: s["counters"]["records"] > 0, 5, "counters")
    assert st["link_state"] == "UP"
    assert st["counters"]["lost"] == 0
    assert st["counters"]["auth_failures"] == 0
    assert st["counters"]["duplicates"] > 0  # repeat = 2 really sent copies
    assert "serial" in rx.log() and "serial" in tx.log()
    diode.stop(tx)
    diode.stop(rx)
    print(f"1,000 messages over serial at {BAUD} baud in {took:.1f} s")


def test_garbage_on_the_line_is_counted_in_status_and_metrics(
        diode: Diode, pty_link: tuple[str, str]) -> None:
    """Noise on a serial line (a loose wire, another device's output) reaches RX as
    bytes that do not deframe: they are counted where a technician looks."""
    tx_port, rx_port = pty_link
    metrics_port = free_port()
    doc = diode.rx_doc(link={"transport": "serial", "baudrate": BAUD, "serial_port": rx_port})
    doc["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    rx = diode.start("rx", doc)
    diode.wait_status(rx, lambda s: "transport" in s, 10, "RX status")
    rng = random.Random(7)
    with open(tx_port, "wb", buffering=0) as line:
        for _ in range(50):
            # COBS frames end at a zero byte: random bytes between zeros are frames that
            # fail their CRC or their stuffing
            line.write(bytes(rng.randrange(1, 256) for _ in range(rng.randint(5, 200))) + b"\0")
    st = diode.wait_status(
        rx, lambda s: s["transport"].get("crc_errors", 0) + s["transport"].get(
            "framing_errors", 0) >= 40, 10, "framing and CRC errors counted")
    assert st["transport"]["bytes_received"] > 0 and st["counters"]["records"] == 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    assert b'diode_transport_total{counter="crc_errors"}' in text


def test_the_gap_wait_follows_the_copy_spacing_on_a_slow_line() -> None:
    from agent.config import LinkConfig
    serial = LinkConfig(transport="serial", key_file=Path("k"), baudrate=BAUD)
    assert 2.5 < serial.gap_wait < 3.5  # copies of a frame span about 2 s at 115,200 baud
    assert LinkConfig(key_file=Path("k")).gap_wait == 0.5  # UDP at 100 Mbit/s: the floor
    assert LinkConfig(transport="serial", key_file=Path("k"), baudrate=BAUD,
                      reorder_timeout=0.7).gap_wait == 0.7  # a configured value wins
    slow = LinkConfig(transport="serial", key_file=Path("k"), baudrate=9600, repeat=2)
    assert slow.gap_wait > 10
