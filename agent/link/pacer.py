"""A token bucket that keeps TX under the link's bit rate. Sans-IO."""

from __future__ import annotations


class TokenBucket:
    """`rate_bps` bits per second, with a burst allowance of `burst_bytes`.

    `delay(nbytes, now)` says how long to wait before `nbytes` may go; `take`
    spends them. The bucket may go negative by one datagram so a datagram
    larger than the burst still goes out, just later.
    """

    def __init__(self, rate_bps: float, burst_bytes: int, now: float) -> None:
        if rate_bps <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_bps / 8.0  # bytes per second
        self.burst = float(burst_bytes)
        self._tokens = self.burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def delay(self, nbytes: int, now: float) -> float:
        self._refill(now)
        if self._tokens >= min(nbytes, self.burst):
            return 0.0
        return (min(nbytes, self.burst) - self._tokens) / self.rate

    def room(self, now: float) -> float:
        """Bytes that may go now without waiting."""
        self._refill(now)
        return max(0.0, self._tokens)

    def take(self, nbytes: int, now: float) -> None:
        self._refill(now)
        self._tokens -= nbytes
