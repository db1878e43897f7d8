"""Bounds on what an IT client can make an OPC UA mirror hold: connections, bytes, time.

asyncua's server (2.1) buffers a whole chunk before it checks its size, so a
header announcing 512 MiB made RX buffer whatever followed (RX grew from 128
to 521 MB and stayed there); it keeps up to 1,000 connections that never say
Hello for 30 s, so idle sockets locked real clients out; and it logs a
traceback for each junk packet. `start_bounded` starts the mirror's asyncua
Server with its transport wrapped:

```
TCP accept ─► admit: at most max_connections; when full, the oldest connection with
   │          no secure channel (then: no session) yet makes room, else the newcomer
   │          is closed at once
   ▼
bytes ─► header check before buffering: first a Hello (<= HELLO_MAX bytes), then only
   │     OPN/MSG/CLO chunks within the negotiated receive buffer (<= max_chunk);
   │     anything else: Error message, close
   ▼
asyncua's UaProcessor (messages <= max_message in <= max_message/max_chunk chunks;
   │                   reading pauses while max_pending messages or max_pending_bytes
   │                   wait for it: a pipelining client just waits, memory stays bounded)
   ├─ a message asyncua cannot take (raises): close, no traceback
   └─ deadlines: secure channel open within hello_timeout, session activated
                 within activation_timeout, or close
```

Every refusal is counted and logged as one line per `log_period` seconds
(listener_limits.RefusalLog); asyncua's own transport loggers are limited the
same way, tracebacks cut to one line.

This wraps asyncua internals (BinaryServer, OPCUAProtocol, UaProcessor):
pyproject pins asyncua below 3, and tests/integration/test_listener_limits.py
checks the wrapping is in place.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

import asyncua.server.server as _server_module
from asyncua import Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.ua.ua_binary import header_from_binary, uatcp_to_binary

from agent.listener_limits import RefusalLog

log = logging.getLogger("diode.sink.opcua")

# Part 6, 7.1.2.3: a Hello is 28 bytes plus an EndpointUrl of at most 4096 bytes.
HELLO_MAX = 8192
_SECURE = (b"OPN", b"MSG", b"CLO")
_CHUNK_TYPES = b"FCA"


@dataclass(frozen=True)
class MirrorLimits:
    max_connections: int = 32
    hello_timeout: float = 5.0         # Hello and OpenSecureChannel done within this
    activation_timeout: float = 15.0   # a session activated within this
    max_chunk: int = 65535             # largest chunk accepted (and sent)
    max_message: int = 4 << 20         # largest request, all its chunks together
    max_pending: int = 64              # messages queued per connection before reading
    max_pending_bytes: int = 1 << 20   # pauses (TCP backpressure), or bytes queued
    max_queue: int = 1000              # messages parsed from one read: more is a flood
    log_period: float = 10.0


async def start_bounded(server: Server, name: str, limits: MirrorLimits | None = None) -> None:
    """`await server.start()`, with the transport bounded (see the module docstring)."""
    limits = limits or MirrorLimits()
    server.limits = TransportLimits(
        max_recv_buffer=limits.max_chunk, max_send_buffer=limits.max_chunk,
        max_chunk_count=math.ceil(limits.max_message / limits.max_chunk) + 1,
        max_message_size=limits.max_message)
    iserver = server.iserver
    iserver.max_connections = limits.max_connections  # asyncua's own check, behind ours
    iserver.max_pending_messages_per_connection = limits.max_queue
    iserver.max_pending_activation_seconds = 0  # ours below, with counted, one-line logs
    _quiet_asyncua_transport_logs(limits.log_period)
    guard = _Guard(name, limits)

    class _BoundedBinaryServer(BinaryServer):
        def _make_protocol(self) -> OPCUAProtocol:
            return BoundedProtocol(guard, iserver=self.iserver, policies=self._policies,
                                   clients=self.clients, closing_tasks=self.closing_tasks,
                                   limits=self.limits)

    # Server.start() builds its BinaryServer by this module-level name, with no hook;
    # swapped for the call only (RX starts its mirrors one after the other).
    real = _server_module.BinaryServer
    _server_module.BinaryServer = _BoundedBinaryServer  # type: ignore[misc]
    try:
        await server.start()
    finally:
        _server_module.BinaryServer = real  # type: ignore[misc]
    bserver = getattr(server, "bserver", None)
    if not isinstance(bserver, _BoundedBinaryServer):
        await server.stop()
        raise RuntimeError("asyncua's Server.start() no longer builds its BinaryServer the way "
                           "agent/opcua/limits.py expects: the mirror would run unbounded")


class _Guard:
    """Per mirror: who is connected, who makes room, what was refused."""

    def __init__(self, name: str, limits: MirrorLimits) -> None:
        self.limits = limits
        self.refusals = RefusalLog(log, f"OPC UA mirror '{name}'", limits.log_period)
        self.counters = {"refused": 0, "evicted": 0, "junk": 0, "too_large": 0, "timed_out": 0}

    def admit(self, newcomer: BoundedProtocol) -> bool:
        clients = newcomer.clients  # the server's list, shared by its protocols
        if len(clients) < self.limits.max_connections:
            return True
        waiting = [c for c in clients if isinstance(c, BoundedProtocol) and not c.established]
        if not waiting:
            self.counters["refused"] += 1
            self.refusals.count(f"over the limit of {self.limits.max_connections} sessions",
                                newcomer.peer_name)
            return False
        victim = min(waiting, key=lambda c: (c.stage, c.since))
        self.counters["evicted"] += 1
        victim.drop(f"idle, closed for a newer one at the limit of "
                    f"{self.limits.max_connections}")
        return True


class BoundedProtocol(OPCUAProtocol):
    """asyncua's per-connection protocol with bounds checked before anything is buffered."""

    def __init__(self, guard: _Guard, **kw: Any) -> None:
        super().__init__(**kw)
        self.guard = guard
        self._buf = bytearray()
        self.stage = 0          # 0: waiting for Hello, 1: Hello seen, 2: secure channel open
        self.since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._dropped = False
        self._pending_bytes = 0
        self._paused = False

    @property
    def established(self) -> bool:
        """A secure channel with an activated session: never made to room for others."""
        session = self.processor.session if self.processor is not None else None
        return self.stage == 2 and session is not None and session.is_activated()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer_name = transport.get_extra_info("peername")
        if not self.guard.admit(self):
            self._dropped = True
            cast(asyncio.Transport, transport).abort()  # the descriptor goes now
            return
        super().connection_made(transport)
        if self.transport is None:  # refused by asyncua's own limit
            self._dropped = True
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.limits.hello_timeout, self._deadline)

    def connection_lost(self, ex: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(ex)

    # -- input -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._dropped:
            return
        buf = self._buf
        buf += data
        while len(buf) >= 8:
            mtype, ctype = bytes(buf[:3]), buf[3]
            size = int.from_bytes(buf[4:8], "little")
            problem = self._check(mtype, ctype, size)
            if problem is not None:
                self._refuse(*problem)
                return
            if len(buf) < size:
                return
            packet = Buffer(bytes(buf[:size]))
            del buf[:size]
            header = header_from_binary(packet)
            if mtype == b"HEL":
                self.stage = 1
            try:
                self.messages.put_nowait((header, packet))
            except asyncio.QueueFull:
                self._refuse("junk", "a flood of messages",
                             f"more than {self.messages.maxsize} in one read",
                             ua.StatusCodes.BadTcpServerTooBusy)
                return
            self._pending_bytes += size
            limits = self.guard.limits
            if not self._paused and self.transport is not None and (
                    self.messages.qsize() >= limits.max_pending
                    or self._pending_bytes >= limits.max_pending_bytes):
                self._paused = True
                self.transport.pause_reading()

    def _check(self, mtype: bytes, ctype: int, size: int) -> tuple[str, str, str, int] | None:
        """None, or (counter, reason, detail, status code) to refuse this chunk header."""
        head = bytes([*mtype, ctype])
        if self.stage == 0:
            if mtype != b"HEL" or ctype != ord("F"):
                return ("junk", "not an OPC UA Hello", f"began {head!r}",
                        ua.StatusCodes.BadTcpMessageTypeInvalid)
            if not 8 + 20 <= size <= HELLO_MAX:
                return ("too_large", "a Hello of a bad size", f"{size} bytes announced",
                        ua.StatusCodes.BadTcpMessageTooLarge)
            return None
        if mtype not in _SECURE or ctype not in _CHUNK_TYPES:
            return ("junk", "not an OPC UA chunk after the Hello", f"began {head!r}",
                    ua.StatusCodes.BadTcpMessageTypeInvalid)
        limit = self._chunk_limit()
        if not 12 <= size <= limit:
            return ("too_large", "a chunk over the receive buffer",
                    f"{size} bytes announced, {limit} agreed",
                    ua.StatusCodes.BadTcpMessageTooLarge)
        return None

    def _chunk_limit(self) -> int:
        """The receive buffer agreed in the Acknowledge, never more than ours."""
        ours = self.guard.limits.max_chunk
        agreed = getattr(getattr(self.processor, "_limits", None), "max_recv_buffer", ours)
        return min(ours, agreed) if isinstance(agreed, int) and agreed > 0 else ours

    async def _process_one_msg(self, header: Any, buf: Buffer) -> bool:
        self._pending_bytes -= header.packet_size
        limits = self.guard.limits
        if self._paused and self.transport is not None and not self._dropped and (
                self.messages.qsize() < limits.max_pending // 2
                and self._pending_bytes < limits.max_pending_bytes // 2):
            self._paused = False
            self.transport.resume_reading()
        try:
            ok = await super()._process_one_msg(header, buf)
        except Exception as exc:  # asyncua could not take it: theirs, not ours to trace
            text = str(exc).splitlines()[0][:120] if str(exc) else ""
            self._refuse("junk", "a message asyncua could not take",
                         f"{type(exc).__name__}{': ' + text if text else ''}", None)
            return False
        if ok and header.MessageType == ua.MessageType.SecureOpen:
            self.stage = 2
        return ok

    # -- closing ---------------------------------------------------------------

    def _deadline(self) -> None:
        self._timer = None
        if self._dropped or self.transport is None:
            return
        limits = self.guard.limits
        if self.stage < 2:
            self._refuse("timed_out", f"no secure channel within {limits.hello_timeout:g} s",
                         "", ua.StatusCodes.BadTimeout)
            return
        if self.established:
            return
        left = self.since + limits.activation_timeout - time.monotonic()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._deadline)
            return
        self._refuse("timed_out", f"no session within {limits.activation_timeout:g} s",
                     "", ua.StatusCodes.BadTimeout)

    def drop(self, reason: str) -> None:
        """Close now to make room: out of the client list at once, the descriptor freed."""
        if self in self.clients:
            self.clients.remove(self)
        self._dropped = True
        self.guard.refusals.count(reason, self.peer_name)
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, counter: str, reason: str, detail: str, code: int | None) -> None:
        if self._dropped:
            return
        self._dropped = True
        self._buf.clear()
        self.guard.counters[counter] = self.guard.counters.get(counter, 0) + 1
        self.guard.refusals.count(reason, self.peer_name, detail)
        transport = self.transport
        if transport is None:
            return
        if code is not None:
            try:
                err = ua.ErrorMessage(Error=ua.StatusCode(ua.UInt32(code)),
                                      Reason=ua.String(reason))
                transport.write(uatcp_to_binary(cast(Any, ua.MessageType.Error), err))
            except Exception:  # a transport already gone: nothing to tell
                pass
        transport.close()
        # Unread input makes the kernel reset the connection; whatever is still
        # queued for asyncua is not processed.
        while not self.messages.empty():
            self.messages.get_nowait()
        self.messages.put_nowait((None, None))


# -- asyncua's own logs -------------------------------------------------------------

_TRANSPORT_LOGGERS = ("asyncua.server.binary_server_asyncio", "asyncua.server.uaprocessor",
                      "asyncua.uaprotocol", "asyncua.server.internal_session")
_installed = False


class _OneLinePerPeriod(logging.Filter):
    """A record with a traceback becomes one line naming the exception; the same message
    template is let through once per `period`, with a count of those held back."""

    def __init__(self, period: float) -> None:
        super().__init__()
        self.period = period
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        last, held = self._seen.get(key, (-math.inf, 0))
        if now - last < self.period:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        if held:
            record.msg = f"{record.getMessage()} [{held} more like it in {now - last:.0f} s]"
            record.args = None
        return True


def _quiet_asyncua_transport_logs(period: float) -> None:
    global _installed
    if _installed:
        return
    _installed = True
    for name in _TRANSPORT_LOGGERS:
        logging.getLogger(name).addFilter(_OneLinePerPeriod(period))
