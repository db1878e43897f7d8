"""Epoch rules (agent/link/epochs.py): replays never pin RX to an old epoch, never
cost a live frame and are never delivered twice, across RX restarts; a new TX
whose clock is behind is still followed.

The attacker of these tests holds no key: they replay recorded datagrams (at any
time, any pace, any order) and forge headers.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.link.epochs import MEMORY_EPOCHS, EpochMemory
from agent.link.events import EpochChanged, FramesLost, RecordReceived
from agent.link.receiver import LinkReceiver

from .core_kit import EPOCH, OLD_EPOCH, delivered, msg, one_frame_per_record, sender, single_copies
from .link_kit import T0, Tx, epoch_at, feed, forged, message, outcomes, receiver, topics

TAKEOVER = 3.0


def test_one_replayed_datagram_after_a_quiet_spell_changes_nothing() -> None:
    # The attack: the link is quiet for longer than epoch_takeover, and one
    # datagram recorded from an epoch this RX never followed arrives.
    recorded = Tx(epoch_at(T0 - 3600)).frame(message("old", 0))
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    assert topics(feed(rx, live.frames("live", range(10)), now=0.0)) == \
        [f"live/{i}" for i in range(10)]
    assert feed(rx, recorded, now=5.0) == []
    assert rx.epoch == live.epoch
    assert rx.counters["stale_epoch"] == 1
    # Genuine traffic keeps flowing: nothing is taken for a replay.
    assert topics(feed(rx, live.frames("live", range(10, 20)), now=5.1)) == \
        [f"live/{i}" for i in range(10, 20)]
    assert rx.counters["replayed"] == 0 and rx.counters["epochs"] == 1


def test_a_recorded_burst_cannot_switch_either() -> None:
    recorded = Tx(epoch_at(T0 - 3600)).frames("old", range(200))
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    feed(rx, live.frames("live", range(3)), now=0.0)
    # Long silence, then the whole recording at once: its fresh frames span no time.
    assert feed(rx, recorded, now=60.0) == []
    assert rx.epoch == live.epoch and rx.counters["stale_epoch"] == 200
    assert topics(feed(rx, live.frames("live", range(3, 5)), now=60.5)) == ["live/3", "live/4"]


def _merge(*streams: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    return sorted((x for s in streams for x in s), key=lambda x: x[0])


def test_a_whole_session_replayed_at_its_own_pace_never_displaces_a_live_epoch() -> None:
    old = Tx(epoch_at(T0 - 3600))
    replay = [(5.0 + 0.1 * i, d) for i in range(300) for d in old.frame(message("old", i))]
    live = Tx(epoch_at(T0))
    genuine = [(float(t), d) for t in range(40) for d in live.heartbeat(float(t))]
    rx = receiver(epoch_takeover=TAKEOVER)
    events = [e for t, d in _merge(replay, genuine) for e in rx.receive(d, t)]
    assert rx.epoch == live.epoch and rx.counters["epochs"] == 1
    assert topics(events) == []                       # nothing of the old session
    assert sum(isinstance(e, RecordReceived) for e in events) == 40  # every heartbeat
    assert rx.counters["stale_epoch"] == 300


def test_live_epoch_comes_back_after_a_replay_won_during_a_pause() -> None:
    """The attack that remains: the genuine TX pauses longer than epoch_takeover and a
    complete recording of an epoch RX never followed is played meanwhile. RX then
    follows it (and delivers what it never had), but the genuine epoch is not
    retired: it is followed again at its second fresh frame, and loses nothing."""
    old = Tx(epoch_at(T0 - 3600))
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    events = feed(rx, live.frames("live", range(10)), now=0.0)
    replay = [(4.0 + 0.1 * i, d) for i in range(60) for d in old.frame(message("old", i))]
    resumed = [(10.0 + 0.1 * (i - 10), d) for i in range(10, 30)
               for d in live.frame(message("live", i))]
    late_replay = [(10.05 + 0.1 * (i - 60), d) for i in range(60, 80)
                   for d in old.frame(message("old", i))]
    events += [e for t, d in _merge(replay, resumed, late_replay) for e in rx.receive(d, t)]
    assert EpochChanged(live.epoch, old.epoch) in events   # the replay did win at t=7...
    assert EpochChanged(old.epoch, live.epoch) in events   # ...and lost at live's 2nd frame
    # What it delivered meanwhile is the documented limit: frames RX never had.
    assert topics(events) == ([f"live/{i}" for i in range(10)] + [f"old/{i}" for i in range(61)]
                              + [f"live/{i}" for i in range(10, 30)])
    assert rx.epoch == live.epoch
    assert not any(isinstance(e, FramesLost) for e in events)
    # Held: the replay's first 3 s, live/10, then the replay again (on probation).
    assert rx.counters["stale_epoch"] == 30 + 1 + 19


def test_new_tx_with_its_clock_behind_is_followed_and_loses_nothing() -> None:
    rx = receiver(epoch_takeover=TAKEOVER)
    old_board = Tx(epoch_at(T0))
    feed(rx, old_board.frames("a", range(5)), now=0.0)
    # Board swapped; the new one has no RTC and no NTP: its clock is a month behind.
    new_board = Tx(epoch_at(T0 - 30 * 86400))
    stream: list[tuple[float, bytes]] = []
    for i in range(60):   # from t=40 s: data every 0.1 s, a heartbeat every second
        t = 40.0 + 0.1 * i
        stream += [(t, d) for d in new_board.frame(message("b", i), t)]
        if i % 10 == 0:
            stream += [(t, d) for d in new_board.heartbeat(t)]
    calls = [(t, rx.receive(d, t)) for t, d in stream]
    events = [e for _, evs in calls for e in evs]
    switched_at, at_switch = next((t, evs) for t, evs in calls
                                  if EpochChanged(old_board.epoch, new_board.epoch) in evs)
    assert topics(events) == [f"b/{i}" for i in range(60)]      # all of it, in order
    assert rx.epoch == new_board.epoch and rx.counters["lost"] == 0
    # Followed once the old board had been silent, and the new one heard, for 3 s;
    # what it sent meanwhile was held (3 s of frames and heartbeats). Of the held
    # heartbeats only the newest reaches the watchdog (the others: stale samples).
    assert switched_at == pytest.approx(43.0)
    assert rx.counters["stale_epoch"] == 30 + 3
    assert sum(isinstance(e, RecordReceived) and not hasattr(e.record, "topic")
               for e in at_switch) == 1


def test_probation_needs_a_continuing_stream_not_two_frames_an_hour_apart() -> None:
    recorded = Tx(epoch_at(T0 - 86400)).frames("old", range(3))
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    feed(rx, live.frames("live", range(2)), now=0.0)
    assert feed(rx, recorded[:1], now=1.0) == []
    assert feed(rx, recorded[1:2], now=3600.0) == []   # silence, and a span: but idle
    assert rx.epoch == live.epoch
    assert feed(rx, recorded[2:], now=3603.5) != []     # a stream over 3.5 s: the limit
    assert rx.epoch != live.epoch


def test_restart_keeps_replays_of_what_rx_had_as_replays() -> None:
    first, second = Tx(epoch_at(T0 - 60)), Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    recorded = first.frames("a", range(10)) + second.frames("b", range(20))
    assert len(topics(feed(rx, recorded, now=0.0))) == 30
    memory = rx.memory()
    # A restarted RX, while the recording loops at it.
    restarted = receiver(memory=memory, epoch_takeover=TAKEOVER)
    events = feed(restarted, recorded * 3, now=100.0)
    assert events == []
    assert restarted.counters["replayed"] == 90 and restarted.counters["lost"] == 0
    # The genuine TX went on meanwhile: RX joins it at its next frame, no loss counted.
    events = feed(restarted, second.frames("b", range(20, 30))[5:], now=100.5)
    assert events[0] == EpochChanged(None, second.epoch)
    assert topics(events) == [f"b/{i}" for i in range(25, 30)]
    assert restarted.counters["lost"] == 0
    # Without its memory, the same RX would have published the recording again.
    amnesiac = receiver(epoch_takeover=TAKEOVER)
    assert len(topics(feed(amnesiac, recorded, now=100.0))) > 0


def test_restarted_rx_while_an_unseen_epoch_loops_follows_the_genuine_one() -> None:
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    feed(rx, live.frames("live", range(10)), now=0.0)
    restarted = receiver(memory=rx.memory(), epoch_takeover=TAKEOVER)
    # Recorded before RX ever ran: RX cannot place it, but it is older than the newest.
    recording = Tx(epoch_at(T0 - 7200)).frames("old", range(100))
    loop = [(50.0 + 0.05 * i, recording[i % 100]) for i in range(400)]
    genuine = [(50.0 + 0.5 * i, d) for i in range(40)
               for d in live.frame(message("live", 10 + i))]
    events = [e for t, d in _merge(loop, genuine) for e in restarted.receive(d, t)]
    assert topics(events) == [f"live/{i}" for i in range(10, 50)]
    assert restarted.counters["lost"] == 0 and restarted.epoch == live.epoch


def test_tx_restart_is_followed_at_once_even_while_replays_loop() -> None:
    first, second = Tx(epoch_at(T0)), Tx(epoch_at(T0 + 30))
    rx = receiver(epoch_takeover=TAKEOVER)
    beat = first.heartbeat()          # it says: one copy per frame
    recorded = first.frames("a", range(10))
    feed(rx, beat + recorded, now=0.0)
    events = feed(rx, recorded + second.frames("b", range(3)) + recorded, now=1.0)
    assert EpochChanged(first.epoch, second.epoch) in events
    assert topics(events) == ["b/0", "b/1", "b/2"]
    assert rx.counters["replayed"] == 20


def test_forged_datagrams_never_change_what_rx_follows() -> None:
    live = Tx(epoch_at(T0))
    rx = receiver(epoch_takeover=TAKEOVER)
    feed(rx, live.frames("live", range(5)), now=0.0)
    rng = random.Random(4)
    for t in range(100):
        epoch = rng.choice([live.epoch, live.epoch - 1, live.epoch + 1, rng.getrandbits(64)])
        assert rx.receive(forged(epoch, rng.randrange(10)), 10.0 + t) == []
    assert rx.epoch == live.epoch
    assert rx.counters["auth_failed"] + rx.counters["unverified"] == 100
    assert topics(feed(rx, live.frames("live", range(5, 7)), now=200.0)) == ["live/5", "live/6"]


# -- the memory -------------------------------------------------------------------------


def test_memory_is_bounded_keeps_the_newest_and_round_trips_through_json() -> None:
    rx = receiver()
    epochs = [epoch_at(T0 + 10 * i) for i in range(MEMORY_EPOCHS + 6)]
    for i, e in enumerate(epochs):
        feed(rx, Tx(e).frames("x", range(3)), now=float(i))
    memory = rx.memory()
    assert len(memory.seen) == MEMORY_EPOCHS
    assert memory.current == epochs[-1] == memory.newest
    assert dict(memory.seen)[epochs[-1]] == 2
    again = EpochMemory.from_dict(json.loads(json.dumps(memory.to_dict())))
    assert again == memory


@pytest.mark.parametrize("doc", [
    None, [], {}, {"version": 2}, {"version": 1, "link_id": -1, "seen": []},
    {"version": 1, "link_id": 7, "seen": [[1]]},
    {"version": 1, "link_id": 7, "seen": [[1, "2"]]},
    {"version": 1, "link_id": 7, "seen": [[2**64, 0]]},
    {"version": 1, "link_id": 7, "seen": [[1, 2]], "current": 3},
    {"version": 1, "link_id": 7, "seen": "x"},
    {"version": 1, "link_id": True, "seen": []},
])
def test_malformed_memory_is_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        EpochMemory.from_dict(doc)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**65) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "link_id", "current", "newest", "seen", "x"]), inner,
        max_size=6), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_value)
def test_any_json_is_a_memory_or_a_value_error(doc: object) -> None:
    try:
        memory = EpochMemory.from_dict(doc)
    except ValueError:
        return
    assert len(memory.seen) <= MEMORY_EPOCHS
    assert memory.current is None or memory.current in dict(memory.seen)
    receiver(memory=memory) if memory.link_id == 7 else None


def test_memory_of_another_link_is_refused() -> None:
    with pytest.raises(ValueError, match="link id"):
        receiver(memory=EpochMemory(link_id=8))


# -- replays and epochs in one sender's stream, through the link core -----------------------


def test_replays_of_current_epoch_are_dropped_as_replayed() -> None:
    # Every frame already had its 3 copies: a replay of any of them is one too many,
    # whether RX still keeps the frame's datagram (the last 64) or not. Counted as
    # duplicates they would hide loss.
    rx = receiver(copy_window=64, max_copies=3)
    tx = sender(repeat=3, interleave=8)
    datagrams = one_frame_per_record(tx, [msg(i) for i in range(200)])
    first = feed(rx, datagrams)
    assert delivered(first) == [msg(i) for i in range(200)]
    base = dict(rx.counters)
    assert base["duplicates"] == 400
    again = feed(rx, datagrams, now=10.0)
    assert delivered(again) == [] and again == []
    assert rx.counters["replayed"] - base["replayed"] == len(datagrams)
    assert rx.counters["duplicates"] == base["duplicates"]
    assert rx.counters["frames"] == base["frames"]


def test_retired_epoch_is_replayed_even_after_long_silence() -> None:
    rx = receiver()
    old = single_copies(5, OLD_EPOCH)
    new = single_copies(5, EPOCH)
    feed(rx, old + new, now=0.0)
    assert rx.epoch == EPOCH
    for now in (0.5, 100.0):
        before = rx.counters["replayed"]
        assert feed(rx, old, now) == []
        assert rx.counters["replayed"] - before == len(old)
    assert rx.epoch == EPOCH


def test_new_epoch_is_followed_and_delivery_continues() -> None:
    rx = receiver()
    first = feed(rx, one_frame_per_record(sender(EPOCH), [msg(i) for i in range(10)]))
    assert first[0] == EpochChanged(None, EPOCH)
    later = EPOCH + (60 << 32)  # the TX restarted a minute later: seq restarts at 0
    tx2 = sender(later)
    events = feed(rx, one_frame_per_record(tx2, [msg(i) for i in range(100, 110)]), now=1.0)
    assert events[0] == EpochChanged(EPOCH, later)
    assert delivered(events) == [msg(i) for i in range(100, 110)]
    assert all(e.epoch == later for e in events if isinstance(e, RecordReceived))
    assert rx.counters["epochs"] == 2 and rx.counters["lost"] == 0


def test_new_epoch_flushes_the_old_one_and_counts_its_gaps() -> None:
    rx = receiver()
    old = single_copies(6, OLD_EPOCH)
    events = feed(rx, old[:2] + old[3:])   # frame 2 of the old epoch never arrives
    assert delivered(events) == [msg(0), msg(1)]
    events = feed(rx, single_copies(2, EPOCH, start=50))
    assert events[0] == FramesLost(OLD_EPOCH, 2, 1)
    assert delivered(events) == [msg(3), msg(4), msg(5), msg(50), msg(51)]
    assert EpochChanged(OLD_EPOCH, EPOCH) in events


def test_fresh_receiver_joins_where_it_first_hears() -> None:
    d = single_copies(10)
    rx = receiver(reorder_timeout=0.5)
    events = feed(rx, d[4:], now=1.0)
    assert events[0] == EpochChanged(None, EPOCH)
    assert delivered(events) == [msg(i) for i in range(4, 10)]
    assert rx.handle_timer(100.0) == [] and rx.counters["lost"] == 0
    # What was sent before it joined comes late: delivered once, marked recovered (the
    # sinks keep it from overwriting anything newer), and counted in `late`
    events = feed(rx, d[:4], now=2.0)
    assert [(e.record, e.recovered) for e in events] == [(msg(i), True) for i in range(4)]
    assert rx.counters["recovered"] == 4 and rx.counters["lost"] == 0
    assert feed(rx, d[:4], now=3.0) == []


def test_restarted_tx_is_expected_from_seq_zero() -> None:
    rx = receiver(reorder_timeout=0.5)
    feed(rx, single_copies(3, OLD_EPOCH), now=0.0)
    d = single_copies(6, EPOCH)
    events = feed(rx, d[2:4], now=1.0)        # the restarted TX's frames 0 and 1 are late
    assert events == [EpochChanged(OLD_EPOCH, EPOCH)]
    assert delivered(feed(rx, d[:2], now=1.1)) == [msg(i) for i in range(4)]
    events = feed(rx, d[5:], now=1.2)         # frame 4 never comes
    assert rx.handle_timer(1.69) == []
    events = rx.handle_timer(1.7)
    assert events == [FramesLost(EPOCH, 4, 1), RecordReceived(msg(5), EPOCH, 5)]


def test_older_epoch_refused_while_live_then_taken_over_after_silence() -> None:
    takeover = 3.0
    rx = receiver(epoch_takeover=takeover)
    feed(rx, single_copies(3, EPOCH), now=10.0)
    # A board whose clock went backwards restarts with a smaller epoch.
    behind = EPOCH - (3600 << 32)
    restarted = single_copies(4, behind, start=500)
    for now in (10.0, 11.0, 10.0 + takeover - 0.001):
        before = rx.counters["stale_epoch"]
        assert rx.receive(restarted[0], now) == []
        assert rx.counters["stale_epoch"] == before + 1
        # ...while the live epoch keeps going (and keeps the watchdog fed).
    assert delivered(feed(rx, single_copies(4, EPOCH)[3:], now=12.0)) == [msg(3)]
    assert rx.receive(restarted[0], 12.0 + takeover - 0.001) == []
    events = feed(rx, restarted, now=12.0 + takeover)
    assert events[0] == EpochChanged(EPOCH, behind)
    assert delivered(events) == [msg(i) for i in range(500, 504)]
    # The epoch it replaced is not retired: its old frames are replays, and were it
    # still alive (the silence a pause, the new epoch a replay), its fresh frames
    # would bring it back (test_live_epoch_comes_back_after_a_replay_won_during_a_pause).
    assert feed(rx, single_copies(3, EPOCH), now=20.0) == []
    assert rx.counters["replayed"] == 3


# -- property: whatever is injected ---------------------------------------------------------

LIVE = Tx(epoch_at(T0))
SEEN = Tx(epoch_at(T0 - 600))          # followed by RX before the live one
UNSEEN = Tx(epoch_at(T0 - 86400))      # recorded before RX ever ran
SEEN_FRAMES = SEEN.frames("seen", range(10))
UNSEEN_FRAMES = UNSEEN.frames("unseen", range(40))
LIVE_FRAMES = [LIVE.frame(message("live", i)) for i in range(60)]  # one every 0.5 s
LIVE_PERIOD = 0.5

attack = st.tuples(st.floats(0.0, 30.0), st.sampled_from(["seen", "unseen", "live", "forged"]),
                   st.integers(0, 10_000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(attack, max_size=120), st.one_of(st.none(), st.floats(0.1, 29.0)))
def test_injected_packets_never_cost_a_live_frame_nor_deliver_anything_twice(
        attacks: list[tuple[float, str, int]], restart_at: float | None) -> None:
    rx: LinkReceiver = receiver(epoch_takeover=TAKEOVER)
    feed(rx, SEEN_FRAMES, now=-1.0)
    schedule: list[tuple[float, int, bytes]] = []
    for i, copies in enumerate(LIVE_FRAMES):
        schedule += [(i * LIVE_PERIOD, 0, d) for d in copies]
    for t, kind, n in attacks:
        if kind == "seen":
            d = SEEN_FRAMES[n % len(SEEN_FRAMES)]
        elif kind == "unseen":
            d = UNSEEN_FRAMES[n % len(UNSEEN_FRAMES)]
        elif kind == "live":   # a replay of a live datagram already sent
            sent = min(len(LIVE_FRAMES) - 1, int(t / LIVE_PERIOD))
            d = LIVE_FRAMES[n % (sent + 1)][0]
        else:
            d = forged(LIVE.epoch if n % 2 else LIVE.epoch - n, n % 70)
        schedule.append((t, 1, d))
    schedule.sort(key=lambda x: (x[0], x[1]))
    got: list[str] = []
    restarted = False
    for t, _, d in schedule:
        if restart_at is not None and not restarted and t >= restart_at:
            rx = receiver(memory=rx.memory(), epoch_takeover=TAKEOVER)  # a clean restart
            restarted = True
        got += topics(rx.receive(d, t))
        assert outcomes(rx) == rx.counters["datagrams"]
    assert got == [f"live/{i}" for i in range(len(LIVE_FRAMES))]
    assert rx.epoch == LIVE.epoch and rx.counters["lost"] == 0
