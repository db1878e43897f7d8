"""The two small interfaces every transport implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

DatagramHandler = Callable[[bytes], None]


class TxTransport(Protocol):
    """Sends datagrams one way. Never listens, never reads."""

    # Bytes the wire carries per datagram beyond the datagram itself
    # (IP/UDP/Ethernet headers, or serial framing), for the pacer's budget.
    overhead_bytes: int

    def send(self, datagram: bytes) -> None:
        """Put one datagram on the wire now. Raises OSError on a local failure."""

    def close(self) -> None: ...


class RxTransport(Protocol):
    """Receives datagrams and hands each to `on_datagram`."""

    async def start(self, on_datagram: DatagramHandler) -> None:
        """Begin receiving; returns once receiving has started."""

    def close(self) -> None: ...
