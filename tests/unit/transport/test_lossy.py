"""The seeded lossy channel: deterministic, and its rates are what it says."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.transport.lossy import LossyChannel, LossyTx


def _run(channel: LossyChannel, n: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        out += channel.transmit(i.to_bytes(4, "big"))
    return out + channel.drain()


class RecordingTx:
    """A TxTransport that records what it was asked to send."""

    overhead_bytes = 28

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, datagram: bytes) -> None:
        self.sent.append(datagram)

    def close(self) -> None:
        self.closed = True


def _everything(seed: int) -> LossyChannel:
    return LossyChannel(seed, loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1, burst=(50, 3))


def test_same_seed_same_output() -> None:
    a = _everything(7)
    b = _everything(7)
    assert _run(a, 5000) == _run(b, 5000)
    assert a.counters() == b.counters()


def test_different_seed_different_output() -> None:
    a = _everything(1)
    b = _everything(2)
    assert _run(a, 5000) != _run(b, 5000)


def test_clean_channel_is_identity() -> None:
    channel = LossyChannel(seed=0)
    items = [bytes([i % 256]) * (i % 7) for i in range(1000)]
    assert [d for item in items for d in channel.transmit(item)] == items
    assert channel.counters() == {
        "sent": 1000,
        "dropped": 0,
        "duplicated": 0,
        "reordered": 0,
        "corrupted": 0,
    }


@pytest.mark.parametrize("loss", [0.01, 0.05, 0.3])
def test_loss_fraction_within_tolerance(loss: float) -> None:
    n = 100_000
    channel = LossyChannel(seed=42, loss=loss)
    out = _run(channel, n)
    assert channel.sent == n
    assert len(out) == n - channel.dropped
    # ~5 standard deviations of a binomial at 100k trials, at most 0.0073.
    assert abs(channel.dropped / n - loss) < 5 * (loss * (1 - loss) / n) ** 0.5


@pytest.mark.parametrize(("period", "length", "n"), [(10, 3, 1000), (100, 5, 1234), (7, 7, 20)])
def test_burst_drops_exact_count(period: int, length: int, n: int) -> None:
    channel = LossyChannel(seed=0, burst=(period, length))
    out = _run(channel, n)
    expected = (n // period) * length + max(0, n % period - (period - length))
    assert channel.dropped == expected
    assert len(out) == n - expected
    # The drops are consecutive, at the end of each period.
    kept = {int.from_bytes(d, "big") for d in out}
    for i in range(n):
        assert (i in kept) == (i % period < period - length)


def test_duplicate_sends_twice() -> None:
    channel = LossyChannel(seed=3, duplicate=1.0)
    assert channel.transmit(b"a") == [b"a", b"a"]
    assert channel.duplicated == 1


def test_reorder_swaps_a_pair_and_drain_releases() -> None:
    channel = LossyChannel(seed=3, reorder=1.0)
    assert channel.transmit(b"1") == []
    assert channel.transmit(b"2") == [b"2", b"1"]
    assert channel.transmit(b"3") == []
    assert channel.drain() == [b"3"]
    assert channel.drain() == []
    assert channel.reordered == 2


def test_reorder_keeps_every_datagram() -> None:
    channel = LossyChannel(seed=5, reorder=0.3, duplicate=0.2)
    out = _run(channel, 10_000)
    assert sorted(set(out)) == [i.to_bytes(4, "big") for i in range(10_000)]
    assert len(out) == 10_000 + channel.duplicated
    assert out != sorted(out)


def test_corrupt_flips_exactly_one_bit() -> None:
    channel = LossyChannel(seed=9, corrupt=1.0)
    original = bytes(range(64))
    for _ in range(200):
        (got,) = channel.transmit(original)
        diff = sum(bin(a ^ b).count("1") for a, b in zip(got, original, strict=True))
        assert diff == 1
    assert channel.corrupted == 200
    assert channel.transmit(b"") == [b""]  # nothing to flip


@pytest.mark.parametrize(
    "make",
    [
        lambda: LossyChannel(0, loss=-0.1),
        lambda: LossyChannel(0, duplicate=1.5),
        lambda: LossyChannel(0, burst=(0, 0)),
        lambda: LossyChannel(0, burst=(5, 6)),
        lambda: LossyChannel(0, burst=(5, -1)),
    ],
)
def test_bad_parameters_are_refused(make: Callable[[], LossyChannel]) -> None:
    with pytest.raises(ValueError):
        make()


def test_lossy_tx_wraps_inner() -> None:
    inner = RecordingTx()
    tx = LossyTx(inner, LossyChannel(seed=11, loss=0.2, reorder=0.1))
    assert tx.overhead_bytes == 28
    for i in range(1000):
        tx.send(i.to_bytes(4, "big"))
    tx.close()
    assert inner.closed
    assert len(inner.sent) == 1000 - tx.channel.dropped
    assert 100 < tx.channel.dropped < 300
