"""`diode status` turns a status file into one screen a technician can read."""

import json
import time
from pathlib import Path

from agent.status import render, show_status

SPOOL = {"fill_bytes": 2_000_000, "max_bytes": 64_000_000, "fill_fraction": 0.03125,
         "records": 1200, "oldest_age_s": 12.5, "dropped_oldest": 3, "dropped_conflated": 4,
         "torn_tail": 0, "damaged": 1}


def test_rx_screen_shows_link_sinks_spool_and_leds() -> None:
    st = {"role": "rx", "time": time.time(), "config": "/boot/firmware/diode/rx.toml",
          "key_fingerprint": "aa:bb", "link_state": "DEGRADED", "last_heartbeat_age_s": 0.4,
          "datagram_loss": 0.05, "epoch": "0123", "counters": {"lost": 2},
          "link": {"recovered": 31, "missed": 4}, "missing_frames": 7,
          "tx": {"sources": {"mqtt:plant": "connected"}},
          "transport": {"crc_errors": 4, "framing_errors": 2},
          "sinks": {"plant": {"state": "disconnected", "published": 10, "queue_dropped": 0,
                              "outages": 1, "spool": SPOOL}},
          "board": {"leds": {"link": "blink 2 Hz"}, "watchdog": "petting"}}
    text = render(st, time.time())
    for expected in ("link state      DEGRADED", "5.00%", "TX source       mqtt:plant: connected",
                     "mqtt:plant: disconnected", "1200 records, oldest 12.5 s",
                     "oldest 3  conflated 4", "damaged 1", "LED link", "blink 2 Hz",
                     "aa:bb", "/boot/firmware/diode/rx.toml", "crc_errors 4  framing_errors 2",
                     "missed frames   recovered 31  still expected 7  given up 4"):
        assert expected in text, expected
    assert "STALE" not in text


def test_tx_screen_and_stale_file(tmp_path: Path) -> None:
    st = {"role": "tx", "time": time.time() - 60, "epoch": "01",
          "counters": {"frames": 5, "recovery_span_ms": 59_500, "recovery_bytes": 3_200_000,
                       "resent": 900, "recovery_cycles": 12},
          "sources": {"mqtt:plant": "connecting", "mqtt:lab": "connected"},
          "queue": {"queued": 9},
          "queues": {"mqtt:plant": {"queued": 7, "spool": SPOOL}, "mqtt:lab": {"queued": 2},
                     "modbus:plc": {"queued": 0, "devices": {"press1": {
                         "state": "down", "requests_per_cycle": 7, "cycle_ms": {"1": 302.5},
                         "no_answers": 3}}}}}
    text = render(st, time.time())
    assert "STALE" in text and "mqtt:plant: connecting" in text
    assert "recovery window 59.5 s, 3.2 MB kept; 900 frames resent in 12 cycles" in text
    assert "queued          mqtt:plant: 7" in text and "queued          mqtt:lab: 2" in text
    assert "device          modbus:plc/press1: down  7 requests a cycle  cycle 302.5 ms " \
        "(every 1 s)  no answers 3" in text
    assert "1200 records" in text
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(st))
    assert show_status(path, as_json=True) == 0
    assert show_status(tmp_path / "missing.json", as_json=False) == 1


def test_rx_screen_shows_every_protocols_sinks_and_tx_log() -> None:
    st = {"role": "rx", "time": time.time(), "counters": {},
          "syslog": {"ot": {"state": "disconnected", "received": 12, "forwarded": 10, "held": 2,
                            "dropped": 0, "outages": 1,
                            "collectors": {"tcp://10.1.0.30:601": {
                                "state": "disconnected", "forwarded": 10, "held": 2,
                                "spool": SPOOL}}}},
          "opcua": {"plant": {"state": "serving", "variables": 2000}},
          "tx_log": [{"time": time.time(), "level": "WARNING", "logger": "diode.source.syslog",
                      "message": "queue full", "suppressed": 4}]}
    text = render(st, time.time())
    for expected in ("sink            syslog:ot: disconnected  received 12  forwarded 10",
                     "  tcp://10.1.0.30:601: disconnected  forwarded 10  held 2",
                     "  spool           2.0 MB", "sink            opcua:plant: serving  variables 2000",
                     "WARNING diode.source.syslog: queue full (+4 suppressed)"):
        assert expected in text, (expected, text)


def test_a_spool_on_a_full_disk_says_so_with_the_fix() -> None:
    full = {**SPOOL, "dropped_full": 5, "disk_full": True, "disk_full_episodes": 2,
            "limit_bytes": 1_500_000}
    st = {"role": "tx", "time": time.time(), "queues": {"mqtt:plant": {"queued": 1, "spool": full}}}
    text = render(st, time.time())
    assert "disk full 5" in text
    assert "FULL, bounded at 1.5 MB by its file system (full 2 times)" in text
    assert "free space or lower [spool] max_bytes" in text
    assert "bounded at" not in render({"role": "tx", "time": time.time(), "queues": {
        "mqtt:plant": {"queued": 1, "spool": SPOOL}}}, time.time())  # an older status file


def test_rx_with_the_link_down_shows_tx_sources_unknown_and_a_stale_file_warns(
        tmp_path: Path, capsys: object) -> None:
    now = time.time()
    st = {"role": "rx", "time": now, "status_interval": 1.0, "link_state": "DOWN",
          "tx": {"sources": {"mqtt:plant": "unknown"}, "heartbeat_age_s": 42.0,
                 "last_known_sources": {"mqtt:plant": "connected"}}}
    text = render(st, now)
    assert "mqtt:plant: unknown (link DOWN; last known connected, 42 s ago)" in text, text
    assert "STALE" not in text
    # written every second: 6 s old is stale already, and the warning comes first
    text = render(st, now + 6)
    assert text.splitlines()[0].startswith("WARNING: STALE status: written 6 s ago"), text
    assert "every 1 s" in text
    path = tmp_path / "rx.json"
    path.write_text(json.dumps({**st, "time": now - 60}))
    assert show_status(path, as_json=True) == 0
    assert "STALE" in capsys.readouterr().err  # type: ignore[attr-defined]
