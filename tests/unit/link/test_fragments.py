"""Records of any size through the link core: the sender packs them into frames up to the
MTU and fragments the big ones, the receiver puts them back (agent/link/fragments.py).
"""

from __future__ import annotations

import random

import pytest

from agent.link import records
from agent.link.events import EpochChanged, Event
from agent.link.receiver import REJECT_REASONS

from .core_kit import delivered, msg, sender
from .link_kit import feed, receiver


@pytest.mark.parametrize(("repeat", "interleave", "mtu"), [(1, 1, 1400), (3, 8, 1400),
                                                           (2, 5, 600)])
def test_round_trip_random_sizes_with_fragmentation(repeat: int, interleave: int,
                                                     mtu: int) -> None:
    rng = random.Random(repeat * 100 + interleave)
    sizes = [rng.choice((0, 1, 50, 300, 1300, 1400, 5_000, 200_000, rng.randrange(3000)))
             for _ in range(150)]
    sizes += [200_000, 0, 1361, 1362, 1363]
    recs = [msg(i, size) for i, size in enumerate(sizes)]
    tx = sender(repeat=repeat, interleave=interleave, mtu=mtu)
    rx = receiver()
    now = 0.0
    events: list[Event] = []
    on_wire: list[bytes] = []
    # Records packed by the sender as it likes: flushed at random, otherwise by linger.
    for rec in recs:
        tx.push(records.encode(rec), now)
        if rng.random() < 0.3:
            tx.flush(now)
        deadline = tx.next_deadline()
        if deadline is not None and deadline <= now:
            tx.handle_timer(now)
        out = tx.pop_datagrams()
        on_wire += out
        events += feed(rx, out, now)
        now += rng.choice((0.0, 0.001, 0.003))
    out = tx.drain(now)
    on_wire += out
    events += feed(rx, out, now)

    assert delivered(events) == recs
    assert max(map(len, on_wire)) <= mtu
    assert isinstance(events[0], EpochChanged)
    assert rx.counters["lost"] == 0
    assert rx.counters["frames"] == tx.counters["frames"]
    assert rx.counters["duplicates"] == tx.counters["frames"] * (repeat - 1)
    assert tx.counters["fragments"] > 0
    rejects = {r: rx.counters[r] for r in REJECT_REASONS}
    assert not any(rejects.values()), rejects
