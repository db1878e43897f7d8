"""The hand-written MQTT fast paths of `_BufferedClient`, byte for byte against paho's own code.

```
writer: _publish_raw ─► _wbuf  ==  paho publish() ─► loop_write() ─► socketpair ─► peer end
reader: paho's encoder (or the spec) ─► socketpair ─► _BufferedClient.loop_read ─► on_publish_fast
                                    └─► socketpair ─► plain paho Client.loop_read ─► on_message   (same?)
```

agent/mqtt/connection.py reads and writes PUBLISH and PUBACK packets itself and leans on
paho's private members to fit in. These tests pin both halves to paho's behaviour for
MQTT 3.1.1 and 5, and `test_private_members_*` names every private member it touches, so
a paho upgrade that renames or retypes one fails here, not on a board.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import inspect
import random
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import connection
from agent.mqtt.config import BrokerConfig
from agent.mqtt.connection import MqttConnection, _BufferedClient

PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}
SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- clients that think they are connected -----------------------------------------------------


def fast_client(protocol: str, on_message: Callable[..., None] | None = None,
                manual_ack: bool = False) -> _BufferedClient:
    """Built the way the agents build it (no event loop: its socket callbacks do nothing)."""
    conn = MqttConnection(BrokerConfig("127.0.0.1", 1883, protocol, "fast"), "test broker",
                          on_message=on_message, manual_ack=manual_ack)
    return conn.client


def paho_client(protocol: str, manual_ack: bool = False) -> paho.Client:
    """A plain paho client: no socket callbacks, so paho writes each packet at once."""
    return paho.Client(CallbackAPIVersion.VERSION2, client_id="ref", protocol=PROTOCOLS[protocol],
                       manual_ack=manual_ack)


@contextlib.contextmanager
def wired(client: paho.Client) -> Iterator[socket.socket]:
    """Make `client` think it is connected over one end of a socketpair; yield the other."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    client._sock = ours
    client._state = _ConnectionState.MQTT_CS_CONNECTED
    try:
        yield peer
    finally:
        client._sock = None
        ours.close()
        peer.close()


def recv_available(peer: socket.socket) -> bytes:
    out = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := peer.recv(1 << 20):
            out += chunk
    return bytes(out)


def written(client: paho.Client, peer: socket.socket) -> bytes:
    """Everything `client` has to write, flushed with its own `loop_write()`, as the peer reads it."""
    out = bytearray()
    for _ in range(100_000):
        assert client.loop_write() == SUCCESS
        out += recv_available(peer)
        if not client.want_write():
            return bytes(out + recv_available(peer))
    raise AssertionError("loop_write never finished")


def read_all(client: paho.Client) -> None:
    """`loop_read()` until the client's socket has nothing left to read."""
    for _ in range(1_000_000):
        sock = client._sock
        assert sock is not None, "the client dropped the connection"
        if not select.select([sock], [], [], 0)[0]:
            return
        assert client.loop_read() == SUCCESS
    raise AssertionError("loop_read never finished")


def feed(client: paho.Client, peer: socket.socket, data: bytes) -> None:
    """Send `data` from the peer, reading as the client goes (larger than a socket buffer is fine)."""
    view = memoryview(data)
    while view:
        with contextlib.suppress(BlockingIOError):
            view = view[peer.send(view):]
        read_all(client)


# -- messages ----------------------------------------------------------------------------------


class Msg(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Properties | None
    last_mid: int  # the client's packet id counter before it publishes: QoS 1's id is the next one

    @property
    def mid(self) -> int:
        return 1 if self.last_mid == 65535 else self.last_mid + 1


# MQTT's UTF-8 strings: paho's property reader refuses U+0000, U+FEFF and surrogates.
_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufeff")
mqtt_text = st.text(_CHARS, max_size=40)
_TOPIC_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="+#")
topics = st.one_of(
    st.text(_TOPIC_CHARS, min_size=1, max_size=60),
    # long ones, up to 8 chars x 4 bytes x 2000 = 64,000 bytes of UTF-8 (the limit is 65,535)
    st.tuples(st.text(_TOPIC_CHARS, min_size=1, max_size=8), st.integers(20, 2000))
      .map(lambda t: t[0] * t[1]),
)
payloads = st.one_of(
    st.binary(max_size=300),  # remaining length of 1 or 2 bytes
    st.tuples(st.integers(0, 2**32), st.integers(16_000, 20_000))  # 3 bytes
      .map(lambda t: random.Random(t[0]).randbytes(t[1])),
)


