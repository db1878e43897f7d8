"""Run a TX/RX pair as real processes around two real brokers, for the demo and benches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from diode_tools.sim.mosquitto import Broker, free_port, terminate


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the demo or bench process dies, however it dies."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentPair:
    """Writes tx.toml and rx.toml into `workdir` and runs `diode tx` and `diode rx`."""

    def __init__(self, workdir: Path, ot: Broker | None, it: Broker | None, *,
                 tx_extra: str = "", rx_extra: str = "", link_extra: str = "", qos: int = 1,
                 carousel_period: float = 30.0) -> None:
        """Without brokers (ot and it None) the pair has no MQTT channel: the extras
        hold the channels."""
        self.dir = workdir
        self.key = workdir / "link.key"
        if not self.key.exists():
            subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "-o", str(self.key)],
                           check=True, capture_output=True)
        port = self.port = free_udp_port()   # RX's link port
        self.mqtt = ot is not None and it is not None
        tx_mqtt = rx_mqtt = ""
        if ot is not None and it is not None:
            tx_mqtt = (f'[[mqtt]]\nname = "plant"\nhost = "{ot.host}"\nport = {ot.port}\n'
                       f'topics = ["#"]\nqos = {qos}\ncarousel_period = {carousel_period}\n')
            rx_mqtt = f'[[mqtt]]\nname = "plant"\nhost = "{it.host}"\nport = {it.port}\n'
        (workdir / "tx.toml").write_text(
            f'[link]\nkey_file = "link.key"\nport = {port}\n{link_extra}\n'
            f'[status]\nfile = "tx.status.json"\n\n{tx_mqtt}{tx_extra}\n')
        # RX keeps its link state, as on a board: replays stay replays across a restart,
        # and a restarted RX knows what it missed
        (workdir / "rx.toml").write_text(
            f'[link]\nkey_file = "link.key"\nhost = "127.0.0.1"\nport = {port}\n'
            f'state_file = "rx-link.json"\n'
            f'[status]\nfile = "rx.status.json"\n\n{rx_mqtt}{rx_extra}\n')
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{role}.log", "ab")  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", role, "-c",
                                 str(self.dir / f"{role}.toml")], stdout=log, stderr=log,
                                cwd=self.dir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=_die_with_parent)
        self.procs[role] = proc
        return proc

    def status(self, role: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.dir / f"{role}.status.json").read_text())
            return data
        except (OSError, ValueError):
            return None

    def wait_status(self, role: str, timeout: float = 30.0) -> None:
        """Until `role` writes its status file (RX: once it listens)."""
        deadline = time.monotonic() + timeout
        while self.status(role) is None:
            proc = self.procs[role]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{role} wrote no status (exit {proc.returncode}):\n"
                                   f"{self.log(role)}")
            time.sleep(0.05)

    def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status("rx")
            if st and st.get("link_state") in ("UP", "DEGRADED") and (
                    not self.mqtt or st.get("sinks", {}).get("plant", {}).get("state")
                    == "connected") and all(s.get("state") == "connected" for s in st.get(
                        "syslog", {}).values()) and self._tx_connected():
                return
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{role} exited with {proc.returncode}:\n{self.log(role)}")
            time.sleep(0.1)
        raise TimeoutError(f"link not UP after {timeout} s\n{self.log('tx')}\n{self.log('rx')}")

    def _tx_connected(self) -> bool:
        st = self.status("tx")
        return bool(st) and all(v == "connected" for v in st["sources"].values())  # type: ignore[index]

    def log(self, role: str) -> str:
        try:
            return (self.dir / f"{role}.log").read_text()[-4000:]
        except OSError:
            return ""

    def peak_rss_mb(self, role: str) -> float | None:
        try:
            for line in Path(f"/proc/{self.procs[role].pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, KeyError):
            pass
        return None

    def kill(self, role: str) -> None:
        """SIGKILL, like a power cut of that process (no clean save of anything)."""
        proc = self.procs.pop(role)
        proc.kill()
        proc.wait(10)

    def stop(self, role: str, timeout: float = 10.0) -> int | None:
        proc = self.procs.pop(role, None)
        if proc is None:
            return None
        terminate(proc, timeout)
        return proc.returncode

    def close(self) -> None:
        for role in list(self.procs):
            self.stop(role)


__all__ = ["AgentPair", "free_port", "free_udp_port"]
