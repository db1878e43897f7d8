"""Store-and-forward with real brokers and agent processes: nothing acknowledged is
lost to a kill -9 of TX or a 30 s IT broker outage, the spool files hold no
plaintext, tampering is reported, and `diode wipe` leaves nothing."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import Broker, BrokerOptions
from tests.integration.conftest import Diode, _env, diode_cmd

MARKER = b"PLAINTEXT-MARKER-7f3a"


def _spooled(diode: Diode, doc: dict[str, Any], role: str) -> dict[str, Any]:
    key = diode.tmp / "spool.key"
    if not key.exists():
        write_spool_key(key)
    doc["spool"] = {"dir": str(diode.tmp / f"spool-{role}"), "key_file": str(key)}
    return doc


class SeqCollector:
    """A QoS 1 subscriber with a lasting session, so the IT broker (with persistence)
    keeps what arrives for it while it reconnects; records payload sequence numbers."""

    def __init__(self, broker: Broker, topic: str, client_id: str) -> None:
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port, 10)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.seqs.append(int(msg.payload.split(b":")[0]))

    def wait_unique(self, n: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(set(self.seqs)) >= n:
                    return list(self.seqs)
            time.sleep(0.1)
        with self._lock:
            got = set(self.seqs)
        missing = sorted(set(range(n)) - got)
        raise AssertionError(f"{len(got)} of {n} arrived; first missing {missing[:10]}")

    def wait_unique_in(self, wanted: range, timeout: float) -> list[int]:
        """Every payload number in `wanted` arrived (at least once); all that arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seqs = list(self.seqs)
            missing = set(wanted) - set(seqs)
            if not missing:
                return seqs
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(wanted) - len(missing)} of {len(wanted)} in "
                                     f"{wanted} arrived; first missing {sorted(missing)[:10]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _publisher(broker: Broker, n: int, rate: float, topic: str = "s/x",
               start: int = 0) -> threading.Thread:
    """QoS 1 messages numbered start..n-1 ("<i>:..."), at `rate` per second."""
    def run() -> None:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="spool-pub")
        c.max_inflight_messages_set(100)
        c.connect(broker.host, broker.port)
        c.loop_start()
        t0 = time.monotonic()
        infos = []
        for i in range(start, n):
            delay = t0 + (i - start) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            infos.append(c.publish(topic, b"%d:" % i + MARKER + b"x" * 40, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        c.loop_stop()
        c.disconnect()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _first_occurrences(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]


def test_kill9_tx_mid_qos1_stream_loses_nothing(diode: Diode, ot_broker: Broker,
                                                it_broker: Broker) -> None:
    n = 6000
    diode.start_rx()
    tx_doc = _spooled(diode, diode.tx_doc(mqtt={"qos": 1, "topics": ["s/#"]}), "tx")
    tx = diode.start("tx", tx_doc)
    out = SeqCollector(it_broker, "s/#", "it-collector-kill")
    try:
        diode.wait_status(tx, lambda st: st["sources"]["mqtt:plant"] == "connected", 10,
                          "TX connected")
        pub = _publisher(ot_broker, n, rate=2000)
        out.wait_unique(1500, 20)
        tx.proc.kill()  # mid-stream, like a power cut of the TX process
        tx.proc.wait(5)
        time.sleep(1.0)  # the broker holds on for TX's lasting session meanwhile
        diode.start("tx", tx.config, "tx-restarted")
        pub.join(30)
        seqs = out.wait_unique(n, 40)
        duplicates = len(seqs) - len(set(seqs))
        print(f"kill -9 TX: {n} unique, {duplicates} duplicates")
        assert set(seqs) == set(range(n))
    finally:
        out.stop()


@pytest.mark.slow
def test_it_broker_down_30s_while_10000_flow(diode: Diode, ot_broker: Broker,
                                             make_broker: Callable[..., Broker]) -> None:
    n = 10_000
    it = make_broker(BrokerOptions(persistence=True), name="IT (persistent)")
    rx = diode.start("rx", _spooled(diode, diode.rx_doc(broker=it), "rx"))
    diode.start_tx(mqtt={"topics": ["s/#"]})
    out = SeqCollector(it, "s/#", "it-collector-outage")
    try:
        diode.wait_up(rx)
        time.sleep(0.5)
        it.stop()
        down = time.monotonic()
        pub = _publisher(ot_broker, n, rate=1000)  # 10 s of traffic inside the outage
        pub.join(60)
        diode.wait_status(rx, lambda st: st["sinks"]["plant"]["spool"]["records"] >= n, 20,
                          "all messages waiting in RX's spool")
        spool_files = [p for p in (diode.tmp / "spool-rx").rglob("*") if p.is_file()]
        assert spool_files and not any(MARKER in p.read_bytes() for p in spool_files), \
            "plaintext payload found in the spool files"
        time.sleep(max(0.0, 30 - (time.monotonic() - down)))
        it.start()
        seqs = out.wait_unique(n, 60)
        assert _first_occurrences(seqs) == list(range(n)), "out of order"
        st = diode.wait_status(rx, lambda st: st["sinks"]["plant"]["spool"]["records"] == 0,
                               20, "RX spool drained once the broker acknowledged")
        assert st["sinks"]["plant"]["outages"] >= 1
        print(f"IT outage: {n} delivered in order, {len(seqs) - n} duplicates")
    finally:
        out.stop()


def test_tampered_spool_is_reported_and_wipe_leaves_nothing(
        diode: Diode, ot_broker: Broker, make_broker: Callable[..., Broker]) -> None:
    it = make_broker(name="IT")
    rx_cfg = diode.write("rx.toml", _spooled(diode, diode.rx_doc(broker=it), "rx"))
    rx = diode.start("rx", rx_cfg)
    diode.start_tx(mqtt={"topics": ["s/#"]})
    diode.wait_up(rx)
    it.stop()  # keep everything in RX's spool
    _publisher(ot_broker, 300, rate=2000).join(30)
    diode.wait_status(rx, lambda st: st["sinks"]["plant"]["spool"]["records"] >= 300, 20,
                      "300 messages spooled")
    diode.stop(rx)
    segments = sorted((diode.tmp / "spool-rx" / "plant").glob("*.seg"))
    assert segments
    data = bytearray(segments[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    segments[0].write_bytes(bytes(data))
    rx2 = diode.start("rx", rx_cfg, "rx-after-tamper")
    st = diode.wait_status(rx2, lambda st: st["sinks"]["plant"]["spool"]["damaged"] >= 1, 15,
                           "damage counted")
    assert st["sinks"]["plant"]["spool"]["damaged"] >= 1
    assert "spool" in rx2.log() and ("corrupt" in rx2.log() or "damag" in rx2.log())
    diode.stop(rx2)

    done = subprocess.run(diode_cmd("wipe", "rx", "-c", str(rx_cfg), "--yes"),
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (diode.tmp / "spool.key").exists()
    left = [p for p in (diode.tmp / "spool-rx").rglob("*") if p.is_file()]
    assert left == [], left
    refused = subprocess.run(diode_cmd("wipe", "rx", "-c", str(rx_cfg)), capture_output=True,
                             text=True, env=_env(), timeout=60)
    assert refused.returncode == 2 and "--yes" in refused.stderr