@st.composite
def publish_props(draw: st.DrawFn) -> Properties | None:
    kind = draw(st.sampled_from(["none", "empty", "some"]))
    if kind == "none":
        return None
    p = Properties(PacketTypes.PUBLISH)
    if kind == "empty":
        return p
    if draw(st.booleans()):
        p.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        p.ContentType = draw(mqtt_text)
    if draw(st.booleans()):
        p.ResponseTopic = draw(mqtt_text)
    if draw(st.booleans()):
        p.CorrelationData = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        p.UserProperty = draw(st.lists(st.tuples(mqtt_text, mqtt_text), min_size=1, max_size=5))
    if draw(st.booleans()):
        p.PayloadFormatIndicator = draw(st.integers(0, 1))
    return p


messages = st.builds(Msg, topics, payloads, st.integers(0, 1), st.booleans(), publish_props(),
                     st.integers(0, 65535))


def paho_publish_bytes(protocol: str, msg: Msg) -> bytes:
    """What paho's own `publish()` puts on the wire for `msg`."""
    ref = paho_client(protocol)
    ref._last_mid = msg.last_mid  # align the packet id with the fast path's
    with wired(ref) as peer:
        info = ref.publish(msg.topic, msg.payload, msg.qos, msg.retain, msg.props)
        assert info.rc == SUCCESS
        if msg.qos:
            assert info.mid == msg.mid
        return written(ref, peer)


def props_view(p: Properties | None) -> dict[str, Any]:
    return {} if p is None else p.json()


# -- writer ------------------------------------------------------------------------------------


def publish_raw(fast: _BufferedClient, msg: Msg, acks: list[int]) -> bytes:
    """The bytes `publish_qos0`/`publish_qos1` append to `_wbuf` for `msg`."""
    fast._last_mid = msg.last_mid
    before = len(fast._wbuf)
    if msg.qos:
        assert fast.publish_qos1(msg.topic, msg.payload, msg.retain, msg.props, acks.append)
        assert msg.mid in fast.fast_acks
    else:
        assert fast.publish_qos0(msg.topic, msg.payload, msg.retain, msg.props)
    return bytes(fast._wbuf[before:])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FAST
@given(msg=messages)
def test_publish_raw_writes_what_paho_publish_writes(protocol: str, msg: Msg) -> None:
    fast = fast_client(protocol)
    with wired(fast) as peer:
        ours = publish_raw(fast, msg, [])
        assert ours == paho_publish_bytes(protocol, msg)
        assert written(fast, peer) == ours  # and loop_write puts exactly that on the wire


def _sized_message(protocol: str, remaining: int, qos: int, props: Properties | None) -> Msg:
    """A message whose PUBLISH has exactly `remaining` bytes after the fixed header."""
    topic = "a/b"
    overhead = 2 + len(topic) + 2 * qos
    if protocol == "5":
        overhead += 1 if props is None else len(props.pack())
    assert remaining >= overhead
    return Msg(topic, random.Random(remaining).randbytes(remaining - overhead), qos, qos == 1,
               props, 41)


def _user_props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v")]
    return p


