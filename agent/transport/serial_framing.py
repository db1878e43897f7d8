"""Datagram framing for a one-way serial line (sans-IO, pure).

A serial line is a byte stream with no packet boundaries and no error
detection, and on a diode nobody can ask for a retransmission. So every
datagram is made self-delimiting and self-checking, and the receiver must
find the next good frame after any damage on its own.

Wire layout of one datagram::

    +------+--------------------------------------------+------+
    | 0x00 |  COBS( datagram || CRC-32(datagram) )      | 0x00 |
    +------+--------------------------------------------+------+
     delim   contains no 0x00 byte                        delim

- CRC-32 is `zlib.crc32` of the datagram, started from the CRC of the tag
  b"diode-serial-v1" instead of 0 (as if the tag preceded the datagram), 4
  bytes little-endian, appended before stuffing. It catches line noise that
  COBS alone would turn into a plausible-looking datagram. The tag matters:
  plain CRC-32 of b"" is 0, so an empty datagram would be the frame
  01 01 01 01 01, a pattern a noisy or idle line produces easily; the tag
  also makes frames of an incompatible framing version fail the check.
- COBS (Consistent Overhead Byte Stuffing, Cheshire & Baker 1999) removes
  every 0x00 from the frame at a cost of at most one byte per 254 bytes, so
  0x00 can only ever mean "frame boundary". This encoder always ends with a
  final code byte, even after a full 254-byte block, so the worst case is
  `1 + n // 254` bytes for n stuffed bytes.
- The leading delimiter ends whatever partial frame a receiver may be in the
  middle of (a TX restart, a write cut short by a timeout), so the next frame
  is never glued onto garbage. Empty frames (two delimiters in a row) are
  ignored, so back-to-back frames cost two delimiters and nothing else.

The receiver (`SerialDeframer`) splits on 0x00, unstuffs, checks length and
CRC, and counts whatever fails: it never raises on bytes from the wire.
"""

from __future__ import annotations

import struct
import zlib

DELIMITER = 0x00
CRC_LEN = 4
DEFAULT_MAX_DATAGRAM = 4096

CRC_TAG = b"diode-serial-v1"

_CRC = struct.Struct("<I")
_CRC_INIT = zlib.crc32(CRC_TAG)
_MAX_BLOCK = 254  # data bytes in a full COBS block (code byte 0xFF)


def cobs_encode(data: bytes) -> bytes:
    """Stuff `data` so that the result contains no 0x00 byte."""
    out = bytearray()
    for chunk in data.split(b"\x00"):
        # Each chunk was followed by a zero (implied by a code < 0xFF),
        # except the last, whose implied zero the decoder drops at the end.
        while len(chunk) >= _MAX_BLOCK:
            out.append(0xFF)
            out += chunk[:_MAX_BLOCK]
            chunk = chunk[_MAX_BLOCK:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Undo `cobs_encode`; None if `data` is not a valid COBS encoding."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        return None
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        block = data[i + 1 : end]
        if b"\x00" in block:
            return None
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def frame_crc(datagram: bytes) -> int:
    """The CRC-32 carried in a frame: zlib.crc32 over CRC_TAG + datagram."""
    return zlib.crc32(datagram, _CRC_INIT)


def encode_frame(datagram: bytes) -> bytes:
    """Return the on-wire bytes for one datagram, delimiters included."""
    body = cobs_encode(datagram + _CRC.pack(frame_crc(datagram)))
    return b"\x00" + body + b"\x00"


def overhead(datagram_len: int) -> int:
    """Worst-case on-wire bytes beyond a datagram of this length (for pacing)."""
    if datagram_len < 0:
        raise ValueError("datagram_len must be >= 0")
    stuffed = datagram_len + CRC_LEN
    return 2 + CRC_LEN + 1 + stuffed // _MAX_BLOCK


def max_encoded_body(max_datagram: int) -> int:
    """Largest COBS body (between delimiters) a datagram of max size can need."""
    return max_datagram + overhead(max_datagram) - 2


class SerialDeframer:
    """Turns a serial byte stream back into CRC-checked datagrams.

    Feed it whatever the port returned, in any chunking; it returns the
    datagrams completed by that chunk. Damage (garbage, truncated or spliced
    frames, flipped bits) is counted and dropped, and decoding resumes at the
    next delimiter. Memory is bounded: a frame that grows beyond what
    `max_datagram` could need is discarded up to the next delimiter.
    """

    def __init__(self, max_datagram: int = DEFAULT_MAX_DATAGRAM) -> None:
        if max_datagram < 0:
            raise ValueError("max_datagram must be >= 0")
        self.max_datagram = max_datagram
        self._max_body = max_encoded_body(max_datagram)
        self._buf = bytearray()
        self._discarding = False
        # Counters: what the wire did to us. Never raised, only counted.
        self.datagrams = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes from the line; return the complete, valid datagrams."""
        out: list[bytes] = []
        parts = bytes(data).split(b"\x00")
        # parts[0] continues the frame in progress; every later part starts
        # after a delimiter, so each part but the last ends a frame.
        for index, part in enumerate(parts):
            if index > 0:
                self._end_frame(out)
            self._append(part)
        return out

    def counters(self) -> dict[str, int]:
        """Snapshot of the counters, for status reports."""
        return {
            "datagrams": self.datagrams,
            "crc_errors": self.crc_errors,
            "framing_errors": self.framing_errors,
            "oversize": self.oversize,
        }

    def _append(self, part: bytes) -> None:
        if self._discarding or not part:
            return
        if len(self._buf) + len(part) > self._max_body:
            self._buf.clear()
            self._discarding = True
            self.oversize += 1
            return
        self._buf += part

    def _end_frame(self, out: list[bytes]) -> None:
        if self._discarding:
            self._discarding = False
            return
        if not self._buf:
            return  # idle delimiters between frames
        body = bytes(self._buf)
        self._buf.clear()
        decoded = cobs_decode(body)
        if decoded is None or len(decoded) < CRC_LEN:
            self.framing_errors += 1
            return
        datagram = decoded[:-CRC_LEN]
        if len(datagram) > self.max_datagram:
            self.oversize += 1
            return
        (crc,) = _CRC.unpack(decoded[-CRC_LEN:])
        if frame_crc(datagram) != crc:
            self.crc_errors += 1
            return
        self.datagrams += 1
        out.append(datagram)
