"""No false DEGRADED on a clean link when RX joins a stream TX is already sending.

TX counts its datagrams just before a heartbeat's first copy; RX counts at the
heartbeat's delivery. An RX that starts between the copies of a heartbeat is
delivered a later copy, so its first sample is read later in the stream than
TX's and the datagrams in between used to show as loss (the flaky
`'blink 2 Hz' == 'on'` of test_board_signals on a cold machine).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from agent.link import records
from agent.link.events import EpochChanged, FramesLost, RecordReceived
from agent.link.health import HealthParams, LinkHealth, LinkState
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt.codec import MqttMessage

KEY = bytes(range(32))


def hb(sent: int, repeat: int = 3) -> records.Heartbeat:
    return records.Heartbeat(0.0, 1.0, repeat, {"datagrams": sent}, {})


# -- LinkHealth alone, with a heartbeat sequence -----------------------------------------


def test_a_heartbeat_first_seen_at_a_later_copy_is_no_loss_sample() -> None:
    """RX joined after heartbeat 10's first copy: it got copies 2 and 3 only.
    Three datagrams go out per heartbeat (its copies), all received from then on."""
    health = LinkHealth(HealthParams(timeout=3.0, degraded_loss=0.10))
    copies: dict[int, list[int]] = {}
    # seq 10: TX had sent 100 before its first copy; RX's first datagram is copy 2
    copies[10] = [1, 1]
    health.on_heartbeat(hb(100), 1, 1.0, 10, copies)
    copies[10][0] += 1  # copy 3; never a third: copy 1 went before RX listened
    for n, seq in enumerate((11, 12, 13), start=1):
        # RX: 2 copies of 10, then 3 per heartbeat; TX: 3 per heartbeat since 100
        got = 2 + 3 * (n - 1) + 1
        copies[seq] = [1, got]
        health.on_heartbeat(hb(100 + 3 * n), got, 1.0 + n, seq, copies)
        assert health.datagram_loss() == 0.0, n
        assert health.evaluate(1.0 + n, 1.0 + n) == LinkState.UP, n
        copies[seq][0] += 2
    # The same sequence without the copy counts: the old computation, a false alarm.
    old = LinkHealth(HealthParams(timeout=3.0, degraded_loss=0.10))
    old.on_heartbeat(hb(100), 1, 1.0)
    old.on_heartbeat(hb(103), 3, 2.0)
    assert old.datagram_loss() == pytest.approx(1 / 3)
    assert old.evaluate(2.0, 2.0) == LinkState.DEGRADED


def test_loss_is_measured_from_the_first_heartbeat_seen_whole() -> None:
    health = LinkHealth(HealthParams(timeout=3.0, degraded_loss=0.10))
    copies = {5: [1, 1]}
    health.on_heartbeat(hb(10), 1, 1.0, 5, copies)
    assert health.datagram_loss() == 0.0  # one sample: nothing to compare yet
    copies[5][0] = 3
    copies[6] = [1, 51]
    health.on_heartbeat(hb(110), 51, 2.0, 6, copies)  # half of 100 received
    assert health.datagram_loss() == pytest.approx(0.5)
    assert health.evaluate(2.0, 2.0) == LinkState.DEGRADED
    # a new epoch starts over: nothing proven yet
    health.on_epoch()
    health.on_heartbeat(hb(10), 1, 3.0, 0, {0: [1, 1]})
    health.on_heartbeat(hb(20), 2, 4.0, 1, {0: [1, 1], 1: [1, 2]})
    assert health.datagram_loss() == 0.0


def test_without_repetition_every_heartbeat_lines_up() -> None:
    health = LinkHealth(HealthParams(degraded_loss=0.10))
    health.on_heartbeat(hb(10, repeat=1), 1, 1.0, 3, {3: [1, 1]})
    health.on_heartbeat(hb(20, repeat=1), 6, 2.0, 4, {3: [1, 1], 4: [1, 6]})
    assert health.datagram_loss() == pytest.approx(0.5)


# -- through a real sender and receiver ------------------------------------------------


def run_link(join_after: int, *, interleave: int = 8, heartbeat_steps: int = 500,
             message_steps: int = 0, loss: float = 0.0, steps: int = 6000,
             lined_up: bool = True) -> tuple[set[LinkState], LinkHealth, LinkReceiver]:
    """TX sends heartbeats every `heartbeat_steps` ticks (500: 1 s); RX misses the
    first `join_after` datagrams (it was not listening yet); optional random loss
    after that. The RX agent's own sample: valid + duplicates since the epoch began."""
    tx = LinkSender(SenderParams(link_id=1, repeat=3, interleave=interleave), KEY, 77)
    rx = LinkReceiver(ReceiverParams(link_id=1), KEY)
    health = LinkHealth(HealthParams(degraded_loss=0.10))
    rng = random.Random(join_after)
    tick = tx.params.tick
    base = sent = 0
    states: set[LinkState] = set()

    def handle(events: list) -> None:
        nonlocal base
        c = rx.counters
        for ev in events:
            if isinstance(ev, RecordReceived) and isinstance(ev.record, records.Heartbeat):
                got = c["valid"] + c["duplicates"] - base
                if lined_up:
                    health.on_heartbeat(ev.record, got, now, ev.seq, rx.heartbeat_copies)
                else:
                    health.on_heartbeat(ev.record, got, now)
            elif isinstance(ev, FramesLost):
                health.on_lost(now)
            elif isinstance(ev, EpochChanged):
                base = c["valid"] + c["duplicates"] - 1
                health.on_epoch()

    def heartbeat(at: float) -> Callable[[], bytes]:
        return lambda: records.encode(records.Heartbeat(at, heartbeat_steps * tick, 3,
                                                        dict(tx.counters), {}))

    for step in range(steps):
        now = step * tick
        if step % heartbeat_steps == 0:
            tx.push_heartbeat(heartbeat(now), now)
        if message_steps and step % message_steps == 1:
            tx.push(records.encode(MqttMessage("ch", "t", b"x" * 40, 0, False)), now)
        deadline = tx.next_deadline()
        if deadline is not None and deadline <= now:
            tx.handle_timer(now)
        for d in tx.pop_datagrams():
            sent += 1
            if sent <= join_after or (loss and rng.random() < loss):
                continue
            handle(rx.receive(d, now))
        deadline = rx.next_deadline()
        if deadline is not None and deadline <= now:
            handle(rx.handle_timer(now))
        if rx.last_valid_at is not None:
            states.add(health.evaluate(now, rx.last_valid_at))
    return states, health, rx


