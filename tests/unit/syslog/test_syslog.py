"""The syslog channel's pure parts: record codec, stream framing, relay header, backlog,
config. Arbitrary bytes and fields never crash them."""

from __future__ import annotations

import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError
from agent.link import records
from agent.syslog import relay
from agent.syslog.backlog import MemoryBacklog, SpoolBacklog
from agent.syslog.codec import SyslogMessage, encode_syslog
from agent.syslog.framing import FramingError, StreamFramer
from agent.syslog.sink import spool_name

# -- codec ------------------------------------------------------------------------------

hosts = st.sampled_from(["10.0.0.7", "127.0.0.1", "fd00::5", "::1"]) | st.text(max_size=60)


@given(channel=st.text(max_size=300), received=st.floats(0, 4e9), host=hosts,
       port=st.integers(0, 65535), transport=st.integers(0, 2), truncated=st.booleans(),
       message=st.binary(max_size=70000) | st.sampled_from([b"x" * 65535, b"x" * 65536]))
def test_encode_syslog_decodes_to_the_record(channel: str, received: float, host: str, port: int,
                                             transport: int, truncated: bool,
                                             message: bytes) -> None:
    data = encode_syslog(channel, received, host, port, transport, truncated, message)
    rec = SyslogMessage(channel, received, host, port, transport, truncated, message)
    assert cbor2.loads(data) == rec.to_list()
    assert records.decode(data) == rec
    assert records.decode(records.encode(rec)) == rec


@given(st.lists(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
                | st.binary(max_size=5), min_size=7, max_size=9))
def test_arbitrary_fields_raise_only_record_errors(fields: list[object]) -> None:
    try:
        SyslogMessage.from_list([SyslogMessage.TAG, *fields])
    except (records.RecordError, ValueError, TypeError):
        pass


def test_a_record_from_another_version_is_refused() -> None:
    good = [8, "ot", 1.5, "10.0.0.7", 514, 0, False, b"<13>hi"]
    assert records.decode_item(good) == SyslogMessage("ot", 1.5, "10.0.0.7", 514, 0, False,
                                                      b"<13>hi")
    for i, bad in ((1, 3), (2, "now"), (3, 7), (4, "514"), (4, 70000), (5, 3), (6, 1),
                   (7, "msg")):
        fields = list(good)
        fields[i] = bad
        with pytest.raises(records.RecordError):
            records.decode_item(fields)


# -- framing ------------------------------------------------------------------------------

def octets(*msgs: bytes) -> bytes:
    return b"".join(b"%d %s" % (len(m), m) for m in msgs)


MSGS = [b"<13>1 2024-01-01T00:00:00Z h app - - - hello", b"<34>Oct 11 22:14:15 mymachine su: x",
        b"\xef\xbb\xbfutf-8 \xc3\xa9 and a tab\there", b"<0>" + b"y" * 300, b"<191>1 - - - - - -"]


@given(st.lists(st.integers(1, 400), max_size=20), st.sampled_from(["octet", "lf"]))
def test_framing_does_not_depend_on_how_the_stream_is_cut(cuts: list[int], mode: str) -> None:
    stream = octets(*MSGS) if mode == "octet" else b"\n".join(MSGS) + b"\n"
    framer, got, pos = StreamFramer(8192), [], 0
    for n in cuts:
        got += framer.feed(stream[pos:pos + n])
        pos += n
    got += framer.feed(stream[pos:])
    assert got == [(m, False) for m in MSGS]
    assert framer.pending == 0 and framer.close() is None


def test_framing_is_detected_per_connection() -> None:
    octet, lf = StreamFramer(100), StreamFramer(100)
    assert octet.feed(b"5 <1>ab") == [(b"<1>ab", False)] and octet.mode == "octet-counting"
    assert lf.feed(b"<1>ab\n\n<2>c") == [(b"<1>ab", False)] and lf.mode == "lf"
    assert lf.close() == (b"<2>c", False)  # the last line, its LF never came
    crlf = StreamFramer(100)
    assert crlf.feed(b"<1>a\r\n") == [(b"<1>a\r", False)]  # the sender's CR is kept


