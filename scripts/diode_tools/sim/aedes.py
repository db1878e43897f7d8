"""An MQTT broker that is not Mosquitto: aedes (Node.js), for tests that must not pass
only because both sides of the diode run the same broker implementation.

    with AedesBroker() as broker:
        ...  # connect to broker.host, broker.port (MQTT 3.1.1; aedes speaks no v5)

`scripts/setup.sh` installs aedes from the npm registry into `scripts/aedes/`
(`npm ci`, the version pinned by its package-lock.json); the launcher is
`scripts/aedes/broker.mjs`. Node.js 20 or later is needed (aedes 1.x).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from diode_tools.sim.mosquitto import BrokerError, free_port, terminate

AEDES_DIR = Path(__file__).resolve().parents[2] / "aedes"
_LISTENING = "listening"


def find_aedes() -> tuple[str, Path]:
    """(node binary, launcher script), or BrokerError naming the fix."""
    node = shutil.which("node") or shutil.which("nodejs")
    launcher = AEDES_DIR / "broker.mjs"
    if node is None or not (AEDES_DIR / "node_modules" / "aedes").is_dir():
        raise BrokerError("aedes is not installed (Node.js and scripts/aedes/node_modules): "
                          "run ./scripts/setup.sh, which installs both")
    return node, launcher


class AedesBroker:
    """One aedes process on a free loopback port; stop() and start() keep the port
    (aedes keeps nothing across a restart: its store is in memory)."""

    def __init__(self, host: str = "127.0.0.1", start_timeout: float = 15.0) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="aedes-"))

    @property
    def port(self) -> int:
        if not self._port:
            raise BrokerError("aedes not started yet: no port picked")
        return self._port

    @property
    def log_path(self) -> Path:
        return self._dir / "aedes.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        node, launcher = find_aedes()
        if not self._port:
            self._port = free_port(self.host)
        offset = len(self.log_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([node, str(launcher), self.host, str(self._port)],
                                          cwd=AEDES_DIR, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log)
        deadline = time.monotonic() + self.start_timeout
        while _LISTENING not in self.log_text()[offset:] or not self._accepts():
            if self._proc.poll() is not None:
                raise BrokerError(f"aedes exited {self._proc.returncode}:\n"
                                  f"{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"aedes not listening within {self.start_timeout} s")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self._port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