@pytest.mark.parametrize("join_after", range(9))
def test_rx_joining_between_the_copies_of_a_heartbeat_stays_up(join_after: int) -> None:
    """Quiet link: a heartbeat a second, its three copies 6 ticks apart; RX starts
    at any datagram of the first three heartbeats."""
    states, health, rx = run_link(join_after)
    assert states == {LinkState.UP}
    assert health.datagram_loss() == 0.0 and rx.counters["lost"] == 0


def test_the_old_count_raised_the_false_alarm() -> None:
    """The same runs, heartbeats taken as lined up: DEGRADED whenever RX joined after a
    heartbeat's first copy (two join points in three)."""
    degraded = [j for j in range(9) if LinkState.DEGRADED in run_link(j, lined_up=False)[0]]
    assert degraded == [1, 2, 4, 5, 7, 8]


@pytest.mark.parametrize("join_after", [1, 17, 40, 95])
def test_deep_interleave_fast_heartbeats_and_traffic_stay_up(join_after: int) -> None:
    """Copies spread over more than a heartbeat interval (interleave 128, heartbeats
    every 0.1 s), with messages in between: RX joins in the middle of several."""
    states, health, rx = run_link(join_after, interleave=128, heartbeat_steps=50,
                                  message_steps=7, steps=4000)
    assert states == {LinkState.UP}
    assert health.datagram_loss() == 0.0


def test_real_loss_after_a_late_join_still_shows() -> None:
    """30 % of datagrams lost once RX listens: DEGRADED all the same."""
    states, health, _ = run_link(2, loss=0.30, steps=8000)
    assert LinkState.DEGRADED in states
    assert health.datagram_loss() == pytest.approx(0.30, abs=0.12)