def test_long_messages_are_truncated_and_the_next_frame_found() -> None:
    f = StreamFramer(480)
    big = b"<13>" + b"z" * 2000
    stream = octets(MSGS[0], big, MSGS[1])
    got = []
    for i in range(0, len(stream), 7):
        got += f.feed(stream[i:i + 7])
    assert got == [(MSGS[0], False), (big[:480], True), (MSGS[1], False)]
    f = StreamFramer(480)
    got = f.feed(MSGS[0] + b"\n" + big[:1000]) + f.feed(big[1000:] + b"\n" + MSGS[1] + b"\n")
    assert got == [(MSGS[0], False), (big[:480], True), (MSGS[1], False)]


@pytest.mark.parametrize("stream", [b"12x <13>a", b"5 <1>ab0 x", b"5 <1>ab01 <1>",
                                    b"12345678901 <1>", b"5 <1>ab" + b"garbage"])
def test_a_broken_octet_count_is_a_framing_error(stream: bytes) -> None:
    with pytest.raises(FramingError):
        StreamFramer(100).feed(stream)


@given(st.binary(max_size=3000), st.integers(480, 2000))
def test_arbitrary_bytes_never_raise_anything_but_framing_errors(data: bytes, size: int) -> None:
    f = StreamFramer(size)
    try:
        for m, _ in f.feed(data):
            assert len(m) <= size
    except FramingError:
        pass


# -- relay header --------------------------------------------------------------------------

