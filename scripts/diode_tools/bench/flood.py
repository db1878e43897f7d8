"""`diode bench flood`: how many datagrams a second a real RX process disposes of under a
flood of forged new-epoch datagrams, against random garbage (and replays of TX's own
recorded frames), and what the genuine traffic alongside lost. `--core` runs the
in-memory bench of the link core instead (flood_core.py).

```
paho publisher ─► OT broker ─► diode tx ─► Tap ─► diode rx ─► IT broker ─► paho subscriber
 (QoS 1, --rate msg/s,                    (records)  ▲
  all along)           flooder process ──────────────┘ --seconds per round, as fast as it can
                       (diode_tools/sim/flood.py): garbage | new_epochs | replays (of the tap's)
```

The kinds take turns within each round (`--rounds` of them) and the figures are their
medians, so load from a neighbour on a shared machine moves a round, not the ratio.
Before each flood a quiet spell of the same traffic measures what RX spends on it, and
that is taken off. For each flood, from RX's status file and /proc:

- `rx_per_cpu_s`: datagrams RX counted (its `datagrams` counter) per second of its own
  CPU time: what it costs RX to dispose of one, whether or not the sender saturated it;
- `rx_per_s`: datagrams RX counted per second of the flood (wall clock), beside what the
  sender sent (`sent_per_s`) and what RX's kernel dropped (`kernel_dropped`: RX was
  saturated);
- `genuine_lost`: QoS 1 messages the OT broker acknowledged during the flood that never
  reached the IT broker; `frames_lost`: RX's count of link frames lost;
- `keys_derived`: epoch keys RX derived during the flood (bounded by its budget).

The flooder runs on this machine, at nice 0: it takes CPU from RX as well as
flooding it, so RX saturates and its kernel drops datagrams (genuine ones too) sooner
than behind a real link, where the attacker's CPU is not RX's.

`new_epochs_vs_garbage` is the ratio of the `rx_per_cpu_s` figures (the issue measured
0.39 before the key budget), `new_epochs_vs_garbage_wall` that of `rx_per_s`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from diode_tools.sim.agents import AgentPair
from diode_tools.sim.flood import write_pool
from diode_tools.sim.mosquitto import Broker
from diode_tools.sim.tap import Tap

KINDS = ("garbage", "new_epochs", "replays")
QUIET = 2.0       # seconds of traffic alone before each flood
BITRATE = 10_000_000
SETTLE = 3.0      # seconds after the last flood for the genuine traffic to arrive
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Traffic:
    """QoS 1 messages at a steady rate under a label the bench changes (`phase`), and a
    subscriber on the IT side; per label: acknowledged by the OT broker, received."""

    def __init__(self, ot: Broker, it: Broker, rate: float) -> None:
        self.rate, self.phase = rate, "start"
        self.got: dict[str, set[int]] = {}
        self._sent: list[tuple[str, paho.MQTTMessageInfo]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-flood-sub")
        self.sub.on_message = self._on_message
        subscribed = threading.Event()
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.connect(it.host, it.port)
        self.sub.subscribe("flood/#", qos=1)
        self.sub.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench flood: no SUBACK from the IT broker")
        self.pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-flood-pub")
        self.pub.max_inflight_messages_set(1000)
        self.pub.connect(ot.host, ot.port)
        self.pub.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        label = msg.topic.split("/")[1]
        with self._lock:
            self.got.setdefault(label, set()).add(int(msg.payload))

    def _run(self) -> None:
        start, i = time.monotonic(), 0
        while not self._stop.is_set():
            label = self.phase
            self._sent.append((label, self.pub.publish(f"flood/{label}", str(i).encode(), qos=1)))
            i += 1
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def acked(self, label: str) -> int:
        """Messages of `label` the OT broker acknowledged (PUBACK)."""
        return sum(lb == label and info.is_published() for lb, info in list(self._sent))

    def lost(self, label: str) -> int:
        with self._lock:
            got = len(self.got.get(label, ()))
        return self.acked(label) - got

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in (self.pub, self.sub):
            c.loop_stop()
            c.disconnect()


def _fresh_status(pair: AgentPair, after: float) -> dict[str, Any]:
    """RX's next status written after `after` (unix time): its counters at that time."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = pair.status("rx")
        if st and st["time"] > after:
            return st
        time.sleep(0.05)
    raise RuntimeError("bench flood: RX stopped writing its status")


