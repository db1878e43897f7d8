"""One MQTT broker connection (paho-mqtt 2.x), driven by the agent's asyncio loop.

paho runs in the loop's own thread through its socket callbacks, so messages
reach the agents without thread hand-offs (measured: the threaded client spent
over half of RX's time waking its own network thread). Only the blocking
connect (TCP and TLS handshake) runs in an executor.

paho's traps, handled here once for both sides (docs/ARCHITECTURE.md, "Traps in our dependencies"):
- A refused CONNACK only shows as a reason code in `on_connect`; with 3.1.1 a
  version refusal silently downgrades and reconnects forever. paho's own
  reconnects are off, ours back off exponentially, and any refusal is fatal:
  `fatal` holds one line naming the broker, the reason and the fix.
- paho reads each packet with several small `recv` calls and writes each
  packet with its own `send`; `_BufferedClient` reads 64 KiB at a time and
  gathers writes until the loop flushes them in one `send`, once per loop pass.
- paho builds a Properties object and an MQTTMessage per PUBLISH even when it
  carries no properties (half of TX's time in a profile); `on_publish_fast`
  gets topic, payload and flags straight from the packet instead. Likewise
  `publish_qos0` encodes a QoS 0 PUBLISH straight into the write buffer,
  skipping the MQTTMessageInfo (with its lock and condition) paho makes, and
  `publish_qos1` does the same with a callback for the broker's PUBACK, which
  the store-and-forward path needs to know what it may delete.
- TCP_NODELAY is set, since Nagle plus delayed ACKs gave 44 ms latency spikes.
- A v5 broker's CONNACK limits are kept: Receive Maximum becomes paho's own
  in-flight window (paho ignores it: QoS 2 beyond a default Mosquitto's 20 in
  flight was lost silently) and `receive_maximum` for the fast paths; Maximum
  Packet Size is `max_packet_size`, which senders check before they publish
  (a larger PUBLISH gets the client disconnected, again and again).
- A DISCONNECT from the broker is logged with its reason code (paho reports
  "No error."), and a broker that closes the socket on CONNECT several times in
  a row without a CONNACK (RabbitMQ 3.10 does so on an MQTT 5 CONNECT) is a loud,
  fatal error naming the protocol version and the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.config import BrokerConfig

log = logging.getLogger("diode.mqtt")

_FIXES = {
    "Bad user name or password": "check username and password for this broker",
    "Not authorized": "check the credentials and the broker's ACL for this client",
    "Unsupported protocol version": 'set protocol = "3.1.1" for this broker, or enable MQTT 5 '
                                    "on it",
    "Client identifier not valid": "set a unique client_id",
    "Server unavailable": "check the broker is healthy",
    "Banned": "ask the broker's operator why this client is banned",
}

_WRITE_CHUNK = 256 * 1024
# Connections closed before any CONNACK, in a row, before that is taken for a refusal.
NO_CONNACK_LIMIT = 3
# Bytes written but not yet taken by a broker that is slower than the link (or
# stalled with its socket open): beyond this, QoS 0 waits in the sink's bounded
# queue (overflow counted) instead of growing this buffer until the board runs
# out of memory.
WRITE_BACKLOG = 8 * 1024 * 1024
_PAHO_BACKLOG = 1000  # packets

# topic, payload, qos, retain, properties (None when the PUBLISH carried none), packet id
FastMessageHandler = Callable[[str, bytes, int, bool, Properties | None, int], None]


_BYTE = [bytes((b,)) for b in range(256)]
_CONNECTED = _ConnectionState.MQTT_CS_CONNECTED


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (a remaining length)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _fresh_in_packet() -> Any:
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}


class _BufferedClient(paho.Client):
    _pending: bytes = b""
    _wbuf: bytearray
    on_publish_fast: FastMessageHandler | None = None
    # packet id -> called with the PUBACK reason code (>= 0x80: refused)
    fast_acks: dict[int, Callable[[int], None]]
    # packet id -> the reason code of a PUBREC that refused it
    pubrec_refused: dict[int, int]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has and handle every complete packet in it.

        Replaces paho's reader, which makes several `recv` calls per packet.
        PUBLISH (QoS 0/1) is decoded here; other packets go to paho's handlers.
        """
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        try:
            data = paho.Client._sock_recv(self, 65536)
            pending = getattr(sock, "pending", None)  # TLS keeps decrypted bytes inside
            while pending is not None and pending() > 0:
                data += paho.Client._sock_recv(self, pending())
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        buf = self._pending + data if self._pending else data
        n, pos = len(buf), 0
        while n - pos >= 2:
            command, length, mult, i = buf[pos], 0, 1, pos + 1
            complete = False
            while i < n:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                mult <<= 7
                if not byte & 0x80:
                    complete = True
                    break
                if i - pos > 4:
                    return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            if not complete or i + length > n:
                break  # incomplete: wait for more bytes
            end = i + length
            if (command & 0xF0) == 0x50 and length > 2 and buf[i + 2] >= 0x80:
                # a v5 PUBREC refusing a QoS 2 PUBLISH: paho ignores its reason code and
                # goes on (PUBREL, then a PUBCOMP "not found"); keep the real reason
                self.pubrec_refused[(buf[i] << 8) | buf[i + 1]] = buf[i + 2]
            if (command & 0xF0) == 0x40 and length >= 2 \
                    and (mid := (buf[i] << 8) | buf[i + 1]) in self.fast_acks:
                self.fast_acks.pop(mid)(buf[i + 2] if length > 2 else 0)
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            elif (command & 0xF0) == 0x30 and (command & 0x06) != 0x04 \
                    and self.on_publish_fast is not None:
                rc = self._publish_fast(command, buf, i, end)
            else:
                self._in_packet = cast(Any, {**_fresh_in_packet(), "command": command,
                                             "remaining_length": length, "have_remaining": 1,
                                             "packet": bytearray(buf[i:end])})
                try:
                    rc = self._packet_handle()
                except Exception:  # paho's MalformedPacket and friends
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                self._in_packet = _fresh_in_packet()
            pos = end
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pending = b""
                return self._loop_rc_handle(rc)
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._pending = buf[pos:]
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's path (QoS 2 through paho's own flow)."""
        command = self._in_packet["command"]
        if self.on_publish_fast is None or (command & 0x06) == 0x04:
            return super()._handle_publish()
        packet = bytes(self._in_packet["packet"])
        return self._publish_fast(command, packet, 0, len(packet))

    def _publish_fast(self, command: int, buf: bytes, start: int, end: int) -> MQTTErrorCode:
        qos = (command & 0x06) >> 1
        try:
            pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
            topic = buf[start + 2:pos].decode("utf-8")
            mid = 0
            if qos:
                mid = (buf[pos] << 8) | buf[pos + 1]
                pos += 2
            props = None
            if self._protocol == paho.MQTTv5:
                if buf[pos] == 0:
                    pos += 1
                else:
                    props = Properties(PacketTypes.PUBLISH)
                    pos += props.unpack(buf[pos:end])[1]
            payload = buf[pos:end]
        except Exception:  # IndexError, UnicodeDecodeError; paho's MalformedPacket, KeyError...
            # ... from the properties: a protocol error that drops the connection (as paho's own
            # reader does), never an exception out of loop_read that would leave _pending stale
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        if not topic or pos > end:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL  # a topic alias (never asked for), or bad
        assert self.on_publish_fast is not None
        self.on_publish_fast(topic, payload, qos, bool(command & 0x01), props, mid)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_qos0(self, topic: str, payload: bytes, retain: bool,
                     props: Properties | None) -> bool:
        """Queue a QoS 0 PUBLISH; False when paho's own path must be used."""
        return self._publish_raw(topic, payload, retain, props, 0, None)

    def publish_qos1(self, topic: str, payload: bytes, retain: bool, props: Properties | None,
                     on_ack: Callable[[int], None]) -> bool:
        """Queue a QoS 1 PUBLISH; `on_ack(reason)` runs when the broker acknowledges it.
        False when not connected (the caller keeps the message and sends it again)."""
        return self._publish_raw(topic, payload, retain, props, 1, on_ack)

    def _publish_raw(self, topic: str, payload: bytes, retain: bool, props: Properties | None,
                     qos: int, on_ack: Callable[[int], None] | None) -> bool:
        if self._out_packet or self._sock is None \
                or self._state != _CONNECTED \
                or "+" in topic or "#" in topic:
            return False  # paho's queue first (keeps order), or paho's own checks and errors
        t = topic.encode()
        mid = b""
        if on_ack is not None:
            n = self._mid_generate()
            self.fast_acks[n] = on_ack
            mid = n.to_bytes(2, "big")
        p = b"" if self._protocol != paho.MQTTv5 else \
            b"\x00" if props is None else props.pack()
        n = 2 + len(t) + len(mid) + len(p) + len(payload)
        self._wbuf += b"".join((_BYTE[0x30 | qos << 1 | retain],
                                _BYTE[n] if n < 0x80 else _varint(n),
                                len(t).to_bytes(2, "big"), t, mid, p, payload))
        if not self._registered_write:  # once per loop pass, not per message
            self._call_socket_register_write()
        return True

    def inflight(self) -> int:
        """QoS 1/2 messages paho's own flow has in flight (not the fast paths')."""
        return self._inflight_messages

    def backlogged(self) -> bool:
        """True while the broker lags: more than WRITE_BACKLOG bytes it has not taken,
        or a long queue of paho's own packets behind them (paho bounds QoS 1/2 only;
        while any of its packets wait, QoS 0 joins that queue to keep the order)."""
        return len(self._wbuf) >= WRITE_BACKLOG or len(self._out_packet) >= _PAHO_BACKLOG

    def _sock_send(self, buf: bytes | bytearray) -> int:
        # Gather; `loop_write` flushes. A large backlog is pushed out early.
        self._wbuf += buf
        if len(self._wbuf) >= _WRITE_CHUNK:
            self._flush()
        return len(buf)

    def _flush(self) -> None:
        while self._wbuf and self._sock is not None:
            try:
                sent = super()._sock_send(self._wbuf)
            except BlockingIOError:
                return
            del self._wbuf[:sent]

    def _packet_write(self) -> MQTTErrorCode:
        rc = super()._packet_write()
        try:
            self._flush()
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        return rc

    def want_write(self) -> bool:
        return bool(self._wbuf) or super().want_write()

    def reconnect(self) -> MQTTErrorCode:
        self._pending, self._wbuf = b"", bytearray()
        self.fast_acks.clear()  # unacknowledged ones are the caller's to send again
        return super().reconnect()


