"""Authenticated encryption of frames under the pre-shared link key.

Each epoch gets its own AES-256-GCM subkey, derived with HKDF-SHA256 from the
link key, the link id and the epoch. The 96-bit nonce is the frame's 64-bit
sequence number behind four bytes that say which sealing it is: 0 for the frame
as first sent, 1 for the copy TX keeps to send again (`resent`, see
recovery.py). So a nonce repeats only if an epoch repeats (the start
millisecond and 22 random bits would both have to match), the copies of one
sealing are byte-identical rather than re-encrypted, and a resent copy is
authenticated as one: nobody without the key can make a replay look resent or
a resent copy look live.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
_INFO = b"diode link v1"


def derive_epoch_cipher(link_key: bytes, link_id: int, epoch: int) -> AESGCM:
    if len(link_key) != KEY_SIZE:
        raise ValueError(f"link key must be {KEY_SIZE} bytes, got {len(link_key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                info=_INFO + link_id.to_bytes(2, "big") + epoch.to_bytes(8, "big"))
    return AESGCM(hkdf.derive(link_key))


_LIVE, _RESENT = b"\0\0\0\0", b"\0\0\0\1"


def nonce(seq: int, resent: bool = False) -> bytes:
    return (_RESENT if resent else _LIVE) + seq.to_bytes(8, "big")


def seal(cipher: AESGCM, header: bytes, seq: int, body: bytes, resent: bool = False) -> bytes:
    return header + cipher.encrypt(nonce(seq, resent), body, header)


def open_sealed(cipher: AESGCM, datagram: bytes, header_size: int, seq: int,
                resent: bool = False) -> bytes | None:
    """The body, or None when the datagram fails authentication."""
    header = datagram[:header_size]
    try:
        return cipher.decrypt(nonce(seq, resent), datagram[header_size:], header)
    except InvalidTag:
        return None


def key_fingerprint(link_key: bytes) -> str:
    """A short public fingerprint of a key, safe to log and compare by eye."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"diode key fingerprint" + link_key)
    return digest.finalize()[:8].hex(":")