REC = SyslogMessage("ot", 1_700_000_000.25, "10.0.0.7", 51514, 1, False,
                    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed")
RFC5424 = re.compile(rb'^<(\d+)>1 (\S+) (\S+) diode - - \[diode@32473 peer="((?:[^"\\\]]|\\.)+)" '
                     rb'port="(\d+)" transport="(\w+)"( truncated="1")?\] (.*)$', re.S)


def test_rfc5424_relay_header_keeps_the_original_and_names_relay_sender_and_time() -> None:
    out = relay.wrapper("rfc5424", "tx-plant1")(REC)
    m = RFC5424.match(out)
    assert m is not None, out
    assert m.groups() == (b"34", b"2023-11-14T22:13:20.250000Z", b"tx-plant1", b"10.0.0.7",
                          b"51514", b"tcp", None, REC.message)
    assert relay.wrapper("none", "x")(REC) == REC.message
    assert relay.wrapper("plain", "tx1")(REC) == (
        b"diode-relay=tx1 peer=10.0.0.7:51514 transport=tcp received=2023-11-14T22:13:20.250000Z "
        + REC.message)


@pytest.mark.parametrize("message, pri", [(b"<0>x", b"0"), (b"<191>x", b"191"), (b"<192>x", b"13"),
                                          (b"<01>x", b"13"), (b"no pri", b"13"), (b"<>x", b"13"),
                                          (b"<7", b"13"), (b"", b"13")])
def test_the_relay_keeps_a_valid_pri_and_puts_13_on_others(message: bytes, pri: bytes) -> None:
    assert relay.original_pri(message) == pri


def test_a_malformed_host_cannot_break_out_of_the_structured_data() -> None:
    rec = REC._replace(host='1"] evil [x', truncated=True)
    out = relay.wrapper("rfc5424", "r")(rec)
    m = RFC5424.match(out)
    assert m is not None and m.group(7) == b' truncated="1"' and m.group(8) == REC.message
    assert m.group(4) == b'1\\"\\]_evil_[x'


# -- backlog --------------------------------------------------------------------------------

def test_memory_backlog_drops_oldest_and_resends_the_unacknowledged() -> None:
    b = MemoryBacklog(limit=5)
    for i in range(7):
        b.push(b"m%d" % i)
    assert b.dropped == 2 and len(b) == 5
    assert b.next(3) == [(3, b"m2"), (4, b"m3"), (5, b"m4")]
    b.ack(4)
    assert len(b) == 3 and b.unsent == 2
    b.rewind()  # the connection died: m4 was written, not acknowledged
    assert b.next(10) == [(5, b"m4"), (6, b"m5"), (7, b"m6")]


def test_memory_backlog_is_bounded_in_bytes_too() -> None:
    b = MemoryBacklog(limit=100, max_bytes=10)
    for i in range(5):
        b.push(b"m%02d" % i)  # 3 bytes each: three fit
    assert (len(b), b.bytes, b.dropped) == (3, 9, 2)
    b.next(2)
    b.ack(4)
    assert (len(b), b.bytes) == (1, 3)


def test_spool_backlog_survives_a_restart(tmp_path: Path) -> None:
    from agent.spool import Spool
    key = bytes(range(32))
    with Spool(tmp_path, key, max_bytes=1 << 20, fsync="never") as spool:
        b = SpoolBacklog(spool)
        for i in range(5):
            b.push(b"m%d" % i)
        assert [p for _, p in b.next(2)] == [b"m0", b"m1"]
        b.ack(1)
        b.rewind()
        assert [p for _, p in b.next(1)] == [b"m1"]
    with Spool(tmp_path, key, max_bytes=1 << 20, fsync="never") as spool:
        b = SpoolBacklog(spool)
        assert [p for _, p in b.next(10)] == [b"m1", b"m2", b"m3", b"m4"]


# -- config ----------------------------------------------------------------------------------

def load(tmp_path: Path, role: str, body: str) -> config.AgentConfig:
    (tmp_path / "k").write_bytes(bytes(32))
    path = tmp_path / f"{role}.toml"
    path.write_text(f'[link]\nkey_file = "k"\n\n{body}')
    return config.load(path, role)


def test_tx_listeners_are_exactly_those_named(tmp_path: Path) -> None:
    cfg = load(tmp_path, "tx", '[[syslog]]\nname = "ot"\nlisten = ["udp://10.0.0.5:514", '
               '"tcp://[fd00::5]:601"]\n')
    (ch,) = cfg.channels["syslog"]
    assert [e.label for e in ch.listen] == ["udp://10.0.0.5:514", "tcp://[fd00::5]:601"]
    assert ch.max_message_size == 8192 and ch.queue_limit == 100_000


@pytest.mark.parametrize("listen, problem", [
    ('[]', "nothing would be opened"),
    ('["udp://0.0.0.0:514"]', "wildcard"),
    ('["tcp://[::]:601"]', "wildcard"),
    ('["udp://plant-gw:514"]', "IP address, not a name"),
    ('["http://10.0.0.5:80"]', "is not udp://"),
    ('["udp://10.0.0.5:0"]', "is not udp://"),
    ('["udp://10.0.0.5:514", "udp://10.0.0.5:514"]', "listed twice"),
    ('["tls://10.0.0.5:6514"]', "needs TX's certificate"),
])
def test_bad_listeners_are_config_errors_with_the_fix(tmp_path: Path, listen: str,
                                                      problem: str) -> None:
    with pytest.raises(ConfigError, match=r"\[syslog.0\] (listen|tls_cert_file).*Fix:") as err:
        load(tmp_path, "tx", f'[[syslog]]\nname = "ot"\nlisten = {listen}\n')
    assert problem in str(err.value)


def test_two_channels_on_one_port_and_a_missing_listen_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="also a listener of channel 'a'"):
        load(tmp_path, "tx", '[[syslog]]\nname = "a"\nlisten = ["tcp://10.0.0.5:601"]\n'
             '[[syslog]]\nname = "b"\nlisten = ["udp://10.0.0.5:601", "tcp://10.0.0.5:601"]\n')
    with pytest.raises(ConfigError, match="tls_cert_file: cannot load the certificate"):
        load(tmp_path, "tx", '[[syslog]]\nname = "a"\nlisten = ["tls://10.0.0.5:6514"]\n'
             'tls_cert_file = "k"\ntls_key_file = "k"\n')
    with pytest.raises(ConfigError, match=r"\[syslog.0\] listen: missing"):
        load(tmp_path, "tx", '[[syslog]]\nname = "a"\n')