# remaining length 127|128 (1|2 bytes of varint), 16383|16384 (2|3), 2097151|2097152 (3|4)
VARINT_EDGES = [0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("remaining", VARINT_EDGES)
def test_publish_raw_at_the_remaining_length_edges(protocol: str, qos: int, remaining: int) -> None:
    msg = _sized_message(protocol, remaining, qos, _user_props() if protocol == "5" else None)
    fast = fast_client(protocol)
    with wired(fast) as peer:
        ours = publish_raw(fast, msg, [])
        header = 1 + (VARINT_EDGES.index(remaining) + 1) // 2 + 1  # command byte + varint
        assert len(ours) == header + remaining
        assert ours == paho_publish_bytes(protocol, msg)
        assert written(fast, peer) == ours


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publish_raw_longest_topic(protocol: str) -> None:
    msg = Msg("é" * 32767 + "t", b"payload", 1, False, None, 65535)  # 65,535 bytes; id wraps to 1
    fast = fast_client(protocol)
    with wired(fast):
        assert publish_raw(fast, msg, []) == paho_publish_bytes(protocol, msg)
        assert list(fast.fast_acks) == [1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publish_raw_leaves_to_paho_what_paho_must_do(protocol: str) -> None:
    """Not connected, paho's own packets still queued, or a wildcard: False, nothing written."""
    fast = fast_client(protocol)
    assert not fast.publish_qos0("t", b"x", False, None)  # no socket
    with wired(fast):
        assert not fast.publish_qos0("a/+", b"x", False, None)
        assert not fast.publish_qos1("a/#", b"x", False, None, print)
        fast._out_packet.append({"command": 0xC0, "mid": 0, "qos": 0, "pos": 0, "to_process": 2,
                                 "packet": b"\xc0\x00", "info": None})
        assert not fast.publish_qos0("t", b"x", False, None)  # order behind paho's queue
        fast._out_packet.clear()
        fast._state = _ConnectionState.MQTT_CS_CONNECTING
        assert not fast.publish_qos1("t", b"x", False, None, print)
        assert fast._wbuf == b"" and fast.fast_acks == {}


# -- reader ------------------------------------------------------------------------------------


class Got(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, Any]
    mid: int


def read_fast(protocol: str, chunks: list[bytes], manual_ack: bool = False,
              fast_acks: dict[int, Callable[[int], None]] | None = None) -> tuple[list[Got], bytes]:
    """Feed `chunks` to a `_BufferedClient`, one `loop_read` pass each: what on_publish_fast
    got, and what the client wrote back (its PUBACKs)."""
    got: list[Got] = []
    raw_props: list[Properties | None] = []

    def on_message(topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None,
                   mid: int) -> None:
        assert type(topic) is str and type(payload) is bytes and type(retain) is bool
        raw_props.append(props)
        got.append(Got(topic, payload, qos, retain, props_view(props), mid))

    fast = fast_client(protocol, on_message, manual_ack)
    fast.fast_acks.update(fast_acks or {})
    with wired(fast) as peer:
        for chunk in chunks:
            feed(fast, peer, chunk)
        assert fast._pending == b""
        # None means the PUBLISH carried no properties, never an empty Properties object
        assert all(p is None or not p.isEmpty() for p in raw_props)
        return got, written(fast, peer)


def read_paho(protocol: str, data: bytes, manual_ack: bool = False) -> tuple[list[Got], bytes]:
    """The same through a plain paho client's own reader and parser, to its `on_message`."""
    got: list[Got] = []
    ref = paho_client(protocol, manual_ack)
    ref.on_message = lambda _c, _u, m: got.append(
        Got(m.topic, bytes(m.payload), m.qos, m.retain, props_view(m.properties), m.mid))
    with wired(ref) as peer:
        feed(ref, peer, data)
        return got, written(ref, peer)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FAST
@given(msg=messages, dup=st.booleans(), manual_ack=st.booleans())
def test_reader_gives_what_paho_parses(protocol: str, msg: Msg, dup: bool, manual_ack: bool) -> None:
    packet = bytearray(paho_publish_bytes(protocol, msg))
    if dup and msg.qos:
        packet[0] |= 0x08  # a broker's re-delivery: the DUP flag changes nothing for us
    ours, our_acks = read_fast(protocol, [bytes(packet)], manual_ack)
    theirs, their_acks = read_paho(protocol, bytes(packet), manual_ack)
    assert ours == theirs
    assert our_acks == their_acks  # the PUBACK for QoS 1 (none with manual_ack)
    (got,) = ours
    assert got == Got(msg.topic, msg.payload, msg.qos, msg.retain, got.props, msg.mid if msg.qos else 0)
    sent = props_view(msg.props) if protocol == "5" else {}
    assert got.props == {k: v for k, v in sent.items() if v != []}
    if msg.qos and not manual_ack:
        assert our_acks == b"\x40\x02" + msg.mid.to_bytes(2, "big")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("remaining", VARINT_EDGES)
def test_reader_at_the_remaining_length_edges(protocol: str, remaining: int) -> None:
    msg = _sized_message(protocol, remaining, 1, _user_props() if protocol == "5" else None)
    packet = paho_publish_bytes(protocol, msg)
    ours, our_acks = read_fast(protocol, [packet])
    assert (ours, our_acks) == read_paho(protocol, packet)
    assert [m.payload for m in ours] == [msg.payload]


def _stream(protocol: str) -> tuple[bytes, list[int]]:
    """A PUBLISH with properties (2-byte remaining length), a PUBACK for a fast-path id,
    a retained QoS 0 and an empty QoS 0 PUBLISH."""
    p = None
    if protocol == "5":
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = "text/plain"
        p.UserProperty = [("ü", "1"), ("k", "v")]
        p.CorrelationData = b"\x00\x01"
    data = paho_publish_bytes(protocol, Msg("plant/ä/1", bytes(range(200)), 1, False, p, 6))
    data += b"\x40\x02\x01\x2c"  # PUBACK, id 300
    data += paho_publish_bytes(protocol, Msg("s", b"on", 0, True, None, 0))
    data += paho_publish_bytes(protocol, Msg("e", b"", 0, False, None, 0))
    return data, [300]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reader_split_at_every_byte_boundary(protocol: str) -> None:
    data, ack_ids = _stream(protocol)
    expect_msgs, expect_out = read_paho(protocol, data)
    assert len(expect_msgs) == 3
    for k in range(1, len(data)):
        acks: list[int] = []
        got, out = read_fast(protocol, [data[:k], data[k:]],
                             fast_acks={i: acks.append for i in ack_ids})
        assert (got, out, acks) == (expect_msgs, expect_out, [0]), f"split at byte {k}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reader_one_byte_at_a_time(protocol: str) -> None:
    """Every boundary at once, through a 3-byte remaining length."""
    data, _ = _stream(protocol)
    data += paho_publish_bytes(protocol, _sized_message(protocol, 0x4000 + 9, 1, None))
    expect = read_paho(protocol, data)
    assert len(expect[0]) == 4
    acks: list[int] = []
    assert read_fast(protocol, [data[i:i + 1] for i in range(len(data))],
                     fast_acks={300: acks.append}) == expect
    assert acks == [0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FAST
@given(msgs=st.lists(messages, min_size=1, max_size=4), data=st.data())
def test_reader_any_chunking_of_a_stream(protocol: str, msgs: list[Msg], data: st.DataObject) -> None:
    stream = b"".join(paho_publish_bytes(protocol, m) for m in msgs)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert read_fast(protocol, chunks) == read_paho(protocol, stream)


def _v5_publish(props: bytes, topic: bytes = b"\x00\x01t") -> bytes:
    """A QoS 0 PUBLISH built per the spec, with these property bytes (length included)."""
    body = topic + props + b"x"
    return bytes((0x30, len(body))) + body


MALFORMED = {
    # paho's property reader refuses these (MalformedPacket, MQTTException, KeyError, struct.error)
    "nul in a string": ("5", _v5_publish(b"\x06\x03\x00\x03a\x00b")),
    "U+FEFF in a string": ("5", _v5_publish(b"\x06\x03\x00\x03\xef\xbb\xbf")),
    "a property twice": ("5", _v5_publish(b"\x08\x03\x00\x01a\x03\x00\x01b")),
    "unknown property": ("5", _v5_publish(b"\x02\x7f\x00")),
    "string past the properties": ("5", _v5_publish(b"\x02\x03\x00")),
    "properties past the packet": ("5", _v5_publish(b"\x10\x01")),
    # ours: a topic that is not UTF-8 (paho would deliver it and fail on .topic), or too long
    "topic not UTF-8": ("3.1.1", b"\x30\x05\x00\x02\xff\xfex"),
    "topic past the packet": ("3.1.1", b"\x30\x03\x00\x09a"),
    "no topic (a v5 topic alias)": ("5", _v5_publish(b"\x00", b"\x00\x00")),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_reader_malformed_publish_drops_the_connection(name: str) -> None:
    """A PUBLISH that cannot be parsed is a protocol error that drops the connection (as paho
    2.2's own reader does), never an exception out of loop_read."""
    protocol, packet = MALFORMED[name]
    got: list[Any] = []
    fast = fast_client(protocol, lambda *a: got.append(a))
    with wired(fast) as peer:
        peer.send(packet)
        assert fast.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
        assert fast._sock is None and got == []


# -- PUBACK ------------------------------------------------------------------------------------


def _puback(mid: int, tail: bytes = b"") -> bytes:
    body = mid.to_bytes(2, "big") + tail
    return bytes((0x40, len(body))) + body


def _reason_string() -> bytes:
    p = Properties(PacketTypes.PUBACK)
    p.ReasonString = "not allowed here"
    return p.pack()


PUBACKS = [
    ("3.1.1", b"", 0x00),
    ("5", b"", 0x00),  # reason code left out: Success
    ("5", b"\x10", 0x10),  # No matching subscribers, no property length
    ("5", b"\x87\x00", 0x87),  # Not authorized, empty properties
    ("5", b"\x80" + _reason_string(), 0x80),  # Unspecified error, with a reason string
]


@pytest.mark.parametrize(("protocol", "tail", "reason"), PUBACKS)
@pytest.mark.parametrize("last_mid", [0, 1233, 65534, 65535])
def test_puback_reaches_fast_acks_with_paho_reason(protocol: str, tail: bytes, reason: int,
                                                   last_mid: int) -> None:
    msg = Msg("t", b"x", 1, False, None, last_mid)
    fast = fast_client(protocol)
    acks: list[int] = []
    with wired(fast) as peer:
        publish_raw(fast, msg, acks)
        feed(fast, peer, _puback(msg.mid, tail))
        assert acks == [reason] and fast.fast_acks == {}
        feed(fast, peer, _puback(msg.mid, tail))  # a duplicate goes to paho, which ignores it
        assert acks == [reason] and fast._sock is not None

    ref = paho_client(protocol)  # paho's own reading of the same PUBACK
    seen: list[tuple[int, int]] = []
    ref.on_publish = lambda _c, _u, mid, rc, _p: seen.append((mid, rc.value))
    ref._last_mid = last_mid
    with wired(ref) as peer:
        assert ref.publish("t", b"x", 1).mid == msg.mid
        written(ref, peer)
        feed(ref, peer, _puback(msg.mid, tail))
    assert seen == [(msg.mid, reason)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_puback_for_paho_own_publish_reaches_paho(protocol: str) -> None:
    """QoS 1 sent through paho's `publish()` (the memory outbox does): paho's flow acks it."""
    fast = fast_client(protocol)
    seen: list[int] = []
    fast.on_publish = lambda _c, _u, mid, _rc, _p: seen.append(mid)
    with wired(fast) as peer:
        info = fast.publish("t", b"x", 1)
        written(fast, peer)
        feed(fast, peer, _puback(info.mid) + _puback(info.mid + 1, b"\x00" if protocol == "5" else b""))
        assert seen == [info.mid] and fast._out_messages == {}


# -- the private paho members the module touches -----------------------------------------------

# name -> kind: "method" (a function on paho.Client, with this many parameters after self),
# or the type of the instance attribute paho's __init__ sets.
PAHO_METHODS = {
    "_sock_recv": 1, "_sock_send": 1, "_loop_rc_handle": 1, "_packet_handle": 0,
    "_handle_publish": 0, "_send_puback": 1, "_mid_generate": 0, "_call_socket_register_write": 0,
    "_packet_write": 0,
    # public, but overridden: a rename would leave ours dead
    "loop_read": 1, "loop_write": 0, "want_write": 0, "reconnect": 0,
}
PAHO_ATTRIBUTES: dict[str, type | tuple[type, ...]] = {
    "_sock": type(None),
    "_out_packet": collections.deque,
    "_state": _ConnectionState,
    "_protocol": int,
    "_in_packet": dict,
    "_manual_ack": bool,
    "_registered_write": bool,
    "_msgtime_mutex": type(threading.Lock()),
    "_last_bytes_received": float,
    # paho's own QoS 1/2 window: read to leave room for it, set from the CONNACK
    "_inflight_messages": int,
    "_max_inflight_messages": int,
}
# ours, on the subclass
OWN = {"_pending", "_wbuf", "on_publish_fast", "fast_acks", "_publish_fast", "_publish_raw",
       "_flush", "publish_qos0", "publish_qos1", "backlogged"}


def _touched() -> set[str]:
    """Private names `_BufferedClient` uses or defines, and those MqttConnection uses on its client."""
    tree = ast.parse(Path(inspect.getfile(connection)).read_text())
    names: set[str] = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if not isinstance(node, ast.Attribute):
                continue
            v = node.value
            if cls.name == "_BufferedClient":
                if (isinstance(v, ast.Name) and v.id == "self") or (
                        isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super") \
                        or ast.unparse(v) == "paho.Client":
                    names.add(node.attr)
            elif ast.unparse(v) in ("self.client", "client", "c"):
                names.add(node.attr)
        if cls.name == "_BufferedClient":
            for stmt in cls.body:
                if isinstance(stmt, ast.FunctionDef):
                    names.add(stmt.name)
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")} \
        | {n for n in names if n in PAHO_METHODS or n in OWN}


def test_private_members_list_is_complete() -> None:
    """A new private paho member used in connection.py must be added to the lists here."""
    unlisted = _touched() - set(PAHO_METHODS) - set(PAHO_ATTRIBUTES) - OWN
    assert not unlisted, f"connection.py touches paho members not checked here: {sorted(unlisted)}"


def test_private_members_exist_on_paho_client() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    for name, params in PAHO_METHODS.items():
        member = inspect.getattr_static(paho.Client, name, None)
        assert inspect.isfunction(member), f"paho.Client.{name} is no longer a method: {member!r}"
        sig = [p for p in inspect.signature(member).parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(sig) == params + 1, f"paho.Client.{name}{inspect.signature(member)} changed"
    for name, kind in PAHO_ATTRIBUTES.items():
        assert name in vars(client), f"paho.Client() no longer sets self.{name}"
        assert isinstance(vars(client)[name], kind), f"paho's self.{name} is {vars(client)[name]!r}"
        assert inspect.getattr_static(paho.Client, name, None) is None, f"{name} is now a class member"
    for name in OWN:  # and no paho member of the same name that ours would shadow
        assert not hasattr(paho.Client, name) and name not in vars(client), name
    # the packet-in-progress dict ours resets must have paho's keys
    assert set(connection._fresh_in_packet()) == set(client._in_packet)
    assert client._state == _ConnectionState.MQTT_CS_NEW
    assert {"MQTT_CS_CONNECTED", "MQTT_CS_CONNECTING"} <= set(_ConnectionState.__members__)
    assert callable(paho.time_func) and paho.MQTTv5 == 5 and paho.MQTTv311 == 4
    assert callable(Properties.pack) and len(inspect.signature(Properties.unpack).parameters) == 2
