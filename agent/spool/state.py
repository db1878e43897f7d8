"""The spool's state file: ack point, segment manifest, pending deletions.

Replaced atomically (write ``state.tmp``, fsync, rename over ``state``, fsync
the directory), so after a crash it is wholly the old or wholly the new one.
Layout, integers big-endian::

    magic "DSPOOLST" 8 | version u8 | key check 8 | spool id 16 | ack seq u64
    | synced seq u64 | next segment id u64 | manifest count u32 | deleting count u32
    | manifest: count x (segment id u64, generation u32) | deleting: count x segment id u64
    | HMAC-SHA256 32, keyed with HKDF(spool key, "diode spool state v1"), over all of the above

Nothing in it is secret, so it is authenticated, not encrypted. The manifest
is how a replayed, injected or deleted segment is recognised: every segment id
below `next segment id` must be listed (at its generation or a later one: a
compaction may have replaced it since) or be in `deleting`, the segments whose removal was
decided but maybe not yet on disk when the file was written. `synced seq` is
the last seq known durable when the file was written, so a log that ends
before it was truncated. The key check names a wrong key as such.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

STATE_NAME = "state"
_TMP = "state.tmp"
_MAGIC = b"DSPOOLST"
_VERSION = 1
_FIXED = struct.Struct(">8sB8s16sQQQII")
_ENTRY = struct.Struct(">QI")
_ID = struct.Struct(">Q")
_MAC = 32


@dataclass(frozen=True, slots=True)
class SpoolState:
    spool_id: bytes
    ack_seq: int
    synced_seq: int
    next_segment_id: int
    manifest: dict[int, int] = field(default_factory=dict)   # segment id -> generation
    deleting: frozenset[int] = frozenset()


class StateError(Exception):
    def __init__(self, message: str, wrong_key: bool = False) -> None:
        super().__init__(message)
        self.wrong_key = wrong_key


def key_check(key: bytes) -> bytes:
    """Eight public bytes that differ between keys, so a wrong key is named as one."""
    return hashlib.sha256(b"diode spool key check" + key).digest()[:8]


class StateFile:
    def __init__(self, directory: Path, key: bytes, dir_fd: int, fsync: bool) -> None:
        self.path = directory / STATE_NAME
        self._tmp = directory / _TMP
        self._dir_fd = dir_fd
        self._fsync = fsync
        self._check = key_check(key)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"diode spool state v1")
        self._mac_key = hkdf.derive(key)

    def encode(self, st: SpoolState) -> bytes:
        out = bytearray(_FIXED.pack(_MAGIC, _VERSION, self._check, st.spool_id, st.ack_seq,
                                    st.synced_seq, st.next_segment_id, len(st.manifest),
                                    len(st.deleting)))
        for sid in sorted(st.manifest):
            out += _ENTRY.pack(sid, st.manifest[sid])
        for sid in sorted(st.deleting):
            out += _ID.pack(sid)
        out += hmac.digest(self._mac_key, bytes(out), "sha256")
        return bytes(out)

    def decode(self, data: bytes) -> SpoolState:
        if len(data) < _FIXED.size + _MAC:
            raise StateError(f"{self.path}: state file is {len(data)} bytes: truncated")
        magic, version, check, spool_id, ack, synced, next_id, n_man, n_del = _FIXED.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise StateError(f"{self.path}: not a spool state file (bad magic or version)")
        if check != self._check:
            raise StateError(f"{self.path}: the spool key does not match this spool (key check "
                             f"{check.hex()}, this key {self._check.hex()})", wrong_key=True)
        size = _FIXED.size + n_man * _ENTRY.size + n_del * _ID.size
        if len(data) != size + _MAC:
            raise StateError(f"{self.path}: state file is {len(data)} bytes, expected {size + _MAC}")
        if not hmac.compare_digest(hmac.digest(self._mac_key, data[:size], "sha256"), data[size:]):
            raise StateError(f"{self.path}: state file fails authentication: altered or damaged")
        off = _FIXED.size
        manifest: dict[int, int] = {}
        for _ in range(n_man):
            sid, gen = _ENTRY.unpack_from(data, off)
            manifest[sid] = gen
            off += _ENTRY.size
        deleting = frozenset(_ID.unpack_from(data, off + i * _ID.size)[0] for i in range(n_del))
        return SpoolState(spool_id, ack, synced, next_id, manifest, deleting)

    def read(self) -> SpoolState | None:
        """The state, None if there is no state file; StateError if it is unusable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return self.decode(data)

    def write(self, st: SpoolState) -> None:
        """Replace the state file; on an error (a full disk) the old one stays as it was."""
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.encode(st))
                f.flush()
                if self._fsync:
                    os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise
        os.replace(self._tmp, self.path)
        if self._fsync:
            os.fsync(self._dir_fd)
