"""Simulated OT syslog senders, and a collector that counts, for the demo and the bench.

`SyslogSender` sends RFC 5424 and RFC 3164 messages from a few "devices" to TX's
listeners, over UDP and TCP (octet counting), at a steady rate; every message
carries a sequence number. `SyslogCounter` is a TCP collector (octet counting,
what RX sends) that counts the distinct sequence numbers it got, whatever relay
header RX put in front. `octet_stream` builds a pre-framed burst for the bench.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

from agent.syslog.framing import StreamFramer

DEVICES = ("plc7", "hmi2", "rtu4")
_SEQ = re.compile(rb"seq=(\d+)")


def message(seq: int, rfc5424: bool, device: str, pad: int = 0) -> bytes:
    text = f"valve {seq % 17} position {seq % 100}% seq={seq}" + "x" * pad
    if rfc5424:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
        return f"<134>1 {stamp} {device} control 42 ID7 - {text}".encode()
    stamp = time.strftime("%b %e %H:%M:%S")
    return f"<30>{stamp} {device} control[42]: {text}".encode()


def octet_stream(n: int, size: int = 100) -> bytes:
    """`n` octet-counted RFC 5424 messages of about `size` bytes, ready to send."""
    out = []
    for i in range(n):
        m = message(i, True, DEVICES[i % 3])
        m += b"x" * max(0, size - len(m))
        out.append(b"%d %s" % (len(m), m))
    return b"".join(out)


class SyslogSender:
    """Half the messages over UDP, half over one TCP connection, at `rate` in all."""

    def __init__(self, udp: tuple[str, int], tcp: tuple[str, int], rate: float) -> None:
        self.udp_addr, self.tcp_addr, self.rate = udp, tcp, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syslog-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.create_connection(self.tcp_addr, timeout=10)
        try:
            start = time.monotonic()
            while not self._stop.is_set():
                due = int((time.monotonic() - start) * self.rate)
                while self.sent < due:
                    seq = self.sent
                    m = message(seq, seq % 3 != 0, DEVICES[seq % 3])
                    if seq % 2:
                        tcp.sendall(b"%d %s" % (len(m), m))
                    else:
                        udp.sendto(m, self.udp_addr)
                    self.sent += 1
                time.sleep(0.01)
        finally:
            udp.close()
            tcp.close()


class SyslogCounter:
    """A TCP syslog collector on a free loopback port; `delivered`: distinct seq= seen."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = socket.create_server((host, 0))
        self.host, self.port = host, self._server.getsockname()[1]
        self.seen: set[int] = set()
        self.messages = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="syslog-counter", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def delivered(self) -> int:
        return len(self.seen)

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        framer = StreamFramer(65535)
        with conn:
            conn.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for m, _ in framer.feed(data):
                    self.messages += 1
                    found = _SEQ.findall(m)
                    if found:
                        self.seen.add(int(found[-1]))

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
