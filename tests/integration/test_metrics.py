"""RX serves Prometheus metrics on the IT side, TX's counters included; TX serves none."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from diode_tools.sim.agents import AgentPair
from diode_tools.sim.mosquitto import Broker, free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_rx_metrics_show_link_state_and_tx_counters(tmp_path: Path) -> None:
    port = free_port()
    with Broker() as ot, Broker() as it:
        pair = AgentPair(tmp_path, ot, it)
        rx_toml = tmp_path / "rx.toml"
        rx_toml.write_text(rx_toml.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        try:
            pair.start("rx")
            pair.start("tx")
            pair.wait_up()
            time.sleep(1.5)  # a heartbeat with TX's connected source
            text = _scrape(port)
            assert 'diode_link_state{state="UP"} 1.0' in text
            assert 'diode_link_state{state="DOWN"} 0.0' in text
            assert 'diode_sink_connected{channel="plant",protocol="mqtt"} 1.0' in text
            assert 'diode_tx_source_connected{source="mqtt:plant"} 1.0' in text
            assert 'diode_tx_total{counter="datagrams"}' in text
            assert 'diode_link_total{counter="auth_failed"} 0.0' in text
            assert "diode_missing_frames 0.0" in text
            # the recovery window's size goes up and down: a gauge, not a counter
            assert 'diode_tx_recovery{field="recovery_bytes"}' in text
            assert 'diode_tx_total{counter="recovery_bytes"}' not in text
            pair.stop("tx")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and 'state="DOWN"} 1.0' not in text:
                time.sleep(0.3)
                text = _scrape(port)
            assert 'diode_link_state{state="DOWN"} 1.0' in text
        finally:
            pair.close()


def test_bad_metrics_address_is_a_config_error(tmp_path: Path) -> None:
    import pytest

    from agent import config
    (tmp_path / "rx.toml").write_text('[link]\nkey_file = "k"\n[metrics]\nlisten = "9108"\n')
    with pytest.raises(config.ConfigError, match=r"\[metrics\] listen.*HOST:PORT"):
        config.load(tmp_path / "rx.toml", "rx")
