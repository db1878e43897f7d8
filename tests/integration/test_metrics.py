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


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send `data` (as much as the server takes) and read until it closes: (what came
    back, whether the server closed before all of `data` was sent)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        cut = False
        try:
            for i in range(0, len(data), 4096):
                s.sendall(data[i:i + 4096])
        except (BrokenPipeError, ConnectionResetError):
            cut = True
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got, cut


def test_a_request_head_over_the_bound_is_refused_and_metrics_go_on(tmp_path: Path) -> None:
    from agent.metrics import MAX_REQUEST_BYTES
    port = free_port()
    pair = AgentPair(tmp_path, None, None)
    rx_toml = tmp_path / "rx.toml"
    rx_toml.write_text(rx_toml.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        pair.start("rx")
        pair.wait_status("rx")
        assert "diode_link_state" in _scrape(port)
        # a whole head, one byte over the bound
        pad = b"a" * (MAX_REQUEST_BYTES - len(b"GET /metrics HTTP/1.1\r\nX-Pad: ") + 1)
        got, _ = _exchange(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + pad + b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 431 "), got[:100]
        # a head that never ends: answered and closed at the bound, not read on for good
        started = time.monotonic()
        got, cut = _exchange(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"b" * (16 << 20))
        assert got.startswith(b"HTTP/1.1 431 ") and b"diode_" not in got, got[:100]
        assert cut and time.monotonic() - started < 5, "the server read 16 MiB of one head"
        # many of them, and a normal client is still served, with the refusals counted in
        # a line or two of RX's log, not one each
        for _ in range(30):
            _exchange(port, b"GET / HTTP/1.1\r\n" + b"c" * (MAX_REQUEST_BYTES + 10))
        text = _scrape(port)
        assert 'diode_link_state{state="DOWN"} 1.0' in text
        log = (tmp_path / "rx.log").read_text()
        lines = [ln for ln in log.splitlines() if "request too large" in ln]
        assert 1 <= len(lines) <= 4, lines
        assert "Traceback" not in log
        assert pair.stop("rx") == 0
    finally:
        pair.close()
