"""`diode demo`: the whole product live on this machine.

```
plant sim ─► OT Mosquitto ─► diode tx ══ UDP (loopback, optional loss) ══► diode rx ─► IT Mosquitto ─► counter
OPC UA plant (asyncua) ──────┤                                                   ├──► read-only OPC UA mirror
syslog devices (udp, tcp) ───┤                                                   ├──► syslog collector
Modbus PLC (pymodbus) ───────┘ (reads only, requests counted)                      └──► own mirror, MQTT
```
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from diode_tools.sim.agents import AgentPair, free_udp_port
from diode_tools.sim.mosquitto import Broker, free_port
from diode_tools.sim.plant_modbus import SimulatedPlc, channel_toml, demo_values, load_map, sample_map
from diode_tools.sim.plant_mqtt import DeliveryCounter, PlantPublisher
from diode_tools.sim.plant_opcua import PlantProcess
from diode_tools.sim.plant_syslog import SyslogCounter, SyslogSender


def _plc_counts(plc: SimulatedPlc) -> str:
    """The PLC's requests by function code; writes (5, 6, 15, 16, 22, 23) must stay 0."""
    counts = plc.counts()
    reads = "  ".join(f"fc{fc} {counts.get(fc, 0)}" for fc in (1, 2, 3, 4))
    return f"PLC requests {sum(counts.values()):6d} ({reads})  writes {plc.writes()}"


