from agent.link.health import HealthParams, LinkHealth, LinkState
from agent.link.records import Heartbeat


def test_default_timeout_is_three_announced_heartbeats() -> None:
    h = LinkHealth(HealthParams())
    assert h.timeout == 3.0  # before any heartbeat: three of the default 1 s
    h.on_heartbeat(Heartbeat(0.0, 0.25, 3, {"datagrams": 3}), 3, now=10.0)
    assert h.timeout == 0.75
    assert h.evaluate(10.7, last_valid_at=10.0) == LinkState.UP
    assert h.evaluate(10.76, last_valid_at=10.0) == LinkState.DOWN


def test_configured_timeout_wins() -> None:
    h = LinkHealth(HealthParams(timeout=5.0))
    h.on_heartbeat(Heartbeat(0.0, 0.25, 3, {"datagrams": 3}), 3, now=10.0)
    assert h.timeout == 5.0
    assert h.evaluate(14.9, last_valid_at=10.0) == LinkState.UP


def test_silence_during_rx_s_own_stall_does_not_count() -> None:
    h = LinkHealth(HealthParams(timeout=3.0))
    # RX was held up from 11 to 20 (the last frame it read came at 10): the link is judged
    # on the 3 s after the stall, not on the 10 s that include it
    assert h.evaluate(20.0, last_valid_at=10.0, awake_since=20.0) == LinkState.UP
    assert h.evaluate(22.9, last_valid_at=10.0, awake_since=20.0) == LinkState.UP
    assert h.evaluate(23.0, last_valid_at=10.0, awake_since=20.0) == LinkState.DOWN
    # a frame after the stall counts from its arrival, as always
    assert h.evaluate(25.9, last_valid_at=23.0, awake_since=20.0) == LinkState.UP
    assert h.evaluate(26.0, last_valid_at=23.0, awake_since=20.0) == LinkState.DOWN


def test_no_frame_at_all_is_down_whatever_the_stalls() -> None:
    h = LinkHealth(HealthParams(timeout=3.0))
    assert h.evaluate(20.0, last_valid_at=None, awake_since=20.0) == LinkState.DOWN
