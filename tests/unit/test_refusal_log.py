"""RefusalLog: the first refusal logged at once, then one counted line per period."""

from __future__ import annotations

import logging

import pytest

from agent.listener_limits import RefusalLog


def test_one_line_at_once_then_one_per_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RefusalLog(logging.getLogger("test.refusals"), "metrics", period=10.0,
                     clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.refusals"):
        log.count("over the limit of 16", ("127.0.0.1", 5000))
        for i in range(999):
            now[0] += 0.005
            log.count("over the limit of 16" if i % 3 else "idle or slow over 5 s",
                      ("127.0.0.1", 6000 + i), detail="began b'GET '")
        assert len(caplog.messages) == 1  # no loop here to time the next line: flush()
        now[0] = 111.0
        log.flush()
        log.flush()  # nothing new: no line
    first, second = caplog.messages
    assert first == ("metrics: refused or closed 1 connection(s): 1 over the limit of 16; "
                     "latest from 127.0.0.1:5000")
    assert second == ("metrics: refused or closed 999 connection(s) in the last 11 s: "
                      "666 over the limit of 16, 333 idle or slow over 5 s; "
                      "latest from 127.0.0.1:6998 (began b'GET ')")
    assert log.totals["over the limit of 16"] == 667


def test_a_count_after_the_period_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RefusalLog(logging.getLogger("test.refusals"), "OPC UA mirror 'plant'",
                     period=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.refusals"):
        log.count("not an OPC UA Hello", ("::1", 4840, 0, 0))
        now[0] = 3.0
        log.count("not an OPC UA Hello")
        now[0] = 12.0
        log.count("not an OPC UA Hello")
    assert caplog.messages[1] == ("OPC UA mirror 'plant': refused or closed 2 connection(s) "
                                  "in the last 12 s: 2 not an OPC UA Hello; latest from [::1]:4840")
