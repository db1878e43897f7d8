"""One spool segment on disk: layout, sealing, and a damage-aware reader.

A segment is one append-only file, ``<segment id, 16 hex digits>.seg``::

    header   76 B   magic "DSPOOL\\0\\1" 8 | spool id 16 | segment id u64 | generation u32
                    | base seq u64 | salt 16 | tag 16
    record   17 B   length u32 | kind u8 | seq u64 | crc32 u32 (of the 13 bytes before it)
             + ciphertext, `length` bytes (body + 16-byte GCM tag)
    ...
    trailer         a record of kind END, empty body, whose seq is the next segment's base seq

Integers are big-endian. Each segment has a fresh random salt and its own
AES-256-GCM subkey, HKDF-SHA256(spool key, "diode spool segment v1" + header[:60]),
so reusing a segment id or a sequence number after a crash never reuses a
(key, nonce) pair: records are never appended to a segment written before a
restart. The nonce is kind (4 bytes) + seq (8). The associated data of a
record is header[:60] + its 17-byte clear header + the seq of the record before
it in this segment (base - 1 for the first), which binds spool, segment,
generation, position and order: a record moved, swapped, replayed from another
segment or spool, or removed from the middle fails authentication.

The crc32 in the clear header tells a torn write from damage: a crash leaves a
short record or zeros at the end of the newest segment, never a complete record
header with a wrong checksum followed by data.

Data record body: append time ms u64 | key length u16 (0xFFFF: no key) | key UTF-8 | payload.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"DSPOOL\x00\x01"
_HEAD = struct.Struct(">8s16sQIQ16s")
HEAD_FIELDS = _HEAD.size            # 60
HEADER_SIZE = HEAD_FIELDS + 16      # 76
REC = struct.Struct(">IBQI")        # length, kind, seq, crc
REC_SIZE = REC.size                 # 17
_REC_CRC = struct.Struct(">IBQ")    # the bytes the crc covers
TAG_SIZE = 16
DATA, HEADER, END = 0, 1, 2
TRAILER_SIZE = REC_SIZE + TAG_SIZE
_BODY = struct.Struct(">QH")
BODY_OVERHEAD = REC_SIZE + TAG_SIZE + _BODY.size   # bytes a data record adds to key + payload
NO_KEY = 0xFFFF
MAX_RECORD = 1 << 30
_INFO = b"diode spool segment v1"
_SEQ = struct.Struct(">Q")


def segment_name(segment_id: int) -> str:
    return f"{segment_id:016x}.seg"


def parse_segment_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "seg" or not dot or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    spool_id: bytes
    segment_id: int
    generation: int
    base_seq: int
    salt: bytes

    def pack(self) -> bytes:
        return _HEAD.pack(MAGIC, self.spool_id, self.segment_id, self.generation, self.base_seq,
                          self.salt)


class HeaderError(Exception):
    """A segment header that is not ours, or that fails authentication."""


class SegmentCodec:
    """Seals and opens the records of one segment under its own subkey."""

    def __init__(self, key: bytes, header: SegmentHeader) -> None:
        self.header = header
        self.prefix = header.pack()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + self.prefix)
        self._aead = AESGCM(hkdf.derive(key))
        self._encrypt = self._aead.encrypt
        self._decrypt = self._aead.decrypt

    def header_bytes(self) -> bytes:
        return self.prefix + self._encrypt(_nonce(HEADER, 0), b"", self.prefix)

    def header_ok(self, raw: bytes) -> bool:
        try:
            self._decrypt(_nonce(HEADER, 0), raw[HEAD_FIELDS:HEADER_SIZE], self.prefix)
        except InvalidTag:
            return False
        return True

    def seal(self, kind: int, seq: int, prev: int, body: bytes) -> bytes:
        head = _REC_CRC.pack(len(body) + TAG_SIZE, kind, seq)
        head += zlib.crc32(head).to_bytes(4, "big")
        return head + self._encrypt(_nonce(kind, seq), body, self.prefix + head + _SEQ.pack(prev))

    def open(self, head: bytes, kind: int, seq: int, prev: int, sealed: bytes) -> bytes | None:
        try:
            return self._decrypt(_nonce(kind, seq), sealed, self.prefix + head + _SEQ.pack(prev))
        except InvalidTag:
            return None


def _nonce(kind: int, seq: int) -> bytes:
    return kind.to_bytes(4, "big") + _SEQ.pack(seq)


def open_header(key: bytes, raw: bytes) -> SegmentCodec:
    """The codec of a segment whose first HEADER_SIZE bytes are `raw`."""
    if len(raw) < HEADER_SIZE:
        raise HeaderError(f"header is {len(raw)} bytes, expected {HEADER_SIZE}")
    magic, spool_id, segment_id, generation, base, salt = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise HeaderError("not a spool segment (bad magic or version)")
    codec = SegmentCodec(key, SegmentHeader(spool_id, segment_id, generation, base, salt))
    if not codec.header_ok(raw):
        raise HeaderError("header fails authentication (altered, or sealed with another key)")
    return codec


def encode_body(time_ms: int, key: str | None, payload: bytes) -> bytes:
    if key is None:
        return _BODY.pack(time_ms, NO_KEY) + payload
    raw = key.encode()
    if len(raw) >= NO_KEY:
        raise ValueError(f"record key is {len(raw)} bytes; at most {NO_KEY - 1}")
    return _BODY.pack(time_ms, len(raw)) + raw + payload


def decode_body(body: bytes) -> tuple[float, str | None, bytes]:
    """(time s, key, payload) of a data record body."""
    time_ms, klen = _BODY.unpack_from(body)
    if klen == NO_KEY:
        return time_ms / 1000.0, None, body[_BODY.size:]
    end = _BODY.size + klen
    return time_ms / 1000.0, body[_BODY.size:end].decode(), body[end:]


def body_key(body: bytes) -> str | None:
    klen = _BODY.unpack_from(body)[1]
    return None if klen == NO_KEY else body[_BODY.size:_BODY.size + klen].decode()


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    offset: int
    end: int
    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class End:
    offset: int
    end: int
    seq: int


@dataclass(frozen=True, slots=True)
class Torn:
    """The rest of the newest segment, from `offset`, is an interrupted write."""
    offset: int


@dataclass(frozen=True, slots=True)
class Bad:
    kind: str           # a DamageKind
    offset: int
    seq: int | None
    message: str
    fatal: bool         # the rest of the segment cannot be read


Item = Data | End | Torn | Bad


def zero_run_start(buf: bytes | memoryview, lo: int) -> int:
    """Where the run of zero bytes that ends the buffer starts (>= lo)."""
    end = len(buf)
    raw = bytes(buf[lo:]) if isinstance(buf, memoryview) else buf[lo:]
    return end - (len(raw) - len(raw.rstrip(b"\0")))


def _torn_zeros(buf: bytes, off: int, record_end: int) -> bool:
    """Zeros from inside this record to the end of file: blocks never written before a crash.

    At least a whole tag's worth of zeros (or a block boundary) is required, so a
    byte flipped in a complete last record is not mistaken for a torn write.
    """
    z = zero_run_start(buf, off)
    return z < len(buf) and z < record_end and (len(buf) - z >= TAG_SIZE or z % 512 == 0)


def walk(codec: SegmentCodec, buf: bytes, *, newest: bool, start: int = HEADER_SIZE,
         prev: int | None = None) -> Iterator[Item]:
    """The items of a whole segment file `buf`, in order, damage included.

    `newest` is true for the newest segment, the only one a crash can leave torn:
    there a cut or zero-filled last record is `Torn`; anywhere else it is `Bad`.
    After a `Bad` that is not fatal, reading resumes at the next record.
    """
    n = len(buf)
    off = start
    prev = codec.header.base_seq - 1 if prev is None else prev
    seg = codec.header.segment_id
    while off < n:
        if n - off < REC_SIZE:
            if newest:
                yield Torn(off)
            else:
                yield Bad("truncated", off, None, f"segment {seg:x} ends in {n - off} stray bytes "
                          f"at offset {off}: cut short", True)
            return
        length, kind, seq, crc = REC.unpack_from(buf, off)
        if zlib.crc32(buf[off:off + 13]) != crc:
            if newest and zero_run_start(buf, off) < off + REC_SIZE:
                yield Torn(off)
            else:
                yield Bad("corrupt", off, None, f"segment {seg:x}: record header at offset {off} is "
                          "damaged (checksum); the rest of the segment is unreadable", True)
            return
        end = off + REC_SIZE + length
        if length < TAG_SIZE or length > MAX_RECORD or kind not in (DATA, END):
            yield Bad("corrupt", off, seq, f"segment {seg:x}: record at offset {off} has an impossible "
                      f"header (length {length}, kind {kind}); the rest of the segment is unreadable",
                      True)
            return
        if end > n:
            if newest:
                yield Torn(off)
            else:
                yield Bad("truncated", off, seq, f"segment {seg:x}: record seq {seq} at offset {off} "
                          f"is cut short ({n - off - REC_SIZE} of {length} bytes): truncated", True)
            return
        if seq <= prev:
            yield Bad("reordered", off, seq, f"segment {seg:x}: record seq {seq} at offset {off} "
                      f"follows seq {prev}: records reordered or replayed", False)
            off = end
            continue
        body = codec.open(buf[off:off + REC_SIZE], kind, seq, prev, buf[off + REC_SIZE:end])
        if body is None:
            if newest and _torn_zeros(buf, off, end):
                yield Torn(off)
                return
            yield Bad("corrupt", off, seq, f"segment {seg:x}: record seq {seq} at offset {off} fails "
                      "authentication: altered, moved from elsewhere, or a record before it removed",
                      False)
            prev = seq
            off = end
            continue
        if kind == END:
            yield End(off, end, seq)
            if end != n:
                if newest and zero_run_start(buf, end) == end:
                    yield Torn(end)
                else:
                    yield Bad("corrupt", end, None, f"segment {seg:x}: {n - end} bytes after its end "
                              "record", True)
            return
        yield Data(off, end, seq, body)
        prev = seq
        off = end
