"""RawUdpTx: ordinary UDP on the wire, and no UDP port bound on the sending side.

```
RawUdpTx (IPPROTO_RAW, own IPv4+UDP headers) ─► loopback ─► plain UDP socket (the receiver)
                                                          └► raw IPPROTO_UDP sniffer (checks the checksum)
```

The socket tests need CAP_NET_RAW (root); without it they fail, saying so.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.transport.udp_raw import RawUdpTx, udp_checksum


@pytest.fixture
def root() -> None:
    """Fail loudly, never skip: CI runs as root, and so must anyone running these."""
    assert os.geteuid() == 0, "raw sockets need CAP_NET_RAW: run the tests as root"


def root_only(test: Any) -> Any:
    """Marked `root` (CI checks every one ran and passed) and failing, not skipping, without it."""
    return pytest.mark.root(pytest.mark.usefixtures("root")(test))


def naive_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    """Sum of the 16-bit words of pseudo-header + UDP segment, end-around carry: the
    textbook loop, to check the big-integer shortcut and the kernel-facing bytes."""
    data = src + dst + b"\0\x11" + len(udp).to_bytes(2, "big") + udp
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("size", [0, 1, 2, 3, 17, 1399, 1400, 8191])
def test_checksum_matches_the_textbook_sum(size: int) -> None:
    rng = random.Random(size)
    for _ in range(50):
        src, dst = rng.randbytes(4), rng.randbytes(4)
        sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
        payload = rng.randbytes(size)
        csum = udp_checksum(src, dst, sport, dport, payload)
        assert csum != 0
        header = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
                  + (8 + size).to_bytes(2, "big") + csum.to_bytes(2, "big"))
        assert naive_checksum(src, dst, header + payload) == 0xFFFF


def test_checksum_of_all_ones_payload_is_never_zero() -> None:
    # A sum of 0xFFFF would give checksum 0, which on the wire means "none".
    for n in range(0, 64, 2):
        assert udp_checksum(b"\xff" * 4, b"\xff" * 4, 0xFFFF, 0xFFFF, b"\xff" * n) != 0


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@root_only
@pytest.mark.parametrize("kw", [{}, {"source": "127.0.0.1"}, {"interface": "lo"},
                                {"source_port": 40000}])
def test_plain_udp_socket_receives_datagrams_intact(receiver: socket.socket,
                                                    kw: dict[str, str]) -> None:
    port = receiver.getsockname()[1]
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sniffer.settimeout(5)
    tx = RawUdpTx("127.0.0.1", port, **kw)  # type: ignore[arg-type]
    try:
        assert tx.overhead_bytes == 20 + 8 + 14 + 4
        rng = random.Random(1)
        for size in (0, 1, 100, 1399, 1400, 9000):
            data = rng.randbytes(size)
            tx.send(data)
            got, (addr, sport) = receiver.recvfrom(65535)
            assert got == data
            assert addr == "127.0.0.1"
            assert sport == kw.get("source_port", port)
            while True:  # the same packet as the kernel saw it: checksum valid
                pkt = sniffer.recv(65535)
                ihl = (pkt[0] & 15) * 4
                if int.from_bytes(pkt[ihl + 2:ihl + 4], "big") == port:
                    break
            udp = pkt[ihl:]
            assert int.from_bytes(udp[6:8], "big") != 0, "UDP checksum left out"
            assert naive_checksum(pkt[12:16], pkt[16:20], udp) == 0xFFFF
            assert pkt[9] == socket.IPPROTO_UDP and pkt[8] == 64
    finally:
        tx.close()
        sniffer.close()


def _sniff(sniffer: socket.socket, port: int) -> bytes:
    """The next UDP segment to `port` as the kernel saw it."""
    while True:
        pkt = sniffer.recv(65535)
        ihl = (pkt[0] & 15) * 4
        if int.from_bytes(pkt[ihl + 2:ihl + 4], "big") == port:
            return pkt


@root_only
def test_repeated_copies_interleaved_keep_their_own_headers(receiver: socket.socket) -> None:
    """Repetition sends one bytes object several times between others; the headers
    built for it once must fit it every time, and never another datagram."""
    port = receiver.getsockname()[1]
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sniffer.settimeout(5)
    tx = RawUdpTx("127.0.0.1", port)
    rng = random.Random(7)
    frames = [rng.randbytes(n) for n in (1400, 1400, 700, 3, 1400)]
    order = [0, 1, 0, 2, 1, 0, 3, 2, 1, 4, 3, 2, 4, 3, 4]
    try:
        for i in order:
            tx.send(frames[i])
            assert receiver.recv(65535) == frames[i]
            pkt = _sniff(sniffer, port)
            ihl = (pkt[0] & 15) * 4
            assert pkt[ihl + 8:] == frames[i]
            assert naive_checksum(pkt[12:16], pkt[16:20], pkt[ihl:]) == 0xFFFF
        for _ in range(300):  # more fresh datagrams than the header cache holds
            tx.send(rng.randbytes(10))
            receiver.recv(100)
        tx.send(frames[0])  # evicted long ago: built afresh
        assert receiver.recv(65535) == frames[0]
        pkt = _sniff(sniffer, port)
        ihl = (pkt[0] & 15) * 4
        assert naive_checksum(pkt[12:16], pkt[16:20], pkt[ihl:]) == 0xFFFF
    finally:
        tx.close()
        sniffer.close()


CHILD = """
import sys
from agent.transport.udp import UdpTx
from agent.transport.udp_raw import RawUdpTx
cls = {"raw": RawUdpTx, "udp": UdpTx}[sys.argv[1]]
tx = cls("127.0.0.1", int(sys.argv[2]))
for i in range(10):
    tx.send(b"datagram %d" % i)
