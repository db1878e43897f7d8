"""The agents tell systemd they are ready, pet its watchdog while healthy, and drive
the (simulated) status LEDs from the link state, as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


class _Pets:
    """WATCHDOG=1 notifications as they come, with their arrival times (a thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "WATCHDOG=1" in msg:
                self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.times if start <= t < end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.root
def test_tx_stops_petting_the_watchdog_while_its_sends_fail(tmp_path: Path) -> None:
    # Issue 12, item 4: a TX whose sends all fail must stop petting systemd's watchdog,
    # so systemd restarts it. TX runs in a network namespace of the test's own, its link
    # a veth whose far end nobody reads; an `unreachable` route to RX's address makes every
    # send fail (EHOSTUNREACH) for a while, without touching the interface.
    ns = f"diode-wd-{os.getpid()}"
    _ip("netns", "add", ns)
    proc = None
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    pets = _Pets(notify)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        # the link as on a board: a veth, a permanent neighbour entry for RX's address
        _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", ns, "addr", "add", "10.77.0.1/24", "dev", "v0")
        _ip("-n", ns, "link", "set", "v0", "up")
        _ip("-n", ns, "link", "set", "v1", "up")
        _ip("-n", ns, "neigh", "add", "10.77.0.2", "lladdr", "02:00:00:00:00:02", "dev", "v0",
            "nud", "permanent")
        subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "-o",
                        str(tmp_path / "link.key")], check=True, capture_output=True)
        (tmp_path / "tx.toml").write_text(
            '[link]\nkey_file = "link.key"\nhost = "10.77.0.2"\nport = 9\n'
            'heartbeat_interval = 0.25\n[status]\nfile = "tx.status.json"\ninterval = 0.2\n')
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
               "WATCHDOG_USEC": "1000000"}   # a pet every 0.5 s while healthy
        env.pop("WATCHDOG_PID", None)
        limit = 5.0   # TX's 'send' liveness: max(5 s, 3 x heartbeat_interval)
        with open(tmp_path / "tx.log", "wb") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                     "agent.cli", "tx", "-c", str(tmp_path / "tx.toml")],
                                    cwd=tmp_path, env=env, stdout=log, stderr=log)

        def status() -> dict[str, Any]:
            try:
                return dict(json.loads((tmp_path / "tx.status.json").read_text()))
            except (OSError, ValueError):
                return {}
        deadline = time.monotonic() + 20
        while not pets.times and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "tx.log").read_text()
            time.sleep(0.1)
        time.sleep(2.0)
        healthy = time.monotonic()
        assert len(pets.between(healthy - 2.0, healthy)) >= 3, pets.times

        _ip("-n", ns, "route", "add", "unreachable", "10.77.0.2/32")
        failing = time.monotonic()
        time.sleep(limit + 4.0)
        broken = time.monotonic()
        st = status()
        assert st["counters"]["send_errors"] > 10, st["counters"]
        assert "no send" in st["board"]["watchdog"], st["board"]
        # pets go on at most until the limit (and one petting interval) has passed ...
        late = pets.between(failing + limit + 1.0, broken)
        assert late == [], f"petted {len(late)} times while every send failed"

        _ip("-n", ns, "route", "del", "unreachable", "10.77.0.2/32")
        mended = time.monotonic()
        time.sleep(4.0)
        # ... and come back once a send works again (TX retries within 2 s)
        assert len(pets.between(mended, mended + 4.0)) >= 2, pets.times
        assert status()["board"]["watchdog"] == "petting"
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(10) == 0, (tmp_path / "tx.log").read_text()[-3000:]
        assert "not petting the watchdog: no send" in (tmp_path / "tx.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pets.close()
        notify.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
