"""The token bucket that keeps TX under the link's rate (agent/link/pacer.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link.pacer import TokenBucket


def paced(bucket: TokenBucket, sizes: Iterable[int], start: float,
          idle: Callable[[], float]) -> list[tuple[float, int]]:
    """A greedy driver: each datagram waits as long as `delay` says, then goes."""
    now = start
    sent: list[tuple[float, int]] = []
    for n in sizes:
        now += idle()
        while (wait := bucket.delay(n, now)) > 0:
            now = max(now + wait, math.nextafter(now, math.inf))
        bucket.take(n, now)
        sent.append((now, n))
    return sent


def worst_excess(sent: list[tuple[float, int]], rate: float, start: float) -> float:
    """max over windows [a, b] (a = start or a send time) of bytes - rate*(b - a)."""
    worst = -math.inf
    times = [start] + [t for t, _ in sent]
    for i, a in enumerate(times):
        total = 0
        for t, n in sent[max(0, i - 1):]:
            if t < a:
                continue
            total += n
            worst = max(worst, total - rate * (t - a))
    return worst


@settings(max_examples=40, deadline=None)
@given(st.floats(8_000, 1e9), st.integers(1, 20_000), st.integers(0, 2**32),
       st.floats(0, 1e6))
def test_token_bucket_never_exceeds_rate_plus_burst(rate_bps: float, burst: int, seed: int,
                                                    start: float) -> None:
    rng = random.Random(seed)
    bucket = TokenBucket(rate_bps, burst, start)
    sizes = [rng.randint(1, burst) for _ in range(150)]
    rate = rate_bps / 8
    mean_gap = burst / rate
    sent = paced(bucket, sizes, start,
                 lambda: rng.choice((0.0, 0.0, rng.uniform(0, 3 * mean_gap))))
    # Slack for float rounding of times near `now` (not for the bucket's arithmetic).
    slack = 1e-6 + 64 * rate * math.ulp(sent[-1][0] + 1.0)
    assert worst_excess(sent, rate, start) <= burst + slack


def test_token_bucket_long_run_rate_and_oversize_datagrams() -> None:
    rate_bps, burst = 1_000_000.0, 3000
    rate = rate_bps / 8
    rng = random.Random(5)
    # Greedy, over ~75 simulated seconds: it reaches the rate but never beats rate*t + burst.
    bucket = TokenBucket(rate_bps, burst, 0.0)
    sent = paced(bucket, (rng.randint(60, 1500) for _ in range(12_000)), 0.0, lambda: 0.0)
    span = sent[-1][0]
    total = sum(n for _, n in sent)
    assert total <= rate * span + burst + 1e-6
    assert total >= rate * span * 0.99
    cumulative = 0
    for t, n in sent:
        cumulative += n
        assert cumulative <= rate * t + burst + 1e-6
    # A datagram bigger than the burst still goes, and overdraws by exactly the excess.
    bucket = TokenBucket(rate_bps, burst, 0.0)
    big = paced(bucket, [5000] * 50, 0.0, lambda: 0.0)
    assert worst_excess(big, rate, 0.0) <= 5000 + 1e-6
    assert big[-1][0] == pytest.approx(49 * 5000 / rate, rel=1e-6)


def test_token_bucket_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 100, 0.0)
