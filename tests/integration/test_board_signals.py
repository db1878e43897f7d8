"""The agents tell systemd they are ready, pet its watchdog while healthy, and drive
the (simulated) status LEDs from the link state, as real processes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from diode_tools.sim.agents import AgentPair
from diode_tools.sim.mosquitto import Broker


def _notifications(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return out


def _leds(pair: AgentPair, role: str) -> dict[str, str]:
    st = pair.status(role) or {}
    return dict((st.get("board") or {}).get("leds") or {})


def test_ready_watchdog_and_leds_follow_the_link(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    board = '\n[board]\nleds = "sim"\n'
    with Broker() as ot, Broker() as it:
        pair = AgentPair(tmp_path, ot, it)
        for role in ("tx", "rx"):  # a [board] table after the [[mqtt]] one
            path = tmp_path / f"{role}.toml"
            text = path.read_text().replace(f'file = "{role}.status.json"',
                                            f'file = "{role}.status.json"\ninterval = 0.1')
            path.write_text(text + board)
        try:
            pair.start("rx")
            pair.start("tx")
            pair.wait_up()
            msgs = _notifications(notify, 3.0)
            ready = [m for m in msgs if "READY=1" in m]
            assert any("RX listening" in m for m in ready), msgs
            assert any("TX epoch" in m for m in ready), msgs
            # both agents pet at half of WATCHDOG_USEC while healthy
            assert sum("WATCHDOG=1" in m for m in msgs) >= 6, msgs
            time.sleep(0.5)
            assert _leds(pair, "rx")["link"] == "on"
            assert _leds(pair, "rx")["conn"] == "on"
            # TX's link LED flashes with every send (heartbeats at least once a second)
            seen = set()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and "flash" not in seen:
                seen.add(_leds(pair, "tx").get("link"))
                time.sleep(0.02)
            assert "flash" in seen, seen
            pair.stop("tx")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and _leds(pair, "rx").get("link") != "off":
                time.sleep(0.2)
            assert _leds(pair, "rx")["link"] == "off"  # DOWN: nothing arrives
            assert (pair.status("rx") or {})["link_state"] == "DOWN"
            assert pair.stop("rx") == 0
            assert any("STOPPING=1" in m for m in _notifications(notify, 0.5))
        finally:
            pair.close()
