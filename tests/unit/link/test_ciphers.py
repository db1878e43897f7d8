"""A flood of new epoch values stays as cheap to reject as garbage (agent/link/ciphers.py).

Every datagram naming an epoch RX has no key for used to cost a key derivation
(HKDF, about three AES opens). Now derivations are paid from a budget: the
followed epoch never needs one, and a genuine new epoch is learnt at its second
datagram even while random epochs pour in. `diode bench flood --core` measures
the rates; these tests count derivations, which is what the budget bounds.
"""

from __future__ import annotations

import random

from agent.link.events import EpochChanged

from .link_kit import T0, Tx, epoch_at, forged, message, outcomes, receiver, topics

FLOOD_RATE = 100_000.0   # datagrams per (simulated) second


def _budget(seconds: float) -> float:
    """Most derivations the default budget allows over `seconds` (both bursts, both rates)."""
    return 2 * 20 + (20.0 + 50.0) * seconds


def test_random_epoch_flood_derives_a_bounded_number_of_keys_and_misses_no_live_frame() -> None:
    rng = random.Random(1)
    live = Tx(epoch_at(T0))
    rx = receiver()
    got = topics(rx.receive(live.frame(message("live", 0))[0], 0.0))
    n, sent = 100_000, 1
    for i in range(n):
        now = i / FLOOD_RATE
        rx.receive(forged(rng.getrandbits(64), rng.getrandbits(32)), now)
        if i % 100 == 0:
            got += topics(rx.receive(live.frame(message("live", sent))[0], now))
            sent += 1
    assert got == [f"live/{i}" for i in range(sent)]
    assert rx.keys_derived <= _budget(n / FLOOD_RATE) + 1
    assert rx.counters["unverified"] > 0.99 * n
    assert rx.counters["unverified"] + rx.counters["auth_failed"] == n
    assert rx.counters["valid"] == sent
    assert outcomes(rx) == rx.counters["datagrams"]


def test_a_genuine_new_epoch_is_learnt_at_its_second_datagram_during_a_flood() -> None:
    rng = random.Random(2)
    old, new = Tx(epoch_at(T0)), Tx(epoch_at(T0 + 20), repeat=3)
    rx = receiver()
    rx.receive(old.frame(message("old", 0))[0], 0.0)
    now, i = 0.0, 0
    for _ in range(5000):                          # the flood is on: budget spent
        now = i / FLOOD_RATE
        rx.receive(forged(rng.getrandbits(64), 0), now)
        i += 1
    events = []
    datagrams = [d for k in range(20) for d in new.frame(message("new", k))]
    for n, d in enumerate(datagrams):               # the TX restarted: 3 copies a frame
        for _ in range(30):
            now = i / FLOOD_RATE
            rx.receive(forged(rng.getrandbits(64), 0), now)
            i += 1
        evs = rx.receive(d, now)
        if EpochChanged(old.epoch, new.epoch) in evs:
            assert n == 1    # its first datagram went unverified, the second was tried
        events += evs
    assert rx.epoch == new.epoch
    assert topics(events) == [f"new/{k}" for k in range(20)]   # frame 0 from its 2nd copy


def test_a_forged_datagram_naming_a_genuine_new_epoch_does_not_poison_it() -> None:
    old, new = Tx(epoch_at(T0)), Tx(epoch_at(T0 + 20))
    rx = receiver()
    rx.receive(old.frame(message("old", 0))[0], 0.0)
    before = rx.keys_derived
    assert rx.receive(forged(new.epoch, 0), 1.0) == []      # tried, failed: key kept
    assert rx.counters["auth_failed"] == 1
    assert topics(rx.receive(new.frame(message("new", 0))[0], 1.0)) == ["new/0"]
    assert rx.keys_derived == before + 1


def test_a_flood_repeating_a_few_epochs_costs_opens_not_derivations() -> None:
    rng = random.Random(3)
    live = Tx(epoch_at(T0))
    rx = receiver()
    rx.receive(live.frame(message("live", 0))[0], 0.0)
    before = rx.keys_derived
    values = [rng.getrandbits(64) for _ in range(30)]
    for i in range(30_000):
        rx.receive(forged(values[i % 30], i), i / FLOOD_RATE)
    assert rx.keys_derived - before <= 30
    # Once each value has its key, every datagram is one failed open, like garbage.
    assert rx.counters["unverified"] <= 30
    assert rx.counters["valid"] == 1 and outcomes(rx) == rx.counters["datagrams"]


def test_an_adaptive_flood_repeating_each_value_stays_bounded() -> None:
    # Each random value sent twice, so the `again` budget drains too: derivations stay
    # bounded, and the followed epoch is not touched.
    rng = random.Random(4)
    live = Tx(epoch_at(T0))
    rx = receiver()
    got = topics(rx.receive(live.frame(message("live", 0))[0], 0.0))
    for i in range(50_000):
        value = rng.getrandbits(64)
        for _ in range(2):
            rx.receive(forged(value, 0), i / (FLOOD_RATE / 2))
        if i % 500 == 0:
            got += topics(rx.receive(live.frame(message("live", len(got)))[0], i / 50_000))
    assert rx.keys_derived <= _budget(1.0) + 1
    assert got == [f"live/{k}" for k in range(len(got))] and len(got) == 101
