"""`diode demo`: the whole product live on this machine.

```
plant sim ─► OT Mosquitto ─► diode tx ══ UDP (loopback, optional loss) ══► diode rx ─► IT Mosquitto ─► counter
```
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from .sim.agents import AgentPair
from .sim.mosquitto import Broker
from .sim.plant_mqtt import DeliveryCounter, PlantPublisher


def run_demo(duration: float, loss: float, as_json: bool, rate: float) -> int:
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="diode-demo-") as tmp, Broker() as ot, Broker() as it:
        work = Path(tmp)
        link_extra = f"simulated_loss = {loss}\n" if loss > 0 else ""
        pair = AgentPair(work, ot, it, link_extra=link_extra, carousel_period=10.0)
        counter = None
        plant = None
        try:
            print(f"demo: OT broker {ot.host}:{ot.port}, IT broker {it.host}:{it.port}, "
                  f"link loss {loss:.1%}, plant {rate:.0f} msg/s, {duration:.0f} s; "
                  f"work dir {work}", file=out, flush=True)
            pair.start("rx")
            pair.start("tx")
            pair.wait_up()
            counter = DeliveryCounter(it.host, it.port)
            plant = PlantPublisher(ot.host, ot.port, rate)
            plant.start()
            start = time.monotonic()
            while time.monotonic() - start < duration:
                time.sleep(1.0)
                st = pair.status("rx") or {}
                c = st.get("counters", {})
                print(f"[{time.monotonic() - start:5.0f}s] published {plant.published:7d}  "
                      f"delivered {counter.delivered:7d}  link {st.get('link_state', '?'):8s} "
                      f"datagram loss {st.get('datagram_loss', 0):6.2%}  frames lost "
                      f"{c.get('lost', 0):4d}  duplicates {c.get('duplicates', 0):7d}",
                      file=out, flush=True)
            plant.stop()
            settle = time.monotonic() + 5
            while counter.delivered < plant.published and time.monotonic() < settle:
                time.sleep(0.1)
            st = pair.status("rx") or {}
            c = st.get("counters", {})
            summary = {
                "published": plant.published, "delivered": counter.delivered,
                "lost": plant.published - counter.delivered,
                "frames_lost": c.get("lost", 0), "duplicates": c.get("duplicates", 0),
                "datagram_loss": st.get("datagram_loss"), "link_state": st.get("link_state"),
                "retained_topics_at_it": len(counter.retained_topics),
                "tx_rss_mb": pair.peak_rss_mb("tx"), "rx_rss_mb": pair.peak_rss_mb("rx"),
            }
        except Exception as exc:
            print(f"demo failed: {exc}\n--- tx log ---\n{pair.log('tx')}\n--- rx log ---\n"
                  f"{pair.log('rx')}", file=sys.stderr)
            return 1
        finally:
            if plant is not None:
                plant.stop()
            if counter is not None:
                counter.stop()
            pair.close()
    if not as_json:
        print("demo summary:", file=out)
        for k, v in summary.items():
            print(f"  {k:>22}: {v}", file=out)
    print(json.dumps(summary), file=out, flush=True)
    return 0
