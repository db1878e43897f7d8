"""Serial transports over a real pseudo-terminal pair.

A pty pair behaves like a null-modem cable: bytes written on the slave come
out of the master and vice versa, through the kernel's tty layer and termios
settings. The slave has a path, so pyserial opens it the way it opens
/dev/ttyUSB0; the master has no path, so `SerialRx.from_fd` reads it.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import random
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest

from agent.transport.serial import SerialRx, SerialTx
from agent.transport.serial_framing import encode_frame

pytestmark = pytest.mark.timeout(60)

BAUD = 115_200


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int, str]]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        yield master, slave, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _pending_input(fd: int) -> int:
    """Bytes waiting unread in a tty's input queue."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _garbage(rng: random.Random) -> bytes:
    """Line noise: random bytes, zeros included, never empty."""
    return bytes(
        rng.choice((0, 0x01, 0xFF, rng.randrange(256))) for _ in range(rng.randint(1, 200))
    )


def _error_runs(garbage: bytes) -> int:
    """Garbage between two frames' delimiters yields one bad frame per non-empty run."""
    return len([run for run in garbage.split(b"\x00") if run])


async def _receive(
    rx: SerialRx, expected: int, write: Callable[[], None], timeout: float = 30.0
) -> list[bytes]:
    """Start `rx`, run the blocking `write` in a thread, collect `expected` datagrams."""
    received: list[bytes] = []
    threads: set[threading.Thread] = set()
    done = asyncio.Event()

    def on_datagram(datagram: bytes) -> None:
        threads.add(threading.current_thread())
        received.append(datagram)
        if len(received) >= expected:
            done.set()

    await rx.start(on_datagram)
    writer = asyncio.create_task(asyncio.to_thread(write))
    await asyncio.wait_for(done.wait(), timeout)
    await writer
    # Nothing more should arrive (no duplicates, no late junk).
    await asyncio.sleep(0.05)
    assert threads == {threading.main_thread()}  # delivered in the loop's thread
    return received


def test_tx_to_rx_2000_datagrams_in_order_with_noise(pty_pair: tuple[int, int, str]) -> None:
    master, slave, path = pty_pair
    rng = random.Random(20240601)
    datagrams = [rng.randbytes(rng.randint(1, 1400)) for _ in range(2000)]
    noise = {i: _garbage(rng) for i in range(0, 2000, 97)}
    expected_errors = sum(_error_runs(g) for g in noise.values())
    assert expected_errors > 0

    tx = SerialTx(path, BAUD)
    rx = SerialRx.from_fd(master)
    assert tx.bits_per_byte == 10
    assert tx.overhead_bytes == 12
    # Bytes sent toward TX; it must leave them unread.
    os.write(master, b"back channel?")

    def write() -> None:
        for i, datagram in enumerate(datagrams):
            if i in noise:
                os.write(slave, noise[i])  # raw garbage on the same line, between frames
            tx.send(datagram)

    try:
        received = asyncio.run(_receive(rx, len(datagrams), write))
        assert _pending_input(slave) == len(b"back channel?")
    finally:
        rx.close()
        tx.close()

    assert received == datagrams
    counters = rx.counters()
    assert counters["datagrams"] == 2000
    assert counters["crc_errors"] + counters["framing_errors"] == expected_errors
    assert counters["oversize"] == 0
    assert counters["handler_errors"] == 0
    assert rx.error is None


def test_rx_opens_port_by_path_and_never_writes(pty_pair: tuple[int, int, str]) -> None:
    master, slave, path = pty_pair
    rng = random.Random(7)
    datagrams = [rng.randbytes(rng.randint(0, 1400)) for _ in range(200)]
    stream = bytearray()
    expected_errors = 0
    for i, datagram in enumerate(datagrams):
        if i % 10 == 5:
            garbage = _garbage(rng)
            expected_errors += _error_runs(garbage)
            stream += garbage
        frame = encode_frame(datagram)
        if i % 25 == 3:
            # A frame cut short (TX died mid-write): the next delimiter ends it.
            stream += frame[: len(frame) // 2]
            expected_errors += 1
        stream += frame

    def write() -> None:
        view = memoryview(bytes(stream))
        while view:
            n = os.write(master, view[:997])  # odd chunks, frames straddle reads
            view = view[n:]

    rx = SerialRx(path, BAUD)
    try:
        received = asyncio.run(_receive(rx, len(datagrams), write))
    finally:
        rx.close()

    assert received == datagrams
    counters = rx.counters()
    assert counters["crc_errors"] + counters["framing_errors"] == expected_errors
    # RX wrote nothing back: no echo, no XOFF, nothing readable on the master.
    os.set_blocking(master, False)
    with pytest.raises(BlockingIOError):
        os.read(master, 100)


def test_rx_survives_a_failing_handler(pty_pair: tuple[int, int, str]) -> None:
    master, slave, path = pty_pair
    good: list[bytes] = []

    def handler(datagram: bytes) -> None:
        if datagram == b"boom":
            raise ValueError("handler bug")
        good.append(datagram)

    async def main() -> None:
        rx = SerialRx.from_fd(master)
        await rx.start(handler)
        os.write(slave, encode_frame(b"a") + encode_frame(b"boom") + encode_frame(b"b"))
        for _ in range(100):
            if len(good) == 2:
                break
            await asyncio.sleep(0.01)
        rx.close()
        assert rx.counters()["handler_errors"] == 1

    asyncio.run(main())
    assert good == [b"a", b"b"]


def test_tx_write_times_out_instead_of_hanging(pty_pair: tuple[int, int, str]) -> None:
    _master, _slave, path = pty_pair
    tx = SerialTx(path, BAUD, write_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(OSError, match="timed out"):
            for _ in range(10_000):  # nobody reads the master: the tty buffer fills
                tx.send(b"\x55" * 1400)
        assert time.monotonic() - started < 10
    finally:
        tx.close()
    with pytest.raises(OSError):
        tx.send(b"closed")


def test_open_failure_is_a_clear_oserror(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(OSError, match="cannot open serial port"):
        SerialTx(os.path.join(tmp_path, "no-such-tty"), BAUD)
