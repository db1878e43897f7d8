"""Wire layout of one datagram on the one-way link.

Every datagram is one sealed frame. All integers are big-endian.

```
 offset size field
 0      1    version    (1)
 1      1    flags      (bit 0: the frame carries a heartbeat; bit 1: a resent copy
                        from TX's recovery window, sealed as one; others 0)
 2      2    link id    (u16, both sides configured alike)
 4      8    epoch      (u64, fresh at every TX start: unix ms << 22 | 22 random bits)
 12     8    sequence   (u64, frame number within the epoch, from 0)
 20     n    ciphertext of the body (AEAD, header as associated data)
 20+n   16   AEAD tag
```

A resent frame (bit 1 of flags) has 4 more clear bytes after the header, k (u32:
its k-th re-send), and its plaintext starts with its age at that re-send (u32,
ms since TX first sealed it) before the body (seal.py, recovery.py).

The body, once opened, is one CBOR array whose items are records (see
`records.py`). The sender builds that array by concatenating records that are
already CBOR-encoded behind an array head, so packing knows exact sizes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 1
FLAG_HEARTBEAT = 0x01
FLAG_RESENT = 0x02
KNOWN_FLAGS = FLAG_HEARTBEAT | FLAG_RESENT

_HEADER = struct.Struct(">BBHQQ")
HEADER_SIZE = _HEADER.size  # 20
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE
MIN_DATAGRAM = OVERHEAD + 1  # an empty CBOR array is one byte


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    flags: int
    link_id: int
    epoch: int
    seq: int

    def pack(self) -> bytes:
        return _HEADER.pack(self.version, self.flags, self.link_id, self.epoch, self.seq)


def parse_header(datagram: bytes) -> Header:
    """Parse the clear header; raises ValueError on a datagram too short to hold one."""
    return Header(*unpack_header(datagram))


def unpack_header(datagram: bytes) -> tuple[int, int, int, int, int]:
    """(version, flags, link id, epoch, seq): `parse_header` without the object, for
    the receiver's per-datagram path."""
    if len(datagram) < MIN_DATAGRAM:
        raise ValueError("truncated")
    return _HEADER.unpack_from(datagram)


def array_head(count: int) -> bytes:
    """The CBOR head of an array of `count` items (major type 4)."""
    if count < 24:
        return bytes([0x80 | count])
    if count < 0x100:
        return bytes([0x98, count])
    if count < 0x10000:
        return b"\x99" + count.to_bytes(2, "big")
    return b"\x9a" + count.to_bytes(4, "big")


def read_array_head(body: bytes) -> tuple[int, int]:
    """`array_head`'s count and size at the start of `body`; ValueError if there is none."""
    head = body[0] if body else 0
    if 0x80 <= head < 0x98:
        return head & 0x1F, 1
    size = {0x98: 2, 0x99: 3, 0x9A: 5}.get(head)
    if size is None or len(body) < size:
        raise ValueError("not the head of a definite array")
    return int.from_bytes(body[1:size], "big"), size


def array_head_size(count: int) -> int:
    return 1 if count < 24 else 2 if count < 0x100 else 3 if count < 0x10000 else 5
