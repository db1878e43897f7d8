"""Pieces of "reads as the spec says" that need no server: IndexRange (Part 4, 7.22) and
100 ns DateTimes through asyncua's codec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import Primitives, struct_from_binary, struct_to_binary
from hypothesis import given
from hypothesis import strategies as st

from agent.opcua import index_range
from agent.opcua.ticks import TickTime, from_ticks, to_ticks
from agent.opcua.ua import data_value, status

NO_DATA = ua.StatusCodes.BadIndexRangeNoData
INVALID = ua.StatusCodes.BadIndexRangeInvalid


# -- IndexRange -------------------------------------------------------------------------


@pytest.mark.parametrize("text, ranges", [
    ("3", ((3, 3),)), ("0:4", ((0, 4),)), ("1:2,0:1", ((1, 2), (0, 1))),
])
def test_ranges_parse(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    assert index_range.parse(text) == ranges


@pytest.mark.parametrize("text", ["", "4:2", "2:2", "-1", "a", "1:", ":3", "1:2,", " 1", "٣"])
def test_bad_ranges_are_invalid(text: str) -> None:
    with pytest.raises(index_range.IndexRangeError) as exc:
        index_range.parse(text)
    assert exc.value.code == INVALID
    assert not index_range.valid(text) or text == ""


@given(st.lists(st.integers(-100, 100), min_size=1, max_size=30), st.integers(0, 40),
       st.integers(1, 40))
def test_an_array_range_is_its_slice(values: list[int], low: int, width: int) -> None:
    high = low + width
    dv = data_value(ua.Variant(values, ua.VariantType.Int32), None,
                    datetime(2024, 1, 2, tzinfo=UTC))
    out = index_range.apply(dv, f"{low}:{high}")
    if low >= len(values):
        assert out.StatusCode.value == NO_DATA and out.Value.Value is None
    else:
        assert out.StatusCode.is_good() and out.Value.Value == values[low:high + 1]
        assert out.Value.is_array and out.Value.VariantType == ua.VariantType.Int32
    assert out.SourceTimestamp == dv.SourceTimestamp  # the value's time, whatever its part


def test_strings_matrices_and_scalars() -> None:
    strings = ua.Variant(["alpha", "beta", "gamma"], ua.VariantType.String)
    assert index_range.cut_variant(strings, ((1, 2), (0, 1))).Value == ["be", "ga"]
    word = ua.Variant("hello", ua.VariantType.String)
    assert index_range.cut_variant(word, ((1, 3),)).Value == "ell"
    assert index_range.cut_variant(ua.Variant(b"\x00\x01\x02"), ((2, 2),)).Value == b"\x02"
    matrix = ua.Variant([[1, 2, 3], [4, 5, 6], [7, 8, 9]], ua.VariantType.Int32)
    cut = index_range.cut_variant(matrix, ((1, 2), (0, 1)))
    assert cut.Value == [[4, 5], [7, 8]] and cut.Dimensions == [2, 2]
    for variant, ranges in ((ua.Variant(1.5), ((0, 0),)),           # a scalar number
                            (word, ((0, 1), (0, 1))),               # a string has one dimension
                            (strings, ((5, 6),))):                  # past the end
        with pytest.raises(index_range.IndexRangeError) as exc:
            index_range.cut_variant(variant, ranges)
        assert exc.value.code == NO_DATA


def test_apply_leaves_bad_values_and_no_range_alone() -> None:
    bad = data_value(ua.Variant(), status(ua.StatusCodes.BadNoCommunication))
    assert index_range.apply(bad, "1:2") is bad
    dv = data_value(ua.Variant([1, 2, 3], ua.VariantType.Int32))
    assert index_range.apply(dv, None) is dv and index_range.apply(dv, "") is dv
    assert index_range.apply(dv, "2:1").StatusCode.value == INVALID


# -- 100 ns DateTimes -----------------------------------------------------------------------


@given(st.integers(1, 2_500_000_000_000_000_000))  # to year 9523: asyncua clamps near 9999
def test_ticks_round_trip_through_asyncuas_codec(ticks: int) -> None:
    dt = from_ticks(ticks)
    assert to_ticks(dt) == ticks
    packed = Primitives.DateTime.pack(Primitives.DateTime.unpack(Buffer(
        Primitives.Int64.pack(ticks))))
    assert Primitives.Int64.unpack(Buffer(packed)) == ticks


def test_sub_microsecond_ticks_survive_a_datavalue() -> None:
    ticks = 133_500_000_001_234_567
    dv = data_value(ua.Variant(1.0), None, from_ticks(ticks), from_ticks(ticks + 3))
    back = struct_from_binary(ua.DataValue, Buffer(struct_to_binary(dv)))
    assert isinstance(back.SourceTimestamp, TickTime)
    assert ua.datetime_to_win_epoch(back.SourceTimestamp) == ticks
    assert ua.datetime_to_win_epoch(back.ServerTimestamp) == ticks + 3


def test_whole_microseconds_stay_plain_and_arithmetic_drops_the_extra_ticks() -> None:
    assert type(from_ticks(133_500_000_001_234_560)) is datetime  # nothing extra to keep
    t = from_ticks(133_500_000_001_234_567)
    later = t + timedelta(microseconds=1)  # a new instant: its own ticks, not t's
    assert to_ticks(later) == 133_500_000_001_234_570
    assert to_ticks(from_ticks(0)) == 0
