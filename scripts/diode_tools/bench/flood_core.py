"""`diode bench flood --core`: what a flood of forged new epochs costs the RX link core,
against garbage.

```
flood datagrams (1400 B) ──┐
  garbage          random bytes (rejected at the header)
  forged_live      the live epoch's header, a random body (one failed AES open)
  new_epochs       a random epoch per datagram, random body (asks for a new key)
  paired_epochs    each random epoch twice (an attacker draining both budgets)
  new_epochs_unbudgeted   as new_epochs with an unlimited key budget: the cost
                          before agent/link/ciphers.py, for reference
genuine datagrams ─────────┴─► LinkReceiver.receive ─► frames delivered, counters
  (a LinkSender, repeat 3: one datagram in every 50)
```

Sans-IO and in memory: no sockets, simulated time (the flood arrives at
100,000 datagrams per simulated second), wall-clock time measured around
`receive` only. The workloads take turns chunk by chunk (5,000 datagrams), so
load from a neighbour falls on all of them alike, and the medians of `rounds`
rounds are reported.

Figures: `rates_per_s` and `us_per_datagram` (datagrams RX
rejects or accepts per second of its own CPU, and the inverse), the ratios
`new_epochs_vs_garbage` (the issue measured 52k/s against 132k/s, i.e. 0.39,
through the whole agent, whose socket and loop add a few microseconds to every
datagram; here it is the core alone, against garbage that dies at its first
byte) and `new_epochs_vs_forged_live` (against the cost of any datagram that
reaches an AES open, which no receiver can avoid), keys derived per workload,
and, per workload, whether every genuine frame sent during the flood was
delivered. `tx_restart_during_flood`: a TX restarts (a new
epoch) while random epochs pour in: how many of its datagrams RX needed to
follow it, and whether all its frames were delivered.

    .venv/bin/diode bench flood --core [--datagrams 100000] [--rounds 3]

(`diode bench flood` without `--core` floods a real RX process over UDP:
diode_tools/bench/flood.py.)
"""

from __future__ import annotations

import os
import random
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

from agent.link import records, wire
from agent.link.events import EpochChanged, RecordReceived
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams

SIZE = 1400
FLOOD_RATE = 100_000.0   # simulated datagrams per second
GENUINE_EVERY = 50
CHUNK = 5000             # flood datagrams built at a time (memory stays small)
HEADER = struct.Struct(">BBHQQ")
LIVE_EPOCH = (1_700_000_000_000 << 22) | 0x2A
KINDS = ("garbage", "forged_live", "new_epochs", "paired_epochs", "new_epochs_unbudgeted")


def _genuine(key: bytes, epoch: int, frames: int) -> list[bytes]:
    tx = LinkSender(SenderParams(repeat=3, interleave=8), key, epoch)
    out: list[bytes] = []
    for i in range(frames):
        rec = records.Heartbeat(float(i), 1.0, 3, {"n": i}, {})   # a marker record per frame
        tx.push(records.encode(rec), 0.0)
        tx.flush(0.0)
        out += tx.pop_datagrams()
    return out + tx.drain(0.0)


def forged_maker(kind: str, rng: random.Random) -> Callable[[], bytes]:
    body = SIZE - wire.HEADER_SIZE
    if kind == "garbage":
        return lambda: rng.randbytes(SIZE)
    if kind == "forged_live":
        return lambda: HEADER.pack(1, 0, 1, LIVE_EPOCH, rng.getrandbits(40)) + rng.randbytes(body)
    if kind in ("new_epochs", "new_epochs_unbudgeted"):
        return lambda: HEADER.pack(1, 0, 1, rng.getrandbits(64), 0) + rng.randbytes(body)
    if kind == "paired_epochs":
        last: list[bytes] = []

        def paired() -> bytes:
            if last:
                return last.pop()
            d = HEADER.pack(1, 0, 1, rng.getrandbits(64), 0) + rng.randbytes(body)
            last.append(d)
            return d
        return paired
    raise ValueError(kind)