@pytest.mark.parametrize("link, listen, key", [
    ('source = "192.0.2.1"', "udp://192.0.2.1:514", "source"),
    ('interface = "eth1"\nrx_mac = "dc:a6:32:00:00:02"\ninterface_address = "192.0.2.1/24"',
     "tcp://192.0.2.1:601", "interface_address"),
    ('source = "fd00:0:0::1"', "tcp://[fd00::1]:601", "source"),
])
def test_a_listener_on_the_link_address_is_refused_naming_file_key_and_fix(
        tmp_path: Path, link: str, listen: str, key: str) -> None:
    """TX listens on the OT side only: a listener on its own address on the one-way link
    (the [link] source it sends from, or the address it puts on the link interface)."""
    # the [link] keys follow load()'s [link] key_file, in the same table
    body = f'{link}\n\n[[syslog]]\nname = "ot"\nlisten = ["udp://10.0.0.5:514", "{listen}"]\n'
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "tx", body)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'tx.toml'}: [syslog.0] listen: {listen} is on the "
                           f"one-way link"), text
    assert f"TX's [link] {key}" in text and "Fix: bind the listener to TX's OT-side address" \
        in text


def test_listeners_beside_the_link_address_are_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, "tx", 'source = "192.0.2.1"\ninterface_address = "192.0.2.1/24"\n\n'
               '[[syslog]]\nname = "ot"\nlisten = ["udp://10.0.0.5:514", "udp://192.0.2.2:514"]\n')
    assert cfg.link.own_addresses == ("192.0.2.1", "192.0.2.1")
    serial = load(tmp_path, "tx", 'transport = "serial"\nsource = "10.0.0.5"\n\n[[syslog]]\n'
                  'name = "ot"\nlisten = ["udp://10.0.0.5:514"]\n')
    assert serial.link.own_addresses == ()  # a serial link has no address


def test_rx_collectors_and_relay(tmp_path: Path) -> None:
    cfg = load(tmp_path, "rx", '[[syslog]]\nname = "ot"\ncollectors = ["tcp://siem.example:601",'
               ' "udp://10.1.0.9:514"]\n')
    (ch,) = cfg.channels["syslog"]
    assert ch.relay_header == "rfc5424" and ch.relay == "ot" and ch.tls_verify
    with pytest.raises(ConfigError, match="relay_name.*printable"):
        load(tmp_path, "rx", '[[syslog]]\nname = "ot"\ncollectors = ["udp://h:1"]\n'
             'relay_name = "two words"\n')
    with pytest.raises(ConfigError, match="tls_ca_file: set but no collector is tls"):
        load(tmp_path, "rx", '[[syslog]]\nname = "ot"\ncollectors = ["udp://h:1"]\n'
             'tls_ca_file = "k"\n')
    with pytest.raises(ConfigError, match="tls_ca_file: cannot load the CA"):
        load(tmp_path, "rx", '[[syslog]]\nname = "ot"\ncollectors = ["tls://h:1"]\n'
             'tls_ca_file = "k"\n')


def test_spool_folders_never_collide_with_a_channel_name() -> None:
    from agent.syslog.config import Endpoint
    from agent.syslog.source import spool_name as tx_spool_name
    assert tx_spool_name("plant") == "plant.syslog"
    assert spool_name("plant", Endpoint("tcp", "fd00::1", 601)) == "plant.syslog.tcp-fd00__1-601"


@pytest.mark.parametrize("role", ["tx", "rx"])
def test_the_example_configs_syslog_block_loads_once_uncommented(tmp_path: Path,
                                                                 role: str) -> None:
    text = (Path(__file__).resolve().parents[3] / "board" / "config" / f"{role}.toml").read_text()
    block = text[text.index("# [[syslog]]"):].splitlines()
    block = block[:next((i for i, ln in enumerate(block) if not ln.startswith("# ")),
                        len(block))]  # up to the next section of the example
    lines = [ln[2:] for ln in block if not ln.startswith("# tls")]  # TLS files are not here
    cfg = load(tmp_path, role, "\n".join(lines) + "\n")
    assert cfg.channels["syslog"][0].name == "plant"
