"""Authenticated encryption of frames under the pre-shared link key.

Each epoch gets its own AES-256-GCM subkey, derived with HKDF-SHA256 from the
link key, the link id and the epoch. The 96-bit nonce is the frame's 64-bit
sequence number behind four bytes that say which sealing it is: 0 for the frame
as first sent, 1 + k for its k-th re-send from TX's recovery window
(recovery.py; k goes in clear after the header, and each re-send is sealed
anew with the frame's age in front of its body). So a nonce repeats only if an
epoch repeats (the start millisecond and 22 random bits would both have to
match), the copies of one sealing are byte-identical rather than re-encrypted,
and a re-send is authenticated as one: nobody without the key can make a replay
look resent, a resent copy look live, or change the age it carries.
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


RESENT_COUNT = 4            # bytes of k behind a resent frame's header
MAX_RESENDS = (1 << 32) - 2  # a frame is sent again at most this often (k + 1 fits 4 bytes)


def nonce(seq: int, sealing: int = 0) -> bytes:
    """`sealing`: 0 for the live frame, 1 + k for its k-th re-send."""
    return sealing.to_bytes(4, "big") + seq.to_bytes(8, "big")


def seal(cipher: AESGCM, header: bytes, seq: int, body: bytes) -> bytes:
    return header + cipher.encrypt(nonce(seq), body, header)


def open_sealed(cipher: AESGCM, datagram: bytes, header_size: int, seq: int) -> bytes | None:
    """The body, or None when the datagram fails authentication."""
    header = datagram[:header_size]
    try:
        return cipher.decrypt(nonce(seq), datagram[header_size:], header)
    except InvalidTag:
        return None


def seal_resent(cipher: AESGCM, header: bytes, seq: int, k: int, age_ms: int,
                body: bytes) -> bytes:
    """The k-th re-send of frame `seq`: header, k, and the body behind its age in ms."""
    head = header + k.to_bytes(RESENT_COUNT, "big")
    plain = min(age_ms, 0xFFFFFFFF).to_bytes(4, "big") + body
    return head + cipher.encrypt(nonce(seq, 1 + k), plain, head)


def open_resent(cipher: AESGCM, datagram: bytes, header_size: int, seq: int
                ) -> tuple[int, bytes] | None:
    """(age in ms, body) of a re-send, or None when it fails authentication."""
    head = datagram[:header_size + RESENT_COUNT]
    if len(head) < header_size + RESENT_COUNT:
        return None
    k = int.from_bytes(head[header_size:], "big")
    if k > MAX_RESENDS:
        return None
    try:
        plain = cipher.decrypt(nonce(seq, 1 + k), datagram[len(head):], head)
    except InvalidTag:
        return None
    if len(plain) < 4:
        return None
    return int.from_bytes(plain[:4], "big"), plain[4:]


def key_fingerprint(link_key: bytes) -> str:
    """A short public fingerprint of a key, safe to log and compare by eye."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"diode key fingerprint" + link_key)
    return digest.finalize()[:8].hex(":")
