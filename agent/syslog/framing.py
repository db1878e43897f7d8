"""Syslog over a byte stream (TCP, TLS), without I/O: bytes in, messages out.

RFC 6587 knows two framings and a receiver tells them apart by the first byte
of a frame (its section 3.4.2): octet counting (`MSG-LEN SP SYSLOG-MSG`, MSG-LEN
a decimal without leading zero, so the frame starts with 1-9) and LF framing
(`SYSLOG-MSG LF`, the message starts with `<`). RFC 5425 (TLS) uses octet
counting. The framing is decided once per connection, at its first byte: a
digit means octet counting, anything else LF framing (lenient: a sender whose
messages lack the `<PRI>` still gets through).

A message longer than `max_size` is cut to its first `max_size` bytes and
flagged truncated; the rest of its frame is read and thrown away, so the next
frame is found. An octet-counted frame whose length is not a number is a
framing error: nothing after it can be trusted, so the connection must close.
Empty LF-framed lines are skipped. The bytes of each message are kept as they
came, LF excluded (a CR before it is the sender's and is kept).
"""

from __future__ import annotations

OCTET, LF = "octet-counting", "lf"
_MAX_DIGITS = 10


class FramingError(ValueError):
    """The stream cannot be framed any further (theirs: counted, the connection closed)."""


class StreamFramer:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.mode: str | None = None
        self._buf = b""
        self._skip = 0          # octet counting: bytes left of a truncated frame
        self._in_long_line = False  # LF framing: discarding the rest of a truncated line

    @property
    def pending(self) -> int:
        """Bytes held for a frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """(message, truncated) for every frame `data` completes; FramingError if broken."""
        if not data:
            return []
        if self.mode is None:
            self.mode = OCTET if 0x31 <= data[0] <= 0x39 else LF
        return self._octets(data) if self.mode is OCTET else self._lines(data)

    # -- octet counting -----------------------------------------------------------------

    def _octets(self, data: bytes) -> list[tuple[bytes, bool]]:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data, self._skip = data[self._skip:], 0
        buf = self._buf + data if self._buf else data
        out: list[tuple[bytes, bool]] = []
        pos, end, limit = 0, len(buf), self.max_size
        while pos < end:
            sp = buf.find(b" ", pos, pos + _MAX_DIGITS + 1)
            if sp < 0:
                if end - pos > _MAX_DIGITS or not buf[pos:end].isdigit():
                    raise FramingError(f"octet-counted frame without a length: {buf[pos:pos + 16]!r}")
                break
            digits = buf[pos:sp]
            if not digits.isdigit() or digits[0] == 0x30:
                raise FramingError(f"octet-counted frame without a length: {buf[pos:pos + 16]!r}")
            n = int(digits)
            start = sp + 1
            if n <= limit:
                if start + n > end:
                    break
                out.append((buf[start:start + n], False))
                pos = start + n
                continue
            if start + limit > end:
                break
            out.append((buf[start:start + limit], True))
            have = end - start - limit
            if have < n - limit:
                self._skip = n - limit - have
                pos = end
                break
            pos = start + n
        self._buf = buf[pos:] if pos < end else b""
        return out

    # -- LF framing -----------------------------------------------------------------------

    def _lines(self, data: bytes) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        if self._in_long_line:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            self._in_long_line = False
            data = data[nl + 1:]
        buf = self._buf + data if self._buf else data
        last = buf.rfind(b"\n")
        limit = self.max_size
        if last >= 0:
            for line in buf[:last].split(b"\n"):
                if len(line) > limit:
                    out.append((line[:limit], True))
                elif line:
                    out.append((line, False))
            buf = buf[last + 1:]
        if len(buf) > limit:  # a line longer than allowed, its LF not here yet
            out.append((buf[:limit], True))
            buf, self._in_long_line = b"", True
        self._buf = buf
        return out

    def close(self) -> tuple[bytes, bool] | None:
        """At end of stream: a last LF-framed message without its LF (octet counting: an
        incomplete frame is lost, and None)."""
        buf, self._buf = self._buf, b""
        if self.mode is LF and buf and not self._in_long_line:
            return (buf, False)
        return None
