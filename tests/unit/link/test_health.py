"""Link health (agent/link/health.py): its states from heartbeats and loss, alone and driven
through the link core.
"""

from __future__ import annotations

import random

import pytest

from agent.link import records
from agent.link.events import EpochChanged, FramesLost, RecordReceived
from agent.link.health import HealthParams, LinkHealth, LinkState

from .core_kit import Pump, msg, sender
from .link_kit import receiver


def hb(sent: int, t: float) -> records.Heartbeat:
    return records.Heartbeat(t, 1.0, 3, {"datagrams": sent}, {})


def test_health_transitions_down_up_degraded_up_down() -> None:
    health = LinkHealth(HealthParams(timeout=3.0, degraded_loss=0.10, window=10.0))
    assert health.evaluate(0.0, None) == LinkState.DOWN
    # Heartbeats every second, 100 datagrams sent per second, all received.
    sent = got = 0
    for t in range(1, 4):
        sent += 100
        got += 100
        health.on_heartbeat(hb(sent, t), got, float(t))
        assert health.evaluate(t + 0.5, float(t)) == LinkState.UP
    # A frame lost (all copies): degraded for one window.
    health.on_lost(4.0)
    for t in range(4, 14):
        sent += 100
        got += 100
        health.on_heartbeat(hb(sent, t), got, float(t))
        assert health.evaluate(float(t), float(t)) == LinkState.DEGRADED, t
    assert health.evaluate(14.0, 14.0) == LinkState.UP
    # Raw datagram loss above the threshold (repetition still hides it): degraded.
    for t in range(14, 17):
        sent += 100
        got += 50
        health.on_heartbeat(hb(sent, t), got, float(t))
    assert health.datagram_loss() > 0.10
    assert health.evaluate(16.0, 16.0) == LinkState.DEGRADED
    for t in range(17, 30):
        sent += 100
        got += 100
        health.on_heartbeat(hb(sent, t), got, float(t))
    assert health.evaluate(29.0, 29.0) == LinkState.UP
    # Silence: down once `timeout` has passed since the last valid frame.
    assert health.evaluate(31.99, 29.0) == LinkState.UP
    assert health.evaluate(32.0, 29.0) == LinkState.DOWN
    assert health.heartbeat_age(32.0) == pytest.approx(3.0)


def test_health_driven_through_the_link() -> None:
    """Heartbeats and frame loss through a real sender/receiver pair."""
    health = LinkHealth(HealthParams(timeout=3.0, degraded_loss=0.10, window=10.0))
    blackout = (5.0, 5.2)
    pump_box: list[Pump] = []

    def channel(d: bytes) -> list[bytes]:
        return [] if blackout[0] <= pump_box[0].now < blackout[1] else [d]

    pump = Pump(sender(repeat=3, interleave=8), receiver(), channel)
    pump_box.append(pump)
    states = [(0.0, health.evaluate(0.0, None))]
    seen = 0
    steps_per_s = round(1 / pump.tx.params.tick)
    for step in range(25 * steps_per_s):
        t = pump.now
        if steps_per_s <= step < 20 * steps_per_s:   # TX runs from t=1 to t=20
            if step % steps_per_s == 0:
                pump.step(records.Heartbeat(t, 1.0, 3, dict(pump.tx.counters), {}),
                          heartbeat=True)
            elif step % 50 == 0:
                pump.step(msg(step))
            else:
                pump.step()
        else:
            pump.step()
        for event in pump.events[seen:]:
            if isinstance(event, RecordReceived) and isinstance(event.record,
                                                                records.Heartbeat):
                health.on_heartbeat(event.record, pump.rx.counters["datagrams"], pump.now)
            elif isinstance(event, FramesLost):
                health.on_lost(pump.now)
            elif isinstance(event, EpochChanged):
                health.on_epoch()
        seen = len(pump.events)
        state = health.evaluate(pump.now, pump.rx.last_valid_at)
        if not states or states[-1][1] != state:
            states.append((round(t, 3), state))
    assert [s for _, s in states] == [LinkState.DOWN, LinkState.UP, LinkState.DEGRADED,
                                      LinkState.UP, LinkState.DOWN], states
    (_, _), (up, _), (degraded, _), (recovered, _), (down, _) = states
    assert up == pytest.approx(1.0, abs=0.01)
    assert blackout[0] < degraded < blackout[1] + 1.0
    assert recovered == pytest.approx(degraded + 10.0, abs=0.01)
    assert down == pytest.approx(19.9 + 3.0, abs=0.05)   # the last message went at 19.9


def test_datagram_loss_is_exactly_zero_on_a_clean_link_under_traffic() -> None:
    """Heartbeats that land while a frame is half full: the counts TX reports must line
    up with what RX has received at the heartbeat, or a clean link shows loss."""
    rng = random.Random(5)
    tx, rx = sender(repeat=3, interleave=8), receiver()
    health = LinkHealth(HealthParams(window=0.5))  # slides: any offset can start it
    now, samples = 0.0, 0
    for step in range(20_000):
        now += 0.0005
        tx.push(records.encode(msg(step, rng.randrange(1, 400))), now)
        if step % 97 == 0:
            tx.push_heartbeat(lambda t=now: records.encode(records.Heartbeat(
                t, 1.0, 3, dict(tx.counters), {})), now)
        deadline = tx.next_deadline()
        if deadline is not None and deadline <= now:
            tx.handle_timer(now)
        for d in tx.pop_datagrams():
            for ev in rx.receive(d, now):
                if isinstance(ev, RecordReceived) and isinstance(ev.record, records.Heartbeat):
                    health.on_heartbeat(ev.record, rx.counters["datagrams"], now)
                    samples += 1
                    assert health.datagram_loss() == 0.0, step
    assert samples > 200 and rx.counters["lost"] == 0