print("sent", flush=True)
sys.stdin.read()
"""


def _ss(flags: str, pid: int) -> list[str]:
    ss = shutil.which("ss") or "/usr/bin/ss"
    out = subprocess.run([ss, "-H", flags], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"pid={pid}," in line]


@root_only
@pytest.mark.parametrize("kind, bound_udp", [("raw", 0), ("udp", 1)])
def test_sender_holds_no_bound_udp_socket(receiver: socket.socket, kind: str,
                                          bound_udp: int) -> None:
    """`ss -uan` lists no UDP socket of a RawUdpTx sender; the UdpTx control shows
    the check sees the ephemeral port an ordinary socket binds at its first send."""
    port = receiver.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "sent"
        for i in range(10):
            assert receiver.recv(100) == b"datagram %d" % i
        udp = _ss("-uanp", child.pid)
        assert len(udp) == bound_udp, udp
        raw = _ss("-wanp", child.pid)
        if kind == "raw":
            assert len(raw) == 1 and ":255" in raw[0], raw  # send-only IPPROTO_RAW
        assert not _ss("-ltnp", child.pid)
    finally:
        child.communicate("", timeout=10)


@root_only
def test_without_cap_net_raw_the_error_names_the_fix() -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) not found"
    res = subprocess.run([setpriv, "--bounding-set=-net_raw", sys.executable, "-c",
                          "from agent.transport.udp_raw import RawUdpTx; "
                          "RawUdpTx('127.0.0.1', 5600)"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "PermissionError" in res.stderr and "CAP_NET_RAW" in res.stderr, res.stderr


@root_only
def test_send_to_an_unused_port_is_silent(receiver: socket.socket) -> None:
    """Nothing listens on the destination: the kernel drops it; the sender sees nothing
    (and cannot: an IPPROTO_RAW socket receives no ICMP)."""
    port = receiver.getsockname()[1]
    receiver.close()
    tx = RawUdpTx("127.0.0.1", port)
    try:
        for _ in range(3):
            tx.send(b"x")
            time.sleep(0.01)
        tx.send(b"y")
    finally:
        tx.close()


def test_bad_addresses_are_named() -> None:
    with pytest.raises(ValueError, match="out of range"):
        RawUdpTx("127.0.0.1", 0)
    with pytest.raises(OSError, match="link host"):
        RawUdpTx("no such host.invalid", 5600)
