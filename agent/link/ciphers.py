"""The receiver's AES-GCM ciphers per epoch, and a budget on deriving new ones. Sans-IO.

Deriving an epoch's cipher (HKDF-SHA256, then the AES key schedule) costs about
three times what opening a forged datagram does (5.4 against 1.7 us here), and
any datagram whose header names an epoch RX has no cipher for asks for one. A
flood of random epoch values thus cost RX far more than garbage did. Here:

- The followed epoch's cipher is held by the receiver itself; nothing here can
  push it out, so the live stream never waits for a derivation.
- Ciphers of epochs that authenticated a frame are kept (`trust`, LRU of
  `TRUSTED`); the receiver pins the few it must never lose (`pin`).
- A cipher derived for a datagram that then failed is kept too (LRU of
  `TRIED`): a cipher is right for its epoch whatever the datagram was, so a
  forged datagram that names a genuine new epoch costs that epoch nothing (its
  next datagram opens with the cached cipher), and a flood repeating a few
  epoch values costs one AES open per datagram, the price of garbage.
- New derivations are paid from two token buckets. `first` pays for an epoch
  value seen for the first time (a TX restart's first datagram, when no flood
  is on); `again` for a value seen before among recent unknown ones (a table of
  `SIGHTINGS` slots, indexed by a hash keyed from the link key, so an attacker
  cannot aim at the slot of a genuine epoch to make RX forget it). A flood of
  random values (each seen once) drains `first` only; a genuine new epoch
  repeats its value in every datagram (each frame goes out `repeat` times, and
  frames follow), so it is tried at its next datagram from `again`, and learnt.
  Beyond both budgets a datagram is dropped unopened and counted `unverified`,
  which costs a look-up, a multiplication and a comparison.

A flood that repeats each random value (to drain `again` too) still only gets
`first_rate + again_rate` derivations a second; a genuine new epoch then waits
for its share of them, while the epoch RX follows is never affected.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.link import seal

TRUSTED = 8
TRIED = 64
SIGHTINGS = 8192          # a power of two
_SLOT_SHIFT = 64 - (SIGHTINGS.bit_length() - 1)
_U64 = (1 << 64) - 1


class _Budget:
    """A token bucket over the `now` it is given (sans-IO). `next_at`: before it,
    `take` is sure to fail, so a caller under a flood can skip the call."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._at: float | None = None
        self.next_at = float("-inf")

    def take(self, now: float) -> bool:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.next_at = self._at + (1.0 - self._tokens) / self.rate
        return False


class EpochCiphers:
    def __init__(self, link_key: bytes, link_id: int, *, first_rate: float = 20.0,
                 again_rate: float = 50.0, burst: float = 20.0) -> None:
        self._key, self._link_id = link_key, link_id
        self._known: dict[int, AESGCM] = {}      # pinned, trusted and tried, for one look-up
        self._pinned: dict[int, AESGCM] = {}
        self._trusted: OrderedDict[int, None] = OrderedDict()
        self._tried: OrderedDict[int, None] = OrderedDict()
        self._slots: list[int] = [-1] * SIGHTINGS
        mac = hmac.new(link_key, b"diode epoch sightings", hashlib.sha256).digest()
        self._mult = int.from_bytes(mac[:8], "big") | 1
        self._first = _Budget(first_rate, burst)
        self._again = _Budget(again_rate, burst)
        self.derived = 0

    def derive(self, epoch: int) -> AESGCM:
        """A cipher for `epoch` now, outside the budget (for epochs RX expects)."""
        self.derived += 1
        return seal.derive_epoch_cipher(self._key, self._link_id, epoch)

    def get(self, epoch: int, now: float) -> AESGCM | None:
        """The cipher for `epoch`, or None when deriving it is over budget."""
        cipher = self._known.get(epoch)
        if cipher is not None:
            return cipher
        slot = (epoch * self._mult & _U64) >> _SLOT_SHIFT
        if self._slots[slot] == epoch:       # seen before, recently
            if now < self._again.next_at or not self._again.take(now):
                return None
        elif now < self._first.next_at or not self._first.take(now):
            self._slots[slot] = epoch
            return None
        cipher = self.derive(epoch)
        self._known[epoch] = cipher
        self._tried[epoch] = None
        if len(self._tried) > TRIED:
            self._forget(self._tried.popitem(last=False)[0])
        return cipher

    def trust(self, epoch: int, cipher: AESGCM) -> None:
        """`epoch` authenticated a frame under `cipher`: keep it among the trusted."""
        self._tried.pop(epoch, None)
        self._known[epoch] = cipher
        self._trusted[epoch] = None
        self._trusted.move_to_end(epoch)
        if len(self._trusted) > TRUSTED:
            self._forget(self._trusted.popitem(last=False)[0])

    def pin(self, ciphers: dict[int, AESGCM]) -> None:
        """The ciphers no flood of other epochs may evict (replaces the previous pins)."""
        old, self._pinned = self._pinned, dict(ciphers)
        for epoch in old:
            self._forget(epoch)
        self._known.update(self._pinned)

    def _forget(self, epoch: int) -> None:
        if epoch not in self._pinned and epoch not in self._trusted and epoch not in self._tried:
            self._known.pop(epoch, None)