def run_demo(duration: float, loss: float, as_json: bool, rate: float,
             rx_outage: float = 0.0) -> int:
    """`rx_outage` > 0: RX is killed (SIGKILL) a third into the run for that many seconds,
    then started again; TX's recovery window brings what it missed meanwhile."""
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="diode-demo-") as tmp, Broker() as ot, Broker() as it:
        work = Path(tmp)
        link_extra = f"simulated_loss = {loss}\n" if loss > 0 else ""
        opcua_plant = PlantProcess(free_port(), variables=2000, rate=1000)
        mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
        syslog_udp, syslog_tcp = free_udp_port(), free_port()
        syslog_counter = SyslogCounter()
        plc = SimulatedPlc(port=free_port(), changing=True)
        plc_map = sample_map(0)
        plc_mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
        modbus = channel_toml({"name": "plc", "opcua_mirror": "plc", "mqtt_channel": "plant",
                               "carousel_period": 10.0},
                              [({"name": "press1", "host": "127.0.0.1", "port": plc.port},
                                [t for t, _ in plc_map] + demo_values())])
        pair = AgentPair(
            work, ot, it, link_extra=link_extra, carousel_period=10.0,
            tx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{opcua_plant.endpoint}"\n'
                     f'\n[[syslog]]\nname = "plant"\nlisten = ["udp://127.0.0.1:{syslog_udp}", '
                     f'"tcp://127.0.0.1:{syslog_tcp}"]\n\n' + modbus,
            rx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{mirror}"\n'
                     f'\n[[opcua]]\nname = "plc"\nendpoint = "{plc_mirror}"\n'
                     f'\n[[syslog]]\nname = "plant"\ncollectors = ["{syslog_counter.endpoint}"]\n')
        counter = None
        plant = None
        syslog = None
        try:
            plc.start()
            load_map(plc, plc_map)
            print(f"demo: OT broker {ot.host}:{ot.port}, IT broker {it.host}:{it.port}, "
                  f"link loss {loss:.1%}, plant {rate:.0f} msg/s, {duration:.0f} s; "
                  f"work dir {work}\ndemo: OPC UA plant {opcua_plant.endpoint} (2,000 "
                  f"variables) mirrored read-only at {mirror}\ndemo: syslog devices to TX's "
                  f"listeners udp 127.0.0.1:{syslog_udp} and tcp 127.0.0.1:{syslog_tcp} "
                  f"({max(1.0, rate / 10):.0f} msg/s), forwarded to a collector at "
                  f"{syslog_counter.endpoint}\ndemo: Modbus PLC {plc.where} "
                  f"({len(plc_map) + len(demo_values())} values, pymodbus server) mirrored at "
                  f"{plc_mirror} and on the IT broker under modbus/plc/", file=out, flush=True)
            pair.start("rx")
            # TX's first frames carry the Modbus model (then only every carousel period):
            # RX listens before TX starts, as the boards' units order them
            pair.wait_status("rx")
            pair.start("tx")
            pair.wait_up(timeout=45.0)  # two mirrors and a 2,000-node crawl: slow on a busy box
            counter = DeliveryCounter(it.host, it.port)
            plant = PlantPublisher(ot.host, ot.port, rate)
            plant.start()
            syslog = SyslogSender(("127.0.0.1", syslog_udp), ("127.0.0.1", syslog_tcp),
                                  max(1.0, rate / 10))
            syslog.start()
            start = time.monotonic()
            kill_at = duration / 3 if rx_outage > 0 else float("inf")
            restart_at = kill_at + rx_outage
            while time.monotonic() - start < duration:
                time.sleep(1.0)
                elapsed = time.monotonic() - start
                if elapsed >= kill_at:
                    pair.kill("rx")
                    print(f"[{elapsed:5.0f}s] RX killed (SIGKILL) for {rx_outage:.0f} s",
                          file=out, flush=True)
                    kill_at = float("inf")
                if elapsed >= restart_at:
                    pair.start("rx")
                    print(f"[{elapsed:5.0f}s] RX started again", file=out, flush=True)
                    restart_at = float("inf")
                st = pair.status("rx") or {}
                c = st.get("counters", {})
                ua_st = st.get("opcua", {}).get("plant", {})
                print(f"[{time.monotonic() - start:5.0f}s] published {plant.published:7d}  "
                      f"delivered {counter.delivered:7d}  link {st.get('link_state', '?'):8s} "
                      f"datagram loss {st.get('datagram_loss', 0):6.2%}  frames lost "
                      f"{c.get('lost', 0):4d}  duplicates {c.get('duplicates', 0):7d}  "
                      f"mirror {ua_st.get('state', '-')} {ua_st.get('variables', 0)} variables, "
                      f"{ua_st.get('values_applied', 0)} values  syslog sent {syslog.sent} "
                      f"delivered {syslog_counter.delivered}", file=out, flush=True)
                print(f"        modbus: {_plc_counts(plc)}  mirror "
                      f"{st.get('opcua', {}).get('plc', {}).get('state', '-')}", file=out,
                      flush=True)
            plant.stop()
            syslog.stop()
            # what RX missed while it was down comes with the recovery window's next cycles
            # after an outage: until RX has all it missed or gave it up (counted missed),
            # which the window's cycles take up to its length
            settle = time.monotonic() + (75 if rx_outage > 0 else 5)

            def missing() -> int:
                return int((pair.status("rx") or {}).get("missing_frames", 0))
            while (counter.delivered < plant.published or syslog_counter.delivered < syslog.sent
                   or missing()) and time.monotonic() < settle:
                time.sleep(0.1)
            st = pair.status("rx") or {}
            tx_st = pair.status("tx") or {}
            c = st.get("counters", {})
            tx_c = tx_st.get("counters") or {}
            summary = {
                "published": plant.published, "delivered": counter.delivered,
                "lost": plant.published - counter.delivered,
                "frames_lost": c.get("lost", 0), "duplicates": c.get("duplicates", 0),
                "datagram_loss": st.get("datagram_loss"), "link_state": st.get("link_state"),
                "retained_topics_at_it": len(counter.retained_topics),
                "tx_rss_mb": pair.peak_rss_mb("tx"), "rx_rss_mb": pair.peak_rss_mb("rx"),
                "mirror_state": st.get("opcua", {}).get("plant", {}).get("state"),
                "mirror_variables": st.get("opcua", {}).get("plant", {}).get("variables"),
                "mirror_values_applied": st.get("opcua", {}).get("plant", {}).get(
                    "values_applied"),
                "syslog_sent": syslog.sent, "syslog_delivered": syslog_counter.delivered,
                "syslog_lost": syslog.sent - syslog_counter.delivered,
                "syslog_tx_dropped": sum(v for k, v in (tx_st.get("counters") or {}).items()
                                         if k.startswith("syslog:") and "dropped" in k),
                "modbus_requests": sum(plc.counts().values()),
                "modbus_writes": plc.writes(),
                "modbus_mirror_variables": st.get("opcua", {}).get("plc", {}).get("variables"),
                "rx_outage_s": rx_outage,
                "frames_recovered": st.get("link", {}).get("recovered", 0),
                "frames_missed": st.get("link", {}).get("missed", 0),
                "frames_still_missing": st.get("missing_frames", 0),
                "tx_recovery_bytes": tx_c.get("recovery_bytes"),
                "tx_recovery_span_s": (tx_c.get("recovery_span_ms") or 0) / 1000,
                "tx_resent": tx_c.get("resent"),
            }
        except Exception as exc:
            print(f"demo failed: {exc}\n--- tx log ---\n{pair.log('tx')}\n--- rx log ---\n"
                  f"{pair.log('rx')}", file=sys.stderr)
            return 1
        finally:
            plc.stop()
            opcua_plant.stop()
            if plant is not None:
                plant.stop()
            if syslog is not None:
                syslog.stop()
            syslog_counter.stop()
            if counter is not None:
                counter.stop()
            pair.close()
    if not as_json:
        print("demo summary:", file=out)
        for k, v in summary.items():
            print(f"  {k:>22}: {v}", file=out)
    print(json.dumps(summary), file=out, flush=True)
    return 0
