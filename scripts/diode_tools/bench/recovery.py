"""`diode bench recovery`: the longest RX outage TX's recovery window closes, at the
demo's traffic and the default settings.

```
for each outage, longer and longer:  diode demo --rx-outage S  (a process of its own)
  RX killed (SIGKILL) a third into the run, started again S seconds later
  lost = MQTT messages and syslog messages published but never delivered,
         and the frames RX counted missed
stop at the first outage that loses anything
```

The figure is the longest outage with nothing lost; the first that lost
something, and how much, is reported beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

OUTAGES = (10.0, 30.0, 45.0, 50.0, 55.0, 60.0, 70.0)


def one_outage(outage: float) -> dict[str, Any]:
    duration = outage * 1.5 + 12   # a third before the kill; after the restart, time to settle
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--json", "--duration",
                           str(duration), "--rx-outage", str(outage)],
                          capture_output=True, text=True, timeout=duration + 240)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"diode demo --rx-outage {outage} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def run_recovery_bench(outages: tuple[float, ...] = OUTAGES) -> dict[str, Any]:
    trials = []
    longest = 0.0
    for outage in outages:
        r = one_outage(outage)
        lost = r["lost"] + r["syslog_lost"]
        trials.append({"outage_s": outage, "lost_messages": lost,
                       "frames_missed": r["frames_missed"],
                       "frames_recovered": r["frames_recovered"],
                       "frames_still_missing": r["frames_still_missing"],
                       "published": r["published"], "tx_recovery_bytes": r["tx_recovery_bytes"],
                       "tx_recovery_span_s": r["tx_recovery_span_s"]})
        print(f"bench recovery: RX down {outage:.0f} s: {lost} messages lost, "
              f"{r['frames_recovered']} frames recovered, {r['frames_missed']} missed, "
              f"{r['frames_still_missing']} still missing at the end; TX's window "
              f"{r['tx_recovery_span_s']:.0f} s, {r['tx_recovery_bytes']} bytes",
              file=sys.stderr, flush=True)
        if lost or r["frames_missed"]:
            break
        longest = outage
    return {"longest_outage_with_0_lost_s": longest, "trials": trials,
            "window": "defaults ([link] recovery_window, recovery_max_bytes, recovery_share)"}
