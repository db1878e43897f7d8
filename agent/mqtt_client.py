"""One MQTT broker connection (paho-mqtt 2.x) in its own thread.

paho's traps, handled here once for both sides (see DESIGN.md):
- A refused CONNACK only shows as a reason code in `on_connect`; with 3.1.1 a
  version refusal silently downgrades and reconnects forever. We turn off
  paho's own reconnects, drive them here with exponential backoff, and make
  any refusal fatal: `fatal` holds one line naming the broker, the reason and
  the fix, and `on_fatal` is called.
- paho reads each packet with several 1-byte `recv` calls; `_BufferedClient`
  reads 64 KiB at a time and serves paho from that buffer (3x fewer syscalls).
- TCP_NODELAY is set, since Nagle plus delayed ACKs gave 44 ms latency spikes.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from .config import BrokerConfig

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


class _BufferedClient(paho.Client):
    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(65536)
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._rpos < len(self._rbuf)
               and self._sock is not None):
            rc = super().loop_read(max_packets)
        return rc

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0
        return super().reconnect()


class MqttConnection:
    """Keeps one broker connection up; reports state for heartbeats and status."""

    def __init__(self, cfg: BrokerConfig, what: str, *,
                 on_connected: Callable[[paho.Client], None] | None = None,
                 on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 manual_ack: bool = False, will: tuple[str, bytes] | None = None) -> None:
        self.cfg = cfg
        self.what = what  # e.g. "OT broker 'plant' (127.0.0.1:1883)"
        self.state = "connecting"
        self.fatal: str | None = None
        self.counters = {"connects": 0, "outages": 0}
        self._on_connected = on_connected
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        proto = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
        self.client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                      protocol=proto, reconnect_on_failure=False,
                                      manual_ack=manual_ack)
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
        self.client.on_connect = self._handle_connect
        self.client.on_socket_open = self._handle_socket_open
        if on_message is not None:
            self.client.on_message = on_message

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mqtt:{self.what}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self.client.disconnect()
        except Exception:  # already gone; nothing to undo
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # -- thread ----------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.cfg
        delay = cfg.reconnect_min
        while not self._stop.is_set():
            try:
                self.client.connect(cfg.host, cfg.port, cfg.keepalive)
            except ssl.SSLCertVerificationError as exc:
                self._refuse(f"{self.what}: TLS certificate check failed: {exc.verify_message}. "
                             "Fix: give ca_file the CA that signed the broker's certificate, "
                             "and connect by a name in that certificate")
                return
            except (OSError, ssl.SSLError) as exc:
                self._lost(f"cannot connect: {exc}", delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, cfg.reconnect_max)
                continue
            got_connack = False
            while not self._stop.is_set():
                rc = self.client.loop(0.2)
                if self.state == "connected":
                    got_connack = True
                    delay = cfg.reconnect_min
                if self.fatal is not None:
                    return
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if self._stop.is_set():
                return
            if not got_connack and rc == MQTTErrorCode.MQTT_ERR_PROTOCOL:
                self._refuse(f"{self.what} refused MQTT {cfg.protocol} (unacceptable protocol "
                             'version). Fix: set protocol = "5" or "3.1.1" to what the broker '
                             "speaks")
                return
            self._lost(f"connection lost ({paho.error_string(rc)})", delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, cfg.reconnect_max)

    def _lost(self, why: str, delay: float) -> None:
        if self.state != "disconnected":
            self.counters["outages"] += 1
        self.state = "disconnected"
        log.error("%s: %s; retrying in %.1f s", self.what, why, delay)

    def _refuse(self, message: str) -> None:
        self.state = "refused"
        self.fatal = message
        log.critical(message)
        if self._on_fatal is not None:
            self._on_fatal(message)

    # -- paho callbacks (in this connection's thread) ----------------------------

    def _handle_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any,
                        reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            name = str(reason)
            fix = _FIXES.get(name, "check the broker's log for why it refused this client")
            self._refuse(f"{self.what} refused the connection: {name}. Fix: {fix}")
            client.disconnect()
            return
        self.state = "connected"
        self.counters["connects"] += 1
        log.info("%s: connected (MQTT %s)", self.what, self.cfg.protocol)
        if self._on_connected is not None:
            self._on_connected(client)
