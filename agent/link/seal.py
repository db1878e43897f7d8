"""Authenticated encryption of frames under the pre-shared link key.

Each epoch gets its own AES-256-GCM subkey, derived with HKDF-SHA256 from the
link key, the link id and the epoch. The 96-bit nonce is the frame's 64-bit
sequence number behind four zero bytes, so a nonce repeats only if an epoch
repeats (the start millisecond and 22 random bits would both have to match), and
copies of one frame are byte-identical rather than re-encrypted.
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


def nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + seq.to_bytes(8, "big")


def seal(cipher: AESGCM, header: bytes, seq: int, body: bytes) -> bytes:
    return header + cipher.encrypt(nonce(seq), body, header)


def open_sealed(cipher: AESGCM, datagram: bytes, header_size: int, seq: int) -> bytes | None:
    """The body, or None when the datagram fails authentication."""
    header = datagram[:header_size]
    try:
        return cipher.decrypt(nonce(seq), datagram[header_size:], header)
    except InvalidTag:
        return None


def key_fingerprint(link_key: bytes) -> str:
    """A short public fingerprint of a key, safe to log and compare by eye."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"diode key fingerprint" + link_key)
    return digest.finalize()[:8].hex(":")
