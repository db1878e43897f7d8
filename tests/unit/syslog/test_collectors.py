"""RX's stream collector releases a message only once TCP acknowledged its last byte, and
sends again, on the next connection, what the lost one had not (a fake transport and
send queue stand in for asyncio's and the kernel's)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.syslog import collectors
from agent.syslog.backlog import MemoryBacklog
from agent.syslog.collectors import StreamCollector
from agent.syslog.config import Endpoint, RxSyslogChannel


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.buffered = 0      # in asyncio's buffer
        self.closed = False

    def write(self, data: Any) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def abort(self) -> None:
        self.closed = True


def frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        n = int(data[pos:sp])
        out.append(data[sp + 1:sp + 1 + n])
        pos = sp + 1 + n
    return out


def test_only_what_tcp_acknowledged_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    unacked = {"n": 0}
    monkeypatch.setattr(collectors, "_unacked", lambda sock: unacked["n"])
    ep = Endpoint("tcp", "127.0.0.1", 601)
    backlog = MemoryBacklog(1000)
    c = StreamCollector(ep, "test", RxSyslogChannel("t", (ep,)), backlog, None, lambda m: None)

    async def scenario() -> None:
        first = FakeTransport()
        c.connection_made(first)
        for i in range(10):
            c.push(b"<13>m%d" % i)
        await asyncio.sleep(0)  # the drain: one write for the batch
        assert frames(bytes(first.data)) == [b"<13>m%d" % i for i in range(10)]
        unacked["n"] = 4 * 9 + 2  # the last four frames ("7 <13>m0": 9 bytes) and a bit
        c.tick()
        assert c.counters["forwarded"] == 5 and len(backlog) == 5
        first.buffered = 9  # asyncio holds one more: nothing new is released
        c.tick()
        assert c.counters["forwarded"] == 5
        c.connection_lost(ConnectionResetError())
        c.push(b"<13>m10")  # while away: held
        second = FakeTransport()
        unacked["n"], first.buffered = 0, 0
        c.connection_made(second)
        await asyncio.sleep(0)
        assert frames(bytes(second.data)) == [b"<13>m%d" % i for i in range(5, 11)]
        assert c.counters["resent"] == 5 and c.counters["outages"] == 1
        c.tick()
        assert c.counters["forwarded"] == 11 and len(backlog) == 0

    asyncio.run(scenario())
