"""A full disk under the agents, as processes: TX's spool and RX's spool each on a small
tmpfs of the test's own, smaller than their max_bytes, and for a while filled to the last
byte by another writer. OT traffic keeps coming all along.

The agent keeps running and its status file keeps being written; `dropped_oldest`
grows, the FAULT LED (simulated) blinks, the spool reports `disk_full` while the other
writer holds the disk; every OT message reaches TX (dropped QoS 1 messages are
acknowledged too, or the OT broker's in-flight window would fill); and in the end what
IT got plus what the spool counted as dropped is exactly what was published. Once the
backlog drains (TX) or the broker returns (RX), later messages all arrive. The log
warns once at start that max_bytes exceeds the free space, and once per full-disk
episode (not per batch), each with its fix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import Broker, BrokerOptions
from tests.integration.conftest import Agent, Diode, wait_until
from tests.integration.test_spool_e2e import SeqCollector, _first_occurrences, _publisher
from tests.tmpfs import Filler, small_tmpfs

# root: the test's own tmpfs (mount); slow: about 20 s each
pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Requested before `diode`, so it is unmounted after the agents are gone."""
    with small_tmpfs(tmp_path / "disk", "1m") as where:
        yield where


MAX_BYTES = 64 << 20
FULL = "its file system is full"


def check_full_disk_log(agent: Agent, episodes: int) -> None:
    """The start-up warning (max_bytes over the free space) once, with its fix; the full
    disk's warning, with its fix, once per episode the spool counted, not per batch."""
    text = agent.log()
    start = [ln for ln in text.splitlines() if "may grow by" in ln]
    assert len(start) == 1, start
    assert f"[spool] max_bytes {MAX_BYTES / 1e6:.1f} MB each" in start[0], start[0]
    assert "only" in start[0] and "Fix: lower [spool] max_bytes to" in start[0], start[0]
    full = [ln for ln in text.splitlines() if FULL in ln]
    assert 1 <= episodes <= 10 and len(full) == episodes, (episodes, full[:3], len(full))
    assert all("Fix: free space on that file system, or lower [spool] max_bytes" in ln
               for ln in full), full[0]


def _on_disk(diode: Diode, doc: dict[str, Any], disk: Path) -> dict[str, Any]:
    key = diode.tmp / "spool.key"
    if not key.exists():
        write_spool_key(key)
    # far more than the 1 MB disk: the agent warns at start, with the fix
    doc["spool"] = {"dir": str(disk / "spool"), "key_file": str(key), "fsync_interval_ms": 10,
                    "max_bytes": MAX_BYTES}
    doc["board"] = {"leds": "sim"}
    return doc