class MqttConnection:
    """Keeps one broker connection up; reports state for heartbeats and status."""

    def __init__(self, cfg: BrokerConfig, what: str, *,
                 on_connected: Callable[[paho.Client], None] | None = None,
                 on_message: FastMessageHandler | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 will: tuple[str, bytes] | None = None, manual_ack: bool = False,
                 session_expiry: int = 0,
                 on_written: Callable[[], None] | None = None, quiet: bool = False) -> None:
        self.cfg = cfg
        self.what = what  # e.g. "OT broker 'plant' (127.0.0.1:1883)"
        self.state = "connecting"
        self.fatal: str | None = None
        self.counters = {"connects": 0, "outages": 0}
        # quiet: a helper connection (a retained-store read) logs its comings and goings
        # at debug level, and a refusal as a warning that stops nothing
        self._info = logging.DEBUG if quiet else logging.INFO
        self._error = logging.DEBUG if quiet else logging.ERROR
        self._quiet = quiet
        self.max_packet_size = 0  # announced by a v5 broker in its CONNACK; 0: none
        self._disconnect_reason: str | None = None
        self._on_connected = on_connected
        self._on_written = on_written  # after each write to the socket: room again?
        self._on_fatal = on_fatal
        self._task: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._flush_scheduled = False
        self._last_rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        proto = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
        # A lasting session (session_expiry > 0) keeps the broker holding QoS 1/2
        # messages we have not acknowledged while we are away (restart, crash).
        self._session_expiry = session_expiry
        self.client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                      protocol=proto, reconnect_on_failure=False,
                                      manual_ack=manual_ack,
                                      clean_session=None if proto == paho.MQTTv5
                                      else not session_expiry)
        self.client._wbuf = bytearray()
        self.client.fast_acks = {}
        self.client.pubrec_refused = {}
        self.receive_maximum = 1000  # in flight at once; a v5 broker may ask for fewer
        self.client.max_inflight_messages_set(1000)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            t = cfg.tls
            self.client.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                                certfile=str(t.cert_file) if t.cert_file else None,
                                keyfile=str(t.key_file) if t.key_file else None,
                                cert_reqs=ssl.CERT_REQUIRED)
            if not t.verify_hostname:
                self.client.tls_insecure_set(True)
                log.warning("%s: TLS hostname verification is OFF (tls_verify_hostname = "
                            "false); anyone with a certificate from this CA can pose as the "
                            "broker", what)
        c = self.client
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_socket_open = self._in_loop(self._socket_open)
        c.on_socket_close = self._in_loop(self._socket_close)
        c.on_socket_register_write = self._in_loop(self._register_write)
        c.on_socket_unregister_write = self._in_loop(self._unregister_write)
        c.on_publish_fast = on_message
        if on_message is not None:  # QoS 2 goes through paho's own flow
            c.on_message = lambda _c, _u, m: on_message(m.topic, bytes(m.payload), m.qos,
                                                        m.retain, m.properties, m.mid)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._run())

    async def stop(self, timeout: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.client.is_connected():
            self.client.disconnect()
            closed = self._closed
            if closed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # -- connection loop ---------------------------------------------------------

    async def _run(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        delay = cfg.reconnect_min
        no_connack = 0  # connections in a row the broker closed before any CONNACK
        while True:
            self._closed = asyncio.Event()
            self._last_rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            self._disconnect_reason = None
            try:
                await loop.run_in_executor(None, self._connect)
            except ssl.SSLCertVerificationError as exc:
                self._refuse(f"{self.what}: TLS certificate check failed: {exc.verify_message}. "
                             "Fix: give ca_file the CA that signed the broker's certificate, "
                             "and connect by a name in that certificate")
                return
            except (OSError, ssl.SSLError) as exc:
                self._lost(f"cannot connect: {exc}", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.reconnect_max)
                continue
            connects = self.counters["connects"]
            misc = loop.create_task(self._misc())
            try:
                await self._closed.wait()
            finally:
                misc.cancel()
            if self.fatal is not None:
                return
            got_connack = self.counters["connects"] > connects
            if not got_connack and self._last_rc == MQTTErrorCode.MQTT_ERR_PROTOCOL:
                self._refuse(f"{self.what} refused MQTT {cfg.protocol} (unacceptable protocol "
                             'version). Fix: set protocol = "5" or "3.1.1" to what the broker '
                             "speaks")
                return
            if got_connack:
                delay = cfg.reconnect_min
                no_connack = 0
            else:
                no_connack += 1
                if no_connack >= NO_CONNACK_LIMIT:
                    self._refuse(self._closed_on_connect(no_connack))
                    return
            why = (f"the broker sent DISCONNECT: {self._disconnect_reason}"
                   if self._disconnect_reason else paho.error_string(self._last_rc))
            self._lost(f"connection lost ({why})" if got_connack else
                       f"closed the connection before answering CONNECT ({why})", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.reconnect_max)

    def _closed_on_connect(self, times: int) -> str:
        if self.cfg.protocol == "5":
            return (f"{self.what} closed the connection {times} times in a row without "
                    "answering CONNECT: it most likely does not speak MQTT 5 (RabbitMQ's "
                    "MQTT plugin, for one, just closes the socket on an MQTT 5 CONNECT). "
                    'Fix: set protocol = "3.1.1" for this broker (or, if it expects TLS, '
                    "tls = true)")
        return (f"{self.what} closed the connection {times} times in a row without answering "
                "CONNECT: it may not be an MQTT broker, expect TLS, or refuse MQTT 3.1.1. Fix: "
                "check host and port, set tls = true if the port is a TLS one, and check the "
                "broker's log")

    def _connect(self) -> None:
        cfg = self.cfg
        if self.client.protocol == paho.MQTTv5 and self._session_expiry:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry
            self.client.connect(cfg.host, cfg.port, cfg.keepalive, clean_start=False,
                                properties=props)
        else:
            self.client.connect(cfg.host, cfg.port, cfg.keepalive)

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.client.loop_misc()

    def _mark_down(self) -> None:
        """Count each outage once, whichever notices it first."""
        if self.state != "disconnected":
            self.counters["outages"] += 1
            self.state = "disconnected"

    def _lost(self, why: str, delay: float) -> None:
        self._mark_down()
        log.log(self._error, "%s: %s; retrying in %.1f s", self.what, why, delay)

    def _refuse(self, message: str) -> None:
        self.state = "refused"
        self.fatal = message
        log.log(logging.WARNING if self._quiet else logging.CRITICAL, message)
        if self._on_fatal is not None:
            self._on_fatal(message)

    # -- socket callbacks (paho calls some of them from the connect executor) ------

    def _in_loop(self, fn: Callable[[Any], None]) -> Callable[[paho.Client, Any, Any], None]:
        def callback(client: paho.Client, userdata: Any, sock: Any) -> None:
            if threading.get_ident() == self._loop_thread:
                fn(sock)
            elif self._loop is not None:
                self._loop.call_soon_threadsafe(fn, sock)
        return callback

    def _socket_open(self, sock: Any) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._loop is not None
        self._loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        rc = self.client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._last_rc = rc

    def _writable(self) -> None:
        rc = self.client.loop_write()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._last_rc = rc
        elif self._on_written is not None:
            self._on_written()

    def _socket_close(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):  # the fd may be closed already
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self.state == "connected":
            self._mark_down()
        if self._closed is not None:
            self._closed.set()

    def _register_write(self, sock: Any) -> None:
        # Writes made during one loop pass go out together at its end; only a
        # full socket buffer waits for writability (no epoll change per publish).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_soon, sock)

    def _flush_soon(self, sock: Any) -> None:
        self._flush_scheduled = False
        self._writable()
        if self.client.want_write() and self.client.socket() is sock:
            assert self._loop is not None
            self._loop.add_writer(cast(socket.socket, sock), self._writable)

    def _unregister_write(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)

    # -- paho protocol callbacks ----------------------------------------------------

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any,
                        reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            name = str(reason)
            fix = _FIXES.get(name, "check the broker's log for why it refused this client")
            self._refuse(f"{self.what} refused the connection: {name}. Fix: {fix}")
            client.disconnect()
            return
        self.state = "connected"
        self.receive_maximum = min(1000, getattr(properties, "ReceiveMaximum", 1000))
        # paho's own QoS 1/2 window (its setter refuses while connected; this runs
        # before paho sends what waited, so the window applies to those too)
        client._max_inflight_messages = self.receive_maximum
        self.max_packet_size = getattr(properties, "MaximumPacketSize", 0)
        self.counters["connects"] += 1
        log.log(self._info, "%s: connected (MQTT %s%s)", self.what, self.cfg.protocol,
                f", receive maximum {self.receive_maximum}, maximum packet size "
                f"{self.max_packet_size}" if self.receive_maximum < 1000
                or self.max_packet_size else "")
        if self._on_connected is not None:
            self._on_connected(client)

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                           reason: ReasonCode, properties: Any) -> None:
        if getattr(flags, "is_disconnect_packet_from_server", False):
            self._disconnect_reason = str(reason)
            text = getattr(properties, "ReasonString", None)
            if text:
                self._disconnect_reason += f", {text}"
