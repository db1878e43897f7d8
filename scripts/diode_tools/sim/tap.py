"""Between TX and RX on loopback UDP: forwards every datagram and keeps a copy, for
tests and benches that replay what TX sent.

```
diode tx ─► Tap (records every datagram) ─► diode rx
```
"""

from __future__ import annotations

import socket
import threading

from agent.link import wire
from diode_tools.sim.agents import free_udp_port


class Tap:
    """Between TX and RX: forwards every datagram and keeps a copy."""

    def __init__(self, rx_port: int) -> None:
        self.port = free_udp_port()
        self.rx = ("127.0.0.1", rx_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Deep, as RX's own: this thread shares the GIL with the injector, and a tap
        # that drops TX's datagrams would make the test's counts lie.
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is not None:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
                    break
                except OSError:
                    continue
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.1)
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.recorded: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                d = self.sock.recv(65535)
            except TimeoutError:
                continue
            with self._lock:
                self.recorded.append(d)
            try:
                self.out.sendto(d, self.rx)
            except OSError:
                pass  # RX restarting: the datagram is lost, as on a wire

    def snapshot(self) -> list[bytes]:
        """What TX sent live (its recovery window's resent copies left out: RX skips
        those from their header, forged or not, so they could not show in its counts)."""
        with self._lock:
            return [d for d in self.recorded if not d[1] & wire.FLAG_RESENT]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.out.close()