class Watch:
    """Samples an agent's status file in the background: status times, the spool's stats,
    the FAULT LED's pattern."""

    def __init__(self, agent: Agent, spool: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.agent, self.spool = agent, spool
        self.samples: list[tuple[float, dict[str, Any], str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            st = self.agent.status()
            if st is None:
                continue
            try:
                sp = self.spool(st)
            except (KeyError, TypeError):
                continue
            fault = ((st.get("board") or {}).get("leds") or {}).get("fault", "?")
            self.samples.append((float(st["time"]), sp, fault))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self, label: str) -> None:
        """The status kept coming, the drops only grew, the FAULT LED and disk_full showed."""
        times = [t for t, _, _ in self.samples]
        assert len(set(times)) > 20, f"{label}: the status file stopped being written: {times[-5:]}"
        assert all(b >= a for a, b in zip(times, times[1:], strict=False))
        drops = [sp["dropped_oldest"] for _, sp, _ in self.samples]
        assert drops == sorted(drops) and drops[-1] > 0, f"{label}: no drops seen: {drops[-5:]}"
        faults = {f for _, _, f in self.samples}
        assert faults - {"off", "?"}, f"{label}: the FAULT LED never showed it: {faults}"
        assert any(sp["disk_full"] for _, sp, _ in self.samples), f"{label}: never disk_full"


def _fill_meanwhile(disk: Path, start: float, hold: float) -> threading.Thread:
    """Another writer takes every free byte of the disk after `start` s, for `hold` s."""
    def run() -> None:
        time.sleep(start)
        hog = Filler(disk / "hog")
        try:
            hog.take()
            time.sleep(hold)
        finally:
            hog.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_tx_spool_on_a_full_disk_keeps_flowing(small_disk: Path, diode: Diode,
                                               make_broker: Callable[..., Broker],
                                               it_broker: Broker) -> None:
    # a plant broker that keeps few QoS 1 messages in flight, as a default Mosquitto does
    ot = make_broker(BrokerOptions(max_inflight_messages=50), name="OT")
    n = 16_000
    diode.start_rx()
    tx = diode.start("tx", _on_disk(diode, diode.tx_doc(
        broker=ot, link={"bitrate": 1_000_000},          # about 1500 messages/s get through
        mqtt={"qos": 1, "topics": ["s/#"]}), small_disk))
    out = SeqCollector(it_broker, "s/#", "it-collector-tx-full")
    try:
        diode.wait_status(tx, lambda st: st["sources"]["mqtt:plant"] == "connected", 10,
                          "TX connected")
        watch = Watch(tx, lambda st: st["queues"]["mqtt:plant"]["spool"])
        hog = _fill_meanwhile(small_disk, 3.0, 2.0)
        pub = _publisher(ot, n, rate=4000)              # far faster than the link
        pub.join(60)
        hog.join(10)
        # every OT message reached TX: dropped ones were acknowledged too
        st = diode.wait_status(tx, lambda st: st["counters"]["mqtt:plant.received"] >= n, 30,
                               "TX received every OT message")
        st = diode.wait_status(tx, lambda st: st["queues"]["mqtt:plant"]["spool"]["records"] == 0
                               and st["queue"]["queued"] == 0, 60, "TX's backlog drained")
        sp = st["queues"]["mqtt:plant"]["spool"]
        lost = sp["dropped_oldest"] + sp["dropped_full"]

        def exact() -> bool:
            return len(set(out.seqs) & set(range(n))) + lost == n
        wait_until(exact, 20, f"IT to have all TX sent ({lost} dropped)")
        watch.stop()
        watch.check("TX")
        got = set(out.seqs)
        assert _first_occurrences([s for s in out.seqs if s < n]) == sorted(got & set(range(n)))
        print(f"TX on a full disk: {n} published, {len(got)} delivered, dropped_oldest "
              f"{sp['dropped_oldest']}, dropped_full {sp['dropped_full']}, full episodes "
              f"{sp['disk_full_episodes']}, bound {sp['limit_bytes'] / 1e6:.2f} MB")
        assert sp["dropped_oldest"] > 0 and sp["limit_bytes"] < 1 << 20
        check_full_disk_log(tx, sp["disk_full_episodes"])
        # the backlog drained: what comes now all arrives
        _publisher(ot, n + 500, rate=400, start=n).join(30)
        out.wait_unique_in(range(n, n + 500), 20)
        assert tx.running()
        diode.stop(tx)
        assert "Traceback" not in tx.log(), tx.log()[-3000:]
    finally:
        out.stop()


def test_rx_spool_on_a_full_disk_while_the_it_broker_is_down(
        small_disk: Path, diode: Diode, ot_broker: Broker,
        make_broker: Callable[..., Broker]) -> None:
    n = 14_000
    it = make_broker(BrokerOptions(persistence=True), name="IT (persistent)")
    rx = diode.start("rx", _on_disk(diode, diode.rx_doc(broker=it), small_disk))
    diode.start_tx(mqtt={"topics": ["s/#"]})
    out = SeqCollector(it, "s/#", "it-collector-rx-full")
    try:
        diode.wait_up(rx)
        time.sleep(0.5)
        it.stop()
        watch = Watch(rx, lambda st: st["sinks"]["plant"]["spool"])
        hog = _fill_meanwhile(small_disk, 3.0, 2.0)
        pub = _publisher(ot_broker, n, rate=2000)       # 7 s, about 1.8 MB for a 1 MB disk
        pub.join(60)
        hog.join(10)

        def accounted(st: dict[str, Any]) -> bool:
            sp = st["sinks"]["plant"]["spool"]
            return bool(sp["records"] + sp["dropped_oldest"] + sp["dropped_full"] == n)
        st = diode.wait_status(rx, accounted, 20, "every message kept or counted as dropped")
        assert st["counters"]["lost"] == 0, st["counters"]   # none lost on the link
        time.sleep(1.5)                                # the status keeps coming meanwhile
        watch.stop()
        watch.check("RX")
        sp = st["sinks"]["plant"]["spool"]
        kept = sp["records"]
        it.start()
        seqs = out.wait_unique_in(range(n - kept, n), 60)
        got = set(seqs)
        assert got & set(range(n)) == set(range(n - kept, n)), "not exactly the newest kept"
        assert _first_occurrences([s for s in seqs if s < n]) == list(range(n - kept, n))
        st = diode.wait_status(rx, lambda st: st["sinks"]["plant"]["spool"]["records"] == 0,
                               20, "RX's spool drained once the broker acknowledged")
        print(f"RX on a full disk: {n} published, {kept} kept and delivered, dropped_oldest "
              f"{sp['dropped_oldest']}, dropped_full {sp['dropped_full']}, full episodes "
              f"{sp['disk_full_episodes']}, bound {sp['limit_bytes'] / 1e6:.2f} MB")
        # and everything after
        _publisher(ot_broker, n + 500, rate=500, start=n).join(30)
        out.wait_unique_in(range(n, n + 500), 20)
        assert rx.running()
        check_full_disk_log(rx, diode.wait_status(rx, lambda st: True, 5, "status")
                            ["sinks"]["plant"]["spool"]["disk_full_episodes"])
        diode.stop(rx)
        assert "Traceback" not in rx.log(), rx.log()[-3000:]
    finally:
        out.stop()
