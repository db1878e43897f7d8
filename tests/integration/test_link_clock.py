"""A new TX board whose wall clock is behind, as processes: RX follows it.

```
OT Mosquitto ─► diode tx 1 (right clock; stopped) ─┐
            └─► diode tx 2 (a day behind: libfaketime) ─► UDP ─► diode rx (state_file) ─► IT Mosquitto
```

A Pi has no RTC and the OT side may have no NTP, so a genuine new TX can start with a
smaller epoch (`unix ms << 22 | random`) than the TX before it. RX must not take it
for a replay for good: it holds it on probation (`stale_epoch`) and follows it once
the old epoch has been quiet for `epoch_takeover` seconds (docs/link-replays.md),
then delivers what it held and everything after.

Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC=1): TX's timers and pacing run
on the monotonic clock as on a real board.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from diode_tools.sim.mosquitto import Broker

from .conftest import Collector, Diode, publish_all

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_new_tx_whose_clock_is_behind_is_followed_after_the_takeover(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: Callable[..., Collector],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert LIBFAKETIME.exists(), f"{LIBFAKETIME} missing. Fix: ./scripts/setup.sh (apt faketime)"
    rx = diode.start_rx(link={"state_file": "rx-link.json"})
    sub = collector(it_broker, ["plant/#", "probe/#"])
    tx1 = diode.start_tx(name="tx1")
    diode.wait_up(rx)
    diode.wait_ready(sub)
    epoch1 = diode.wait_status(tx1, lambda s: "epoch" in s, 20, "TX 1's epoch")["epoch"]
    diode.stop(tx1)

    # the board swap: a TX whose clock is a day behind
    with monkeypatch.context() as env:
        env.setenv("LD_PRELOAD", str(LIBFAKETIME))
        env.setenv("FAKETIME", "-1d")
        env.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        tx2 = diode.start_tx(name="tx2")
    st2 = diode.wait_status(tx2, lambda s: "epoch" in s, 20, "TX 2's epoch")
    assert st2["time"] < time.time() - 86_000, "libfaketime did not move TX 2's clock"
    epoch2 = st2["epoch"]
    assert int(epoch2, 16) < int(epoch1, 16), (epoch1, epoch2)

    # what TX 2 sends while RX still holds it on probation, then after it is followed
    diode.wait_status(tx2, lambda s: s["sources"]["mqtt:plant"] == "connected", 20,
                      "TX 2 connected")
    started = time.monotonic()
    publish_all(ot_broker.host, ot_broker.port,
                [(f"plant/held/{i}", b"x", 1, False) for i in range(30)])
    held = diode.wait_status(rx, lambda s: s["link"]["stale_epoch"] > 0, 10,
                             "RX holding TX 2's older epoch")
    assert held["epoch"] == epoch1
    diode.wait_status(rx, lambda s: s["epoch"] == epoch2, 30, "RX following TX 2")
    took = time.monotonic() - started
    publish_all(ot_broker.host, ot_broker.port,
                [(f"plant/after/{i}", b"x", 1, False) for i in range(100)])
    sub.wait_count(30, "plant/held/", 20)
    sub.wait_count(100, "plant/after/", 20)
    seen = Counter(m.topic for m in sub.data("plant/"))
    assert sorted(seen) == sorted([f"plant/held/{i}" for i in range(30)]
                                  + [f"plant/after/{i}" for i in range(100)])
    assert max(seen.values()) == 1, "delivered twice"
    final = diode.wait_status(rx, lambda s: True, 5, "status")
    assert final["epoch"] == epoch2 and final["link"]["lost"] == 0, final["link"]
    assert f"TX restarted (epoch {epoch1} -> {epoch2})" in rx.log()
    print(f"TX 2 (a day behind) followed {took:.1f} s after its first messages; "
          f"{held['link']['stale_epoch']} frames held on probation")
    diode.stop(tx2)
    diode.stop(rx)
