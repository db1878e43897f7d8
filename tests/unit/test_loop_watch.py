import asyncio
import logging
import time

import pytest

from agent.loop_watch import LoopStalls, Slices, watch


def test_late_wake_ups_are_counted_with_the_longest() -> None:
    s = LoopStalls(period=0.1, threshold=0.5)
    assert s.tick(0.0) == 0.0
    assert s.tick(0.1) == pytest.approx(0.0)
    assert s.tick(0.55) == pytest.approx(0.35)  # late, below the threshold: not a stall
    assert s.counters == {"loop_stalls": 0, "loop_stall_max_ms": 0}
    assert s.tick(2.0) == pytest.approx(1.35)
    assert s.tick(2.7) == pytest.approx(0.6)
    assert s.counters == {"loop_stalls": 2, "loop_stall_max_ms": 1350}


def test_the_warning_is_rate_limited_and_says_how_many_and_how_long() -> None:
    s = LoopStalls(period=0.1, threshold=0.5, log_every=60.0)
    s.tick(0.0)
    assert s.report(0.0) is None  # nothing to say
    s.tick(3.1)
    line = s.report(3.1)
    assert line is not None and "1 time(s)" in line and "3.00 s" in line
    s.tick(5.2)
    s.tick(7.3)
    assert s.report(7.3) is None  # within the minute: held back, still counted
    assert s.counters["loop_stalls"] == 3
    line = s.report(63.2)
    assert line is not None and "2 time(s)" in line and "2.00 s" in line
    assert s.report(200.0) is None


def test_a_blocked_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> LoopStalls:
        s = LoopStalls(period=0.05, threshold=0.3)
        task = asyncio.create_task(watch(s, logging.getLogger("t")))
        await asyncio.sleep(0.1)
        time.sleep(0.6)  # a step that holds the loop
        await asyncio.sleep(0.1)
        task.cancel()
        return s
    with caplog.at_level(logging.WARNING):
        s = asyncio.run(main())
    assert s.counters["loop_stalls"] == 1
    assert 500 <= s.counters["loop_stall_max_ms"] < 2000
    assert any("event loop blocked 1 time(s)" in r.message for r in caplog.records)


def test_slices_let_other_tasks_run_during_a_long_loop() -> None:
    async def main(slices: Slices | None) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        ticks = 0
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # 0.3 s of work in one task
            if slices is not None:
                await slices()
        task.cancel()
        return ticks

    assert asyncio.run(main(None)) == 0  # the baseline: the loop is held throughout
    assert asyncio.run(main(Slices(every=0.02))) >= 5  # about one turn every 20 ms


def test_rx_s_stalls_are_exported_as_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.metrics import RxCollector
    registry = CollectorRegistry()
    registry.register(RxCollector(lambda: {"counters": {"loop_stalls": 3,
                                                        "loop_stall_max_ms": 1250,
                                                        "received": 9}}))
    text = generate_latest(registry).decode()
    assert 'diode_rx_loop_total{counter="loop_stalls"} 3.0' in text
    assert 'diode_rx_loop_total{counter="loop_stall_max_ms"} 1250.0' in text
    assert 'diode_rx_loop_total{counter="received"}' not in text  # only the loop's own
