"""Serial-line transports (pyserial): one writes, the other only reads.

    SerialTx.send(datagram) --encode_frame--> port write (never reads)
    port fd readable --> os.read --> SerialDeframer --> on_datagram (loop thread)

The framing lives in `serial_framing`; these drivers only move bytes. Ports
are opened 8N1 with no software or hardware flow control: XON/XOFF would be a
back channel (and would eat 0x11/0x13 payload bytes), RTS/CTS needs a return
wire a diode does not have. pyserial also clears ECHO, so the RX kernel never
echoes received bytes back onto a line that has a TX pin.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import serial as pyserial

from agent.transport.base import DatagramHandler
from agent.transport.serial_framing import (
    DEFAULT_MAX_DATAGRAM,
    SerialDeframer,
    encode_frame,
    overhead,
)

log = logging.getLogger(__name__)

# Datagram size the pacer budgets for; the link sender's datagrams are at most this.
PACING_DATAGRAM_LEN = 1400
_READ_CHUNK = 65536


def _open_port(port: str, baudrate: int, write_timeout: float | None) -> pyserial.Serial:
    """Open `port` 8N1, raw, no flow control, locked against a second user."""
    try:
        return pyserial.Serial(
            port=port,
            baudrate=baudrate,
            bytesize=pyserial.EIGHTBITS,
            parity=pyserial.PARITY_NONE,
            stopbits=pyserial.STOPBITS_ONE,
            xonxoff=False,
            rtscts=False,
            dsrdtr=False,
            timeout=0,
            write_timeout=write_timeout,
            exclusive=True,
        )
    except (pyserial.SerialException, ValueError) as exc:
        raise OSError(f"cannot open serial port {port!r} at {baudrate} baud: {exc}") from exc


class SerialTx:
    """TxTransport over a serial port. Writes frames; never reads the port.

    `send` blocks until the kernel has taken the whole frame. The caller paces
    at `baudrate / bits_per_byte` bytes per second, so the kernel buffer never
    fills in normal operation; if it does (a stuck port), the write times out
    after `write_timeout` seconds and raises OSError instead of hanging.
    """

    bits_per_byte = 10  # 8N1: start bit + 8 data bits + stop bit

    def __init__(self, port: str, baudrate: int, *, write_timeout: float = 5.0) -> None:
        if write_timeout <= 0:
            raise ValueError("write_timeout must be > 0 (a serial write must not hang forever)")
        self.port = port
        self.baudrate = baudrate
        self.overhead_bytes = overhead(PACING_DATAGRAM_LEN)
        self._ser: pyserial.Serial | None = _open_port(port, baudrate, write_timeout)

    def send(self, datagram: bytes) -> None:
        """Write one framed datagram. Raises OSError on timeout or port failure."""
        if self._ser is None:
            raise OSError(errno.EBADF, f"serial port {self.port!r} is closed")
        frame = encode_frame(datagram)
        try:
            written = self._ser.write(frame)
        except pyserial.SerialTimeoutException as exc:
            # The partial frame left on the line is harmless: the next frame's
            # leading delimiter ends it and RX counts it as a framing error.
            raise OSError(errno.ETIMEDOUT, f"serial write to {self.port!r} timed out") from exc
        except pyserial.SerialException as exc:
            raise OSError(f"serial write to {self.port!r} failed: {exc}") from exc
        if written != len(frame):
            raise OSError(errno.EIO, f"short serial write to {self.port!r}: {written}/{len(frame)}")

    def close(self) -> None:
        if self._ser is not None:
            ser, self._ser = self._ser, None
            ser.close()


class SerialRx:
    """RxTransport over a serial port. Reads and deframes; never writes.

    Reading uses `loop.add_reader` on the port's file descriptor, so each
    datagram reaches `on_datagram` in the asyncio loop's thread with no extra
    thread. Bad bytes are counted (see `counters`); a failing port (e.g. a
    USB adapter unplugged) is logged, stops reception and is kept in `error`.
    """

    def __init__(
        self, port: str, baudrate: int, *, max_datagram: int = DEFAULT_MAX_DATAGRAM
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.deframer = SerialDeframer(max_datagram)
        self.error: OSError | None = None
        self.bytes_received = 0
        self.handler_errors = 0
        self._fd_given: int | None = None
        self._ser: pyserial.Serial | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_datagram: DatagramHandler | None = None

    @classmethod
    def from_fd(cls, fd: int, *, max_datagram: int = DEFAULT_MAX_DATAGRAM) -> SerialRx:
        """Read from an already-open, already-configured tty fd (e.g. a pty master).

        The caller keeps ownership of `fd`; `close` stops reading but does not
        close it.
        """
        rx = cls(f"fd:{fd}", 0, max_datagram=max_datagram)
        rx._fd_given = fd
        return rx

    async def start(self, on_datagram: DatagramHandler) -> None:
        """Open the port and start reading; returns once the reader is armed."""
        if self._fd is not None:
            raise RuntimeError("SerialRx already started")
        loop = asyncio.get_running_loop()
        if self._fd_given is not None:
            fd = self._fd_given
        else:
            self._ser = _open_port(self.port, self.baudrate, write_timeout=None)
            fd = self._ser.fileno()
        os.set_blocking(fd, False)
        self._loop = loop
        self._on_datagram = on_datagram
        self._fd = fd
        loop.add_reader(fd, self._on_readable)

    def counters(self) -> dict[str, int]:
        """Deframer counters plus bytes read and handler failures."""
        counts = self.deframer.counters()
        counts["bytes_received"] = self.bytes_received
        counts["handler_errors"] = self.handler_errors
        return counts

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if not data:
            self._fail(OSError(errno.EIO, "end of file"))
            return
        self.bytes_received += len(data)
        handler = self._on_datagram
        for datagram in self.deframer.feed(data):
            if handler is None:
                break
            try:
                handler(datagram)
            except Exception:
                # One bad datagram must not stop reception of the rest.
                self.handler_errors += 1
                log.exception("serial RX handler failed on a %d-byte datagram", len(datagram))

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        log.error("serial port %r failed, reception stopped: %s", self.port, exc)
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = None

    def close(self) -> None:
        self._stop_reading()
        self._on_datagram = None
        if self._ser is not None:
            ser, self._ser = self._ser, None
            ser.close()
