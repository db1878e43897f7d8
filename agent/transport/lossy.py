"""A seeded, in-memory lossy channel, and a TX transport that goes through one.

Real links lose, duplicate, reorder and (on serial) corrupt datagrams. The
link core must cope with all of it, and tests must be able to replay the
exact same damage, so every decision comes from `random.Random(seed)`.

For each datagram handed to `LossyChannel.transmit`, in this order:

1. burst: with `burst=(period, length)`, the last `length` datagrams of every
   `period` are dropped (positions period-length .. period-1, counting from
   0), so the first datagrams of a run always get through;
2. loss: dropped with probability `loss`;
3. corrupt: one random bit flipped with probability `corrupt`;
4. if a datagram is being held back, it is released right after this one
   (the pair comes out swapped); otherwise this one is held back with
   probability `reorder`, or else sent twice with probability `duplicate`.

So `transmit` returns 0, 1 or 2 datagrams. `drain` releases a datagram still
held back. Random draws are made only for non-zero rates, so a given seed and
configuration always produce the same output.
"""

from __future__ import annotations

import random

from agent.transport.base import TxTransport


def _check_rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


class LossyChannel:
    """Deterministic datagram damage for tests and the demo's `--loss`."""

    def __init__(
        self,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        burst: tuple[int, int] | None = None,
    ) -> None:
        self.loss = _check_rate("loss", loss)
        self.duplicate = _check_rate("duplicate", duplicate)
        self.reorder = _check_rate("reorder", reorder)
        self.corrupt = _check_rate("corrupt", corrupt)
        if burst is not None:
            period, length = burst
            if period <= 0 or not 0 <= length <= period:
                raise ValueError(f"burst must be (period > 0, 0 <= length <= period), got {burst}")
        self.burst = burst
        self._rng = random.Random(seed)
        self._held: bytes | None = None
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.corrupted = 0

    def transmit(self, datagram: bytes) -> list[bytes]:
        """Pass one datagram through the channel; return what comes out now."""
        index = self.sent
        self.sent += 1
        if self.burst is not None:
            period, length = self.burst
            if index % period >= period - length:
                self.dropped += 1
                return []
        rng = self._rng
        if self.loss and rng.random() < self.loss:
            self.dropped += 1
            return []
        if self.corrupt and datagram and rng.random() < self.corrupt:
            datagram = self._flip_bit(datagram)
            self.corrupted += 1
        if self._held is not None:
            held, self._held = self._held, None
            return [datagram, held]
        if self.reorder and rng.random() < self.reorder:
            self._held = datagram
            self.reordered += 1
            return []
        if self.duplicate and rng.random() < self.duplicate:
            self.duplicated += 1
            return [datagram, datagram]
        return [datagram]

    def drain(self) -> list[bytes]:
        """Release a datagram still held back for reordering."""
        if self._held is None:
            return []
        held, self._held = self._held, None
        return [held]

    def counters(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "corrupted": self.corrupted,
        }

    def _flip_bit(self, datagram: bytes) -> bytes:
        bit = self._rng.randrange(len(datagram) * 8)
        damaged = bytearray(datagram)
        damaged[bit // 8] ^= 1 << (bit % 8)
        return bytes(damaged)


class LossyTx:
    """TxTransport that damages datagrams on their way into another transport.

    This is how the demo shows `--loss P` over a real UDP socket: the inner
    transport sends whatever the channel lets through.
    """

    def __init__(self, inner: TxTransport, channel: LossyChannel) -> None:
        self.inner = inner
        self.channel = channel
        self.overhead_bytes = inner.overhead_bytes

    def send(self, datagram: bytes) -> None:
        for out in self.channel.transmit(datagram):
            self.inner.send(out)

    def close(self) -> None:
        """Release any held-back datagram, then close the inner transport."""
        try:
            for out in self.channel.drain():
                self.inner.send(out)
        finally:
            self.inner.close()
