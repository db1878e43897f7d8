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