class Workload:
    """`n` flood datagrams of one kind with genuine ones interleaved, run a chunk at a
    time (so workloads can take turns); CPU time of `receive` only."""

    def __init__(self, kind: str, n: int, key: bytes, seed: int) -> None:
        unlimited = kind == "new_epochs_unbudgeted"
        params = ReceiverParams(key_trials_first=1e12 if unlimited else 20.0,
                                key_trials_again=1e12 if unlimited else 50.0)
        self.kind, self.n = kind, n
        self.rx = LinkReceiver(params, key)
        self.genuine = _genuine(key, LIVE_EPOCH, n // GENUINE_EVERY // 3 + 1)
        self.make = forged_maker(kind, random.Random(seed))
        self.seconds = 0.0
        self.delivered = 0
        self.sent = 0    # flood datagrams
        self.g = 0       # genuine datagrams

    @property
    def done(self) -> bool:
        return self.sent >= self.n

    def step(self) -> None:
        chunk = []
        for _ in range(min(CHUNK, self.n - self.sent)):
            chunk.append(self.make())
            if self.sent % GENUINE_EVERY == 0 and self.g < len(self.genuine):
                chunk.append(self.genuine[self.g])
                self.g += 1
            self.sent += 1
        base = (self.sent - len(chunk)) / FLOOD_RATE
        receive = self.rx.receive
        delivered = 0
        started = time.perf_counter()
        for j, d in enumerate(chunk):
            for ev in receive(d, base + j / FLOOD_RATE):
                if ev.__class__ is RecordReceived:
                    delivered += 1
        self.seconds += time.perf_counter() - started
        self.delivered += delivered

    def result(self) -> dict[str, Any]:
        rx = self.rx
        for d in self.genuine[self.g:]:       # the genuine tail, after the flood
            self.delivered += sum(e.__class__ is RecordReceived
                                  for e in rx.receive(d, self.n / FLOOD_RATE))
        self.delivered += sum(e.__class__ is RecordReceived for e in rx.handle_timer(1e9))
        c = rx.counters
        return {"rate": (self.n + self.g) / self.seconds, "keys_derived": rx.keys_derived,
                "genuine_frames_sent": len(self.genuine) // 3,
                "genuine_frames_delivered": self.delivered, "lost": c["lost"],
                "unverified": c["unverified"], "auth_failed": c["auth_failed"]}


def run_round(n: int, key: bytes, seed: int) -> dict[str, dict[str, Any]]:
    """All workloads, taking turns chunk by chunk: a neighbour's load falls on all alike."""
    loads = [Workload(kind, n, key, seed) for kind in KINDS]
    while not all(w.done for w in loads):
        for w in loads:
            if not w.done:
                w.step()
    return {w.kind: w.result() for w in loads}


def tx_restart_during_flood(key: bytes, seed: int) -> dict[str, Any]:
    """Random epochs pour in; the TX restarts with a new epoch in the middle."""
    rng = random.Random(seed)
    flood = forged_maker("new_epochs", rng)
    rx = LinkReceiver(ReceiverParams(), key)
    now = 0.0
    for d in _genuine(key, LIVE_EPOCH, 10):
        rx.receive(d, now)
    for _ in range(20_000):             # the budget is long spent by now
        now += 1 / FLOOD_RATE
        rx.receive(flood(), now)
    new_epoch = LIVE_EPOCH + (60_000 << 22)
    restarted = _genuine(key, new_epoch, 200)
    followed_after = None
    delivered = 0
    for k, d in enumerate(restarted):
        for _ in range(GENUINE_EVERY):
            now += 1 / FLOOD_RATE
            rx.receive(flood(), now)
        for ev in rx.receive(d, now):
            if isinstance(ev, EpochChanged) and ev.new == new_epoch:
                followed_after = k + 1
            elif isinstance(ev, RecordReceived):
                delivered += 1
    delivered += sum(isinstance(e, RecordReceived) for e in rx.handle_timer(1e9))
    return {"followed_after_datagrams": followed_after, "frames_sent": 200,
            "frames_delivered": delivered, "lost": rx.counters["lost"]}


def run_core_bench(datagrams: int = 100_000, rounds: int = 3, seed: int = 1) -> dict[str, Any]:
    """Every workload, `rounds` times, taking turns; the medians and ratios."""
    key = os.urandom(32)
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for r in range(rounds):
        for kind, result in run_round(datagrams, key, seed + r).items():
            runs[kind].append(result)
    rates = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items()}
    last = {k: v[-1] for k, v in runs.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of a/b within each round (the workloads took turns)."""
        return round(statistics.median(x["rate"] / y["rate"]
                                       for x, y in zip(runs[a], runs[b], strict=True)), 3)
    return {
        "datagrams_per_workload": datagrams, "datagram_bytes": SIZE,
        "rounds": rounds,
        "rates_per_s": {k: round(v) for k, v in rates.items()},
        "us_per_datagram": {k: round(1e6 / v, 2) for k, v in rates.items()},
        "new_epochs_vs_garbage": ratio("new_epochs", "garbage"),
        "new_epochs_vs_forged_live": ratio("new_epochs", "forged_live"),
        "paired_epochs_vs_garbage": ratio("paired_epochs", "garbage"),
        "unbudgeted_vs_garbage": ratio("new_epochs_unbudgeted", "garbage"),
        "keys_derived": {k: v["keys_derived"] for k, v in last.items()},
        "genuine_all_delivered": {k: all(x["genuine_frames_delivered"] == x["genuine_frames_sent"]
                                         and x["lost"] == 0 for x in v)
                                  for k, v in runs.items()},
        "genuine_frames_per_workload": last["garbage"]["genuine_frames_sent"],
        "tx_restart_during_flood": tx_restart_during_flood(key, seed),
        "per_round_rates": {k: [round(x["rate"]) for x in v] for k, v in runs.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