def _counted(st: dict[str, Any]) -> tuple[int, int, int, int]:
    link = st["link"]
    return (link["datagrams"], link["lost"], link.get("keys_derived", 0),
            st.get("transport", {}).get("kernel_dropped", 0))


def one_flood(pair: AgentPair, traffic: Traffic, kind: str, label: str, seconds: float,
              port: int, pool: Path, seed: int, nice: int) -> dict[str, Any]:
    # the quiet spell: what RX spends on the genuine traffic alone
    traffic.phase = f"quiet-{label}"
    t0, c0 = time.monotonic(), cpu_seconds(pair.procs["rx"].pid)
    s0 = _fresh_status(pair, time.time())
    time.sleep(QUIET)
    s1 = _fresh_status(pair, time.time())
    t1, c1 = time.monotonic(), cpu_seconds(pair.procs["rx"].pid)
    quiet_cpu = (c1 - c0) / (t1 - t0)
    quiet_dgrams = (_counted(s1)[0] - _counted(s0)[0]) / (s1["time"] - s0["time"])

    traffic.phase = label
    flooder = subprocess.Popen([sys.executable, "-m", "diode_tools.sim.flood", "127.0.0.1",
                                str(port), kind, str(seconds), "--pool", str(pool),
                                "--seed", str(seed), "--nice", str(nice)],
                               stdout=subprocess.PIPE, text=True)
    out, _ = flooder.communicate(timeout=seconds + 60)
    t2 = time.monotonic()
    sent = json.loads(out.strip().splitlines()[-1])
    # RX may still be working through its socket buffer: until its count stops growing
    s2 = _fresh_status(pair, time.time())
    flood_rate = (_counted(s2)[0] - _counted(s1)[0]) / (s2["time"] - s1["time"])
    busy_until = t2
    while True:
        time.sleep(0.3)
        s3 = _fresh_status(pair, time.time())
        rate = (_counted(s3)[0] - _counted(s2)[0]) / (s3["time"] - s2["time"])
        if rate <= max(3 * quiet_dgrams, 0.02 * flood_rate):
            break
        s2, busy_until = s3, time.monotonic()
    t3, c3 = time.monotonic(), cpu_seconds(pair.procs["rx"].pid)
    traffic.phase = f"after-{label}"
    (d1, lost1, keys1, kd1), (d3, lost3, keys3, kd3) = _counted(s1), _counted(s3)
    dgrams = d3 - d1 - quiet_dgrams * (t3 - t1)
    cpu = (c3 - c1) - quiet_cpu * (t3 - t1)
    busy = sent["seconds"] + (busy_until - t2)   # the flood's own time, and RX's catching up
    return {"sent": sent["sent"], "sent_per_s": round(sent["rate"]),
            "rx_counted": round(dgrams), "rx_per_s": round(dgrams / busy),
            "rx_per_cpu_s": round(dgrams / max(1e-9, cpu)),
            "rx_cpu_share": round(cpu / busy, 2),
            "kernel_dropped": kd3 - kd1, "frames_lost": lost3 - lost1,
            "keys_derived": keys3 - keys1}


