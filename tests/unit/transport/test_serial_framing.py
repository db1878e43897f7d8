"""Serial framing: COBS + CRC-32 round-trips, and damage is counted, never raised."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.transport.serial_framing import (
    SerialDeframer,
    cobs_decode,
    cobs_encode,
    encode_frame,
    frame_crc,
    overhead,
)

datagrams = st.binary(min_size=0, max_size=1500)


def _is_subsequence(needle: list[bytes], haystack: list[bytes]) -> bool:
    it = iter(haystack)
    return all(any(item == got for got in it) for item in needle)


# --- COBS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stuffed"),
    [
        # Vectors from the COBS paper / Wikipedia (with this encoder's final code byte).
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    ],
)
def test_cobs_known_vectors(raw: bytes, stuffed: bytes) -> None:
    assert cobs_encode(raw) == stuffed
    assert cobs_decode(stuffed) == raw


@given(st.binary(max_size=3000))
def test_cobs_round_trip_has_no_zero(raw: bytes) -> None:
    stuffed = cobs_encode(raw)
    assert b"\x00" not in stuffed
    assert cobs_decode(stuffed) == raw
    assert len(stuffed) <= len(raw) + 1 + len(raw) // 254


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x05\x11", b"\x03\x11\x00", b"\x02\x11\x05"])
def test_cobs_decode_rejects_invalid(bad: bytes) -> None:
    assert cobs_decode(bad) is None


# --- frames -----------------------------------------------------------------


@given(datagrams)
def test_frame_layout(datagram: bytes) -> None:
    frame = encode_frame(datagram)
    assert frame[0] == 0 and frame[-1] == 0
    assert b"\x00" not in frame[1:-1]
    body = cobs_decode(frame[1:-1])
    assert body == datagram + frame_crc(datagram).to_bytes(4, "little")
    assert len(frame) - len(datagram) <= overhead(len(datagram))


@pytest.mark.parametrize("n", [0, 1, 249, 250, 251, 1400, 4096])
def test_overhead_is_reached_by_nonzero_data(n: int) -> None:
    # Worst case: no zero anywhere, so every 254 bytes cost a code byte.
    datagram = b"\x5a" * n
    frame = encode_frame(datagram)
    if b"\x00" not in frame_crc(datagram).to_bytes(4, "little"):
        assert len(frame) - n == overhead(n)
    assert len(frame) - n <= overhead(n)


def test_crc_is_tagged() -> None:
    assert frame_crc(b"abc") == zlib.crc32(b"diode-serial-v1abc")
    assert frame_crc(b"") != 0


@pytest.mark.parametrize("fill", [0x01, 0xFF, 0x55, 0xAA])
def test_regular_line_noise_is_never_a_datagram(fill: int) -> None:
    # With an untagged CRC-32, 00 01 01 01 01 01 00 would be a valid empty datagram.
    deframer = SerialDeframer()
    for n in range(1, 300):
        assert deframer.feed(b"\x00" + bytes([fill]) * n + b"\x00") == []
        assert deframer.feed(b"\x00" + b"\x01\x00" * n) == []
    assert deframer.datagrams == 0


def test_overhead_for_pacing_size() -> None:
    assert overhead(1400) == 12


@given(st.lists(datagrams, max_size=20))
def test_round_trip_in_one_feed(items: list[bytes]) -> None:
    deframer = SerialDeframer()
    assert deframer.feed(b"".join(encode_frame(d) for d in items)) == items
    assert deframer.counters() == {
        "datagrams": len(items),
        "crc_errors": 0,
        "framing_errors": 0,
        "oversize": 0,
    }


@given(st.lists(datagrams, max_size=10), st.data())
def test_round_trip_in_any_chunking(items: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(d) for d in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    deframer = SerialDeframer()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += deframer.feed(stream[start:cut])
        start = cut
    assert out == items


def test_back_to_back_frames_share_nothing_and_idle_zeros_are_ignored() -> None:
    deframer = SerialDeframer()
    stream = b"\x00" * 10 + encode_frame(b"a") + encode_frame(b"") + b"\x00" * 3
    assert deframer.feed(stream) == [b"a", b""]
    assert deframer.framing_errors == deframer.crc_errors == 0


# --- damage -----------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(max_size=300), datagrams), max_size=10), st.binary())
def test_garbage_between_frames_never_raises_and_frames_survive(
    pairs: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    deframer = SerialDeframer()
    stream = b"".join(garbage + encode_frame(d) for garbage, d in pairs) + tail
    out = deframer.feed(stream)
    expected = [d for _, d in pairs]
    # Every real frame comes out, in order; garbage could only add (CRC 2**-32).
    assert _is_subsequence(expected, out)
    junk = len(out) - len(expected)
    errors = deframer.crc_errors + deframer.framing_errors + deframer.oversize
    # Each non-empty garbage run ended by a delimiter is one error (or, with
    # odds of 2**-32, one junk datagram); the tail's last run is still pending.
    runs = [r for g, _ in pairs for r in g.split(b"\x00")] + tail.split(b"\x00")[:-1]
    assert errors + junk == len([r for r in runs if r])


@given(st.binary(max_size=5000), st.integers(0, 64))
def test_arbitrary_bytes_never_raise(noise: bytes, max_datagram: int) -> None:
    deframer = SerialDeframer(max_datagram=max_datagram)
    deframer.feed(noise)
    # And it is back in sync immediately after.
    assert deframer.feed(encode_frame(b"ok")) == ([b"ok"] if max_datagram >= 2 else [])


@settings(max_examples=300)
@given(datagrams, st.data())
def test_single_bit_flip_is_caught(datagram: bytes, data: st.DataObject) -> None:
    frame = bytearray(encode_frame(datagram))
    # Flip a bit inside the stuffed body (delimiters excluded).
    pos = data.draw(st.integers(1, len(frame) - 2))
    bit = data.draw(st.integers(0, 7))
    frame[pos] ^= 1 << bit
    deframer = SerialDeframer()
    out = deframer.feed(bytes(frame) + encode_frame(b"next"))
    assert out == [b"next"]
    # A flip may create a 0x00 (splitting the frame) or break the COBS codes;
    # either way it is counted, never returned.
    assert deframer.crc_errors + deframer.framing_errors >= 1


def test_bit_flip_in_payload_counts_crc_error() -> None:
    frame = bytearray(encode_frame(b"hello world"))
    frame[3] ^= 0x01  # a data byte, stays non-zero
    deframer = SerialDeframer()
    assert deframer.feed(bytes(frame)) == []
    assert deframer.crc_errors == 1
    assert deframer.framing_errors == 0


def test_truncated_frame_then_good_frame() -> None:
    deframer = SerialDeframer()
    good = encode_frame(b"x" * 100)
    out = deframer.feed(good[:50] + encode_frame(b"after"))
    assert out == [b"after"]
    assert deframer.framing_errors + deframer.crc_errors == 1


def test_inserted_bytes_inside_frame() -> None:
    deframer = SerialDeframer()
    frame = encode_frame(b"payload-" * 10)
    spliced = frame[:20] + b"\x07\x07\x07" + frame[20:]
    assert deframer.feed(spliced + encode_frame(b"after")) == [b"after"]
    assert deframer.crc_errors + deframer.framing_errors == 1


def test_short_body_is_a_framing_error() -> None:
    deframer = SerialDeframer()
    assert deframer.feed(b"\x00" + cobs_encode(b"abc") + b"\x00") == []
    assert deframer.framing_errors == 1


def test_oversize_frames_are_dropped_and_counted() -> None:
    deframer = SerialDeframer(max_datagram=100)
    assert deframer.feed(encode_frame(b"\x01" * 100)) == [b"\x01" * 100]
    # Too long on the wire: cut off while still arriving, memory stays bounded.
    assert deframer.feed(encode_frame(b"\x01" * 5000)) == []
    # Fits on the wire (zeros stuff cheaply) but decodes too long.
    assert deframer.feed(encode_frame(b"\x00" * 104)) == []
    assert deframer.oversize == 2
    assert deframer.feed(encode_frame(b"small")) == [b"small"]


def test_oversize_across_many_feeds_stays_bounded() -> None:
    deframer = SerialDeframer(max_datagram=64)
    for _ in range(1000):
        deframer.feed(b"\x01" * 1000)
    assert len(deframer._buf) <= 100
    assert deframer.oversize == 1
    assert deframer.feed(encode_frame(b"ok")) == [b"ok"]
    assert deframer.oversize == 1
