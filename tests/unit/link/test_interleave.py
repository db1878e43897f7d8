"""Repetition coding through the link core (agent/link/interleave.py): identical copies,
what gets through random loss, and bursts up to the interleave depth that lose nothing.
"""

from __future__ import annotations

import math
from collections.abc import Container

import pytest

from agent.link import records
from agent.link.events import Event, RecordReceived
from agent.link.receiver import LinkReceiver
from agent.transport.lossy import LossyChannel

from .core_kit import TICK, Pump, delivered, frames_of, lost_total, msg, one_frame_per_record, sender
from .link_kit import feed, receiver

# --- copies ---------------------------------------------------------------------------


def test_datagrams_respect_mtu_and_copies_are_identical() -> None:
    tx = sender(repeat=3, interleave=8, mtu=900)
    datagrams = one_frame_per_record(tx, [msg(i, 100 * i) for i in range(40)])
    assert max(map(len, datagrams)) <= 900
    assert len(datagrams) == 3 * tx.counters["frames"]
    counts: dict[bytes, int] = {}
    for d in datagrams:
        counts[d] = counts.get(d, 0) + 1
    assert set(counts.values()) == {3}


# --- statistics under random loss --------------------------------------------------


@pytest.mark.parametrize("repeat", [1, 2, 3])
@pytest.mark.parametrize("loss", [0.05, 0.2, 0.3])
def test_delivered_fraction_matches_theory(loss: float, repeat: int) -> None:
    frames = 20_000
    channel = LossyChannel(seed=int(loss * 1000) + repeat, loss=loss)
    pump = Pump(sender(repeat=repeat, interleave=8), receiver(), channel.transmit)
    recs = [msg(i, 60) for i in range(frames)]
    for rec in recs:
        pump.step(rec)
    pump.finish()
    rx = pump.rx
    theory = 1 - loss**repeat
    sigma = math.sqrt(theory * (1 - theory) / frames)
    fraction = rx.counters["frames"] / frames
    assert abs(fraction - theory) <= 5 * sigma + 1 / frames, (fraction, theory, sigma)
    # Whatever is delivered is intact, and in order but for the frames sent before the
    # receiver joined (their first copies lost), which come late, marked recovered;
    # what is not delivered is counted.
    got = [e for e in pump.events if isinstance(e, RecordReceived)]
    assert len(got) == rx.counters["frames"]
    indices = [int(e.record.topic[2:]) for e in got if not e.recovered]
    assert indices == sorted(indices)
    assert all(e.seq < got[0].seq for e in got if e.recovered)
    assert rx.counters["recovered"] == sum(e.recovered for e in got) < 10
    assert all(e.record == recs[int(e.record.topic[2:])] for e in got)
    assert lost_total(pump.events) == rx.counters["lost"]
    assert rx.counters["late"] == 0   # no copy that arrived was thrown away
    # Only frames lost at the very tail can go unnoticed (nothing comes after them).
    assert 0 <= frames - rx.counters["frames"] - rx.counters["lost"] <= 10


# --- bursts ----------------------------------------------------------------------


def copy_spacing(repeat: int, interleave: int) -> int:
    """Datagrams from one copy of a frame to the next under steady traffic (>= interleave)."""
    stride = max(1, math.ceil((interleave - 1) / repeat))
    return stride * repeat + 1


def steady_stream(repeat: int, interleave: int, frames: int
                  ) -> tuple[list[bytes], range, list[records.Record]]:
    """All datagrams in wire order, and the index range emitted under steady traffic.

    Steady: every interleaver step emits `repeat` datagrams (after the line has
    filled, before the shutdown drain). That is where the burst guarantee holds.
    """
    recs: list[records.Record] = [msg(i) for i in range(frames)]
    tx = sender(repeat=repeat, interleave=interleave)
    steps = frames_of(tx, recs)
    first = next(i for i, step in enumerate(steps) if len(step) == repeat)
    assert all(len(step) == repeat for step in steps[first:])
    start = sum(len(step) for step in steps[:first])
    stop = sum(len(step) for step in steps)
    datagrams = [d for step in steps for d in step] + tx.drain(frames * TICK)
    return datagrams, range(start, stop), recs


