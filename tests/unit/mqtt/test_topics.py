"""MQTT topic filters: matching, one filter covering another, two overlapping.
Checked against brute force over every topic of a small alphabet."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config_reader import Table
from agent.errors import ConfigError
from agent.mqtt import config as mqtt_config
from agent.mqtt.topics import covers, example_common, filter_problem, matches, overlap


@pytest.mark.parametrize("f, topic, want", [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a", False),
    ("a/+", "a/b/c", False), ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "a", True),
    ("+", "a", True), ("+", "", True), ("+/+", "/a", True), ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True), ("a/+/c", "a//c", True),
    ("$share/g/a/#", "a/b", True),
])
def test_matches(f: str, topic: str, want: bool) -> None:
    assert matches(f, topic) is want


@pytest.mark.parametrize("a, b, want", [
    ("plant/#", "plant/line1/#", True), ("plant/line1/#", "plant/#", False),
    ("#", "plant/x", True), ("#", "$SYS/#", False), ("+/#", "$SYS/x", False),
    ("a/+", "a/b", True), ("a/+", "a/#", False), ("a/#", "a", True), ("a/b", "a/b", True),
    ("a/+/c", "a/+/c", True), ("a/b/c", "a/+/c", False), ("$SYS/#", "$SYS/broker/+", True),
])
def test_covers(a: str, b: str, want: bool) -> None:
    assert covers(a, b) is want


@pytest.mark.parametrize("a, b, want", [
    ("plant/+/temp", "plant/line1/#", True), ("a/+", "+/b", True), ("a/b", "a/c", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("a/#", "a", True), ("a/+", "a", False),
    ("a/b/#", "a/c/#", False), ("$SYS/#", "$SYS/+", True),
])
def test_overlap(a: str, b: str, want: bool) -> None:
    assert overlap(a, b) is want
    if want:
        t = example_common(a, b)
        assert matches(a, t) and matches(b, t), t


@pytest.mark.parametrize("f", ["", "a/#/b", "a#", "a/b+", "+a", "$share/g"])
def test_invalid_filters(f: str) -> None:
    assert filter_problem(f)


# -- brute force: every topic up to 3 levels over a small alphabet -------------------------

_LEVELS = ["a", "b", "", "$s"]
_TOPICS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(_LEVELS, repeat=n)]
_filter_level = st.sampled_from(["a", "b", "", "$s", "+"])


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_filter_level, min_size=1, max_size=3))
    if draw(st.booleans()):
        levels = [*levels[:2], "#"]
    return "/".join(levels)


@settings(max_examples=400, deadline=None)
@given(_filters(), _filters())
def test_covers_and_overlap_agree_with_brute_force(a: str, b: str) -> None:
    # depth 3 topics, and filters of at most 3 levels: a 4-level topic adds nothing
    # a 3-level one does not already show (the last level is either '#' or not)
    deep = _TOPICS + [t + "/a" for t in _TOPICS if t.count("/") == 2]
    in_a = {t for t in deep if matches(a, t)}
    in_b = {t for t in deep if matches(b, t)}
    assert covers(a, b) == (in_b <= in_a), (a, b)
    assert overlap(a, b) == bool(in_a & in_b), (a, b)


# -- the channel config refuses overlapping filters -----------------------------------------

def _tx(tmp_path: Path, topics: list[str]) -> object:
    t = Table(tmp_path / "tx.toml", "mqtt.0", {"name": "plant", "topics": topics})
    return mqtt_config.parse(t, "tx", False)


def test_config_refuses_overlapping_filters_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _tx(tmp_path, ["plant/#", "plant/line1/#"])
    text = str(err.value)
    assert "tx.toml: [mqtt.0] topics: 'plant/#' covers 'plant/line1/#'" in text, text
    assert "Fix: drop 'plant/line1/#'" in text, text
    with pytest.raises(ConfigError, match="overlap .*plant/line1/temp"):
        _tx(tmp_path, ["plant/+/temp", "plant/line1/#"])
    with pytest.raises(ConfigError, match="listed twice"):
        _tx(tmp_path, ["a/#", "a/#"])
    with pytest.raises(ConfigError, match="not a valid MQTT topic filter"):
        _tx(tmp_path, ["a/#/b"])
    _tx(tmp_path, ["plant/#", "$SYS/broker/uptime", "other/+"])  # disjoint: fine