def run_flood_bench(seconds: float = 5.0, rounds: int = 3, rate: float = 500.0,
                    kinds: tuple[str, ...] = KINDS, nice: int = 0) -> dict[str, Any]:
    """`nice`: the flooder's niceness. 0 (it competes with RX for this machine's CPU, so
    it saturates RX) for the figures; 19 leaves RX the CPU, as an attacker on another
    machine would."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="diode-bench-flood-") as tmp, Broker() as ot, \
            Broker() as it:
        work = Path(tmp)
        # A link of 10 Mbit/s: room for the genuine traffic, and the recovery window's
        # re-sends (10 % of it) stay a small, steady part of what RX counts
        pair = AgentPair(work, ot, it, qos=1, link_extra=f"bitrate = {BITRATE}")
        rx_toml = work / "rx.toml"
        rx_toml.write_text(rx_toml.read_text().replace('file = "rx.status.json"\n',
                                                       'file = "rx.status.json"\ninterval = 0.2\n'))
        tap = Tap(pair.port)
        tx_toml = work / "tx.toml"
        tx_toml.write_text(tx_toml.read_text().replace(f"port = {pair.port}\n",
                                                       f"port = {tap.port}\n", 1))
        traffic: Traffic | None = None
        try:
            pair.start("rx")
            pair.wait_status("rx")
            pair.start("tx")
            pair.wait_up()
            traffic = Traffic(ot, it, rate)
            time.sleep(QUIET)
            pool = work / "replays.pool"
            write_pool(pool, tap.snapshot())
            for r in range(rounds):
                for kind in kinds:
                    runs[kind].append(one_flood(pair, traffic, kind, f"{kind}-{r}", seconds,
                                                pair.port, pool, seed=r + 1, nice=nice))
            traffic.phase = "end"
            time.sleep(SETTLE)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(
                    traffic.lost(f"{k}-{r}") for k in kinds for r in range(rounds)):
                time.sleep(0.5)
            for kind in kinds:
                for r, result in enumerate(runs[kind]):
                    result["genuine_published"] = traffic.acked(f"{kind}-{r}")
                    result["genuine_lost"] = traffic.lost(f"{kind}-{r}")
            rx_status = pair.status("rx") or {}
            tx_status = pair.status("tx") or {}
        finally:
            if traffic is not None:
                traffic.close()
            tap.close()
            pair.close()

    def median(kind: str, field: str) -> float:
        return float(statistics.median(x[field] for x in runs[kind]))

    def ratio(a: str, b: str, field: str) -> float | None:
        if a not in runs or b not in runs:
            return None
        return round(statistics.median(x[field] / max(1, y[field])
                                       for x, y in zip(runs[a], runs[b], strict=True)), 3)
    return {
        "seconds_per_flood": seconds, "rounds": rounds, "genuine_rate": rate,
        "flooder_nice": nice,
        "rates": {k: {"rx_per_cpu_s": round(median(k, "rx_per_cpu_s")),
                      "rx_per_s": round(median(k, "rx_per_s")),
                      "sent_per_s": round(median(k, "sent_per_s")),
                      "rx_cpu_share": median(k, "rx_cpu_share")} for k in kinds},
        "new_epochs_vs_garbage": ratio("new_epochs", "garbage", "rx_per_cpu_s"),
        "new_epochs_vs_garbage_wall": ratio("new_epochs", "garbage", "rx_per_s"),
        "replays_vs_garbage": ratio("replays", "garbage", "rx_per_cpu_s"),
        "genuine_published": {k: sum(x["genuine_published"] for x in v) for k, v in runs.items()},
        "genuine_lost": {k: sum(x["genuine_lost"] for x in v) for k, v in runs.items()},
        "frames_lost": {k: sum(x["frames_lost"] for x in v) for k, v in runs.items()},
        "kernel_dropped": {k: sum(x["kernel_dropped"] for x in v) for k, v in runs.items()},
        "keys_derived": {k: max(x["keys_derived"] for x in v) for k, v in runs.items()},
        "rx_epochs": (rx_status.get("link") or {}).get("epochs"),
        # where a lost message would show: TX's queue, RX's sink
        "tx_dropped": sum(v for k, v in (tx_status.get("counters") or {}).items()
                          if k.endswith("dropped")),
        "rx_sink": (rx_status.get("sinks") or {}).get("plant"),
        "per_round": runs,
    }