def burst_offsets(steady: range, repeat: int, interleave: int, length: int) -> range:
    """Offsets inside the steady range covering every phase of the copy pattern."""
    phases = copy_spacing(repeat, interleave) * repeat + repeat
    offsets = range(steady.start + 1, steady.start + 1 + phases)
    assert offsets.stop + length <= steady.stop
    return offsets


def run_with_drops(datagrams: list[bytes], dropped: Container[int]
                   ) -> tuple[LinkReceiver, list[Event]]:
    """Feed all datagrams but those at the `dropped` indices; then time out every gap."""
    rx = receiver()
    events = feed(rx, (d for i, d in enumerate(datagrams) if i not in dropped))
    events += rx.handle_timer(1e9)
    return rx, events


@pytest.mark.parametrize(("repeat", "interleave"), [(2, 8), (3, 8), (2, 4), (3, 16), (5, 8)])
def test_any_burst_up_to_interleave_loses_nothing(repeat: int, interleave: int) -> None:
    # (Losing fewer datagrams never hurts, so the full depth at every offset is the
    # real check; shorter runs are there for the reader.)
    frames = 3 * copy_spacing(repeat, interleave) + 2 * interleave
    datagrams, steady, recs = steady_stream(repeat, interleave, frames)
    for length in sorted({1, interleave // 2, interleave}):
        for offset in burst_offsets(steady, repeat, interleave, length):
            rx, events = run_with_drops(datagrams, range(offset, offset + length))
            assert delivered(events) == recs, (length, offset)
            assert rx.counters["lost"] == 0


@pytest.mark.parametrize(("repeat", "interleave"), [(2, 8), (3, 8), (3, 4), (2, 16)])
def test_periodic_bursts_of_interleave_depth_lose_nothing(repeat: int, interleave: int) -> None:
    datagrams, steady, recs = steady_stream(repeat, interleave, 400)
    spacing = copy_spacing(repeat, interleave)
    # Bursts no closer than one copy spacing apart: each takes one copy at most.
    channel = LossyChannel(seed=1, burst=(spacing + interleave, interleave))
    kept = {i for i in steady if channel.transmit(datagrams[i])}
    rx, events = run_with_drops(datagrams, set(steady) - kept)
    assert channel.dropped > len(steady) // 3
    assert delivered(events) == recs
    assert rx.counters["lost"] == 0


@pytest.mark.parametrize(("repeat", "interleave"), [(2, 8), (3, 8), (2, 4)])
def test_bursts_beyond_the_guarantee_lose_frames_and_count_them(repeat: int,
                                                                interleave: int) -> None:
    length = (repeat - 1) * copy_spacing(repeat, interleave) + 1  # all copies of some frame
    datagrams, steady, recs = steady_stream(repeat, interleave, 4 * length)
    lost_somewhere = 0
    for offset in burst_offsets(steady, repeat, interleave, length):
        rx, events = run_with_drops(datagrams, range(offset, offset + length))
        got = delivered(events)
        assert lost_total(events) == rx.counters["lost"]
        assert len(got) + rx.counters["lost"] == len(recs)
        assert [r for r in recs if r in got] == got    # in order, nothing invented
        lost_somewhere += rx.counters["lost"]
    assert lost_somewhere > 0


def test_random_bursts_are_accounted() -> None:
    channel = LossyChannel(seed=3, loss=0.02, burst=(97, 20))
    pump = Pump(sender(repeat=2, interleave=8), receiver(), channel.transmit)
    for i in range(3000):
        pump.step(msg(i))
    pump.finish()
    rx = pump.rx
    assert rx.counters["lost"] > 0
    assert lost_total(pump.events) == rx.counters["lost"]
    assert rx.counters["frames"] + rx.counters["lost"] <= 3000
    assert rx.counters["late"] == 0
