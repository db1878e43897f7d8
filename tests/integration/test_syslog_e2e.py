"""Syslog end to end with real parts: Debian's `logger` and rsyslog on the OT side, the
agents as processes, rsyslog as the IT collector.

```
logger ─┬─ udp ──────────────────────────► diode tx ══ UDP ══► diode rx ─ tcp | tls ─► rsyslogd (collector,
        ├─ tcp (LF | octet counting) ────►  (listeners on                               %rawmsg% to a file)
        └─ tcp ─► rsyslogd (OT relay) ─ tls ─►  127.0.0.1)
```

The collector keeps every message as it received it (`%rawmsg%`), so what the test
reads is the relay header RX put in front and, after it, the bytes logger sent
(`logger -s` prints exactly what it sends).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diode_tools.sim.certs import TlsFiles, make_pki
from diode_tools.sim.mosquitto import Broker, free_port
from diode_tools.sim.rsyslog import Rsyslog, free_udp_port
from tests.integration.conftest import Agent, Collector, Diode, diode_cmd, wait_until
from tests.integration.test_udp_raw import root, root_only  # noqa: F401 (root: a fixture)

HEADER = re.compile(rb'^<(\d+)>1 (\S+) (\S+) diode - - \[diode@32473 peer="([^"]+)" '
                    rb'port="(\d+)" transport="(\w+)"( truncated="1")?\] ', re.S)


def listen(*transports: str) -> list[str]:
    return [f"{t}://127.0.0.1:{free_udp_port() if t == 'udp' else free_port()}"
            for t in transports]


def tx_doc(diode: Diode, endpoints: list[str], link: dict[str, Any] | None = None,
           **syslog: Any) -> dict[str, Any]:
    return {"link": {"key_file": str(diode.key), "host": "127.0.0.1", "port": diode.udp_port,
                     "heartbeat_interval": 0.25, **(link or {})},
            "status": {"file": "tx.status.json", "interval": 0.2},
            "syslog": [{"name": "ot", "listen": endpoints, **syslog}]}


def rx_doc(diode: Diode, collectors: list[str], **syslog: Any) -> dict[str, Any]:
    return {"link": {"key_file": str(diode.key), "host": "127.0.0.1", "port": diode.udp_port},
            "status": {"file": "rx.status.json", "interval": 0.2},
            "syslog": [{"name": "ot", "collectors": collectors, "relay_name": "tx-test",
                        **syslog}]}


def start_pair(diode: Diode, tx: dict[str, Any], rx: dict[str, Any]) -> tuple[Agent, Agent]:
    rx_agent = diode.start("rx", rx)
    tx_agent = diode.start("tx", tx)
    diode.wait_up(rx_agent)
    diode.wait_status(tx_agent, lambda st: st["sources"].get("syslog:ot") == "connected", 10,
                      "TX listening")
    diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["state"] == "connected", 10,
                      "RX connected to its collectors")
    return tx_agent, rx_agent


def port_of(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[1]


def logger(endpoint: str, *flags: str, lines: bytes = b"hello\n") -> list[bytes]:
    """Send `lines` with Debian's logger; the messages exactly as it sent them."""
    transport = endpoint.split(":", 1)[0]
    proc = subprocess.run(["logger", "-s", "--server", "127.0.0.1", "--port", port_of(endpoint),
                           f"--{transport}", "-t", "plc7", *flags], input=lines,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sent = proc.stderr.split(b"\n")[:-1]
    if "--octet-count" in flags:
        sent = [s.split(b" ", 1)[1] for s in sent]
    return sent


def split(line: bytes) -> tuple[re.Match[bytes], bytes]:
    m = HEADER.match(line)
    assert m is not None, line
    return m, line[m.end():]


def test_logger_over_udp_and_tcp_both_framings_and_formats(diode: Diode,
                                                           make_rsyslog: Callable[..., Rsyslog]
                                                           ) -> None:
    collector = make_rsyslog("collector")
    udp, tcp = listen("udp", "tcp")
    start_pair(diode, tx_doc(diode, [udp, tcp]), rx_doc(diode, [collector.endpoint("tcp")]))
    t0 = time.time()
    sent = {"udp": logger(udp, "--rfc3164", lines=b"udp 3164 \xc3\xa9\n")
            + logger(udp, "--rfc5424", lines=b"udp 5424\n"),
            "tcp": logger(tcp, "--rfc5424", lines=b"tcp lf 5424\tTAB\nsecond line\n")
            + logger(tcp, "--rfc3164", "--octet-count", lines=b"tcp octet 3164\n")
            + logger(tcp, "--rfc5424", "--octet-count", lines=b"tcp octet 5424\n")}
    t1 = time.time()
    got = collector.wait_lines(6, 15, settle=0.5)
    assert len(got) == 6, got
    by_transport: dict[str, list[bytes]] = {"udp": [], "tcp": []}
    for line in got:
        m, original = split(line)
        pri, stamp, relay_name, peer, _port, transport, truncated = m.groups()
        assert (relay_name, peer, truncated) == (b"tx-test", b"127.0.0.1", None)
        assert pri == original[1:original.index(b">")]  # the collector files it as the sender
        received = time.mktime(time.strptime(stamp[:19].decode(), "%Y-%m-%dT%H:%M:%S")) \
            - time.timezone + float(stamp[19:-1] or 0)
        assert t0 - 1 <= received <= t1 + 1, (stamp, t0, t1)
        by_transport[transport.decode()].append(original)
    for transport, messages in sent.items():
        assert sorted(by_transport[transport]) == sorted(messages), transport


def test_a_burst_of_10000_arrives_byte_identical_in_order_with_sender_and_time(
        diode: Diode, make_rsyslog: Callable[..., Rsyslog]) -> None:
    collector = make_rsyslog("collector")
    (tcp,) = listen("tcp")
    start_pair(diode, tx_doc(diode, [tcp]), rx_doc(diode, [collector.endpoint("tcp")]))
    texts = [f"burst {i:05d} {'é' * (i % 7)}\tv={i * 7 % 1000} {'x' * (i % 900)}".encode()
             for i in range(10_000)]
    t0 = time.time()
    sent = logger(tcp, "--rfc5424", "--octet-count", "-S", "8192",
                  lines=b"\n".join(texts) + b"\n")
    assert len(sent) == 10_000
    got = collector.wait_lines(10_000, 40, settle=0.5)
    t1 = time.time()
    assert len(got) == 10_000
    originals = []
    for line in got:
        m, original = split(line)
        assert m.group(4) == b"127.0.0.1" and m.group(6) == b"tcp"
        originals.append(original)
    assert originals == sent  # every byte, in order
    assert all(t0 - 1 <= time.mktime(time.strptime(split(ln)[0].group(2)[:19].decode(),
                                                   "%Y-%m-%dT%H:%M:%S")) - time.timezone
               <= t1 for ln in got[::500])


def test_rx_fans_out_to_a_udp_and_a_tcp_collector_each_getting_every_message(
        diode: Diode, make_rsyslog: Callable[..., Rsyslog]) -> None:
    """Every message goes to each collector, with its original bytes after the header."""
    udp_collector = make_rsyslog("udp-collector", udp=True, tcp=False)
    tcp_collector = make_rsyslog("tcp-collector")
    udp, tcp = listen("udp", "tcp")
    _, rx_agent = start_pair(diode, tx_doc(diode, [udp, tcp]),
                             rx_doc(diode, [udp_collector.endpoint("udp"),
                                            tcp_collector.endpoint("tcp")]))
    sent = logger(tcp, "--rfc5424", "--octet-count",
                  lines=b"".join(b"fan-out %03d \xc3\xa9 tab\tend\n" % i for i in range(400)))
    sent += logger(udp, "--rfc3164", lines=b"over udp \xc3\xa9\n")
    for c in (udp_collector, tcp_collector):
        got = c.wait_lines(401, 15, settle=0.5)
        assert sorted(split(line)[1] for line in got) == sorted(sent), c.name
    st = diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["forwarded"] == 2 * 401, 5,
                           "both collectors counted")
    each = st["syslog"]["ot"]["collectors"]
    assert {ep: s["forwarded"] for ep, s in each.items()} == {
        udp_collector.endpoint("udp"): 401, tcp_collector.endpoint("tcp"): 401}


def test_many_messages_pack_into_one_frame(diode: Diode,
                                           make_rsyslog: Callable[..., Rsyslog]) -> None:
    """3,000 short messages (about 80 bytes each) in a burst: the link carries them in
    far fewer frames (a 1400-byte frame holds about ten), every one delivered in order."""
    collector = make_rsyslog("collector")
    (tcp,) = listen("tcp")
    tx_agent, _ = start_pair(diode, tx_doc(diode, [tcp]),
                             rx_doc(diode, [collector.endpoint("tcp")]))
    before = diode.wait_status(tx_agent, lambda st: True, 5, "status")["counters"]
    sent = logger(tcp, "--rfc5424", "--octet-count",
                  lines=b"".join(b"short %04d\n" % i for i in range(3000)))
    assert len(sent) == 3000
    got = collector.wait_lines(3000, 20, settle=0.3)
    assert [split(line)[1] for line in got] == sent
    after = diode.wait_status(tx_agent, lambda st: st["queues"]["syslog:ot"]["queued"] == 0
                              and st["counters"]["syslog:ot.received"] == 3000, 5,
                              "TX took every message")["counters"]
    frames = after["frames"] - before["frames"]  # heartbeats (4 a second) included
    records = after["records"] - before["records"]
    assert records >= 3000
    assert frames * 5 < 3000, (frames, records)  # here about 300: ten messages a frame


def test_relay_header_none_sends_the_original_bytes_alone(diode: Diode,
                                                          make_rsyslog: Callable[..., Rsyslog]
                                                          ) -> None:
    collector = make_rsyslog("collector", udp=True, tcp=False)
    (udp,) = listen("udp")
    start_pair(diode, tx_doc(diode, [udp], max_message_size=600),
               rx_doc(diode, [collector.endpoint("udp")], relay_header="none"))
    sent = logger(udp, "--rfc3164", "-S", "4000", lines=b"short one\n" + b"L" * 1500 + b"\n")
    got = collector.wait_lines(2, 10, settle=0.3)
    assert got == [sent[0], sent[1][:600]]  # the long one cut to max_message_size
    diode.wait_status(diode.agents[0], lambda st: st["syslog"]["ot"]["truncated"] == 1
                      and st["tx"]["counters"]["syslog:ot.truncated"] == 1, 5,
                      "the truncation counted on both sides")


@pytest.mark.slow
@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory"])
def test_a_collector_outage_loses_nothing(diode: Diode, make_rsyslog: Callable[..., Rsyslog],
                                          tmp_path: Path, spooled: bool) -> None:
    """30 s down with the spool, 10 s in memory (the backoff reaches its cap, 2 s here,
    well within either)."""
    collector = make_rsyslog("collector")
    (tcp,) = listen("tcp")
    rx = rx_doc(diode, [collector.endpoint("tcp")], reconnect_max=2.0)
    if spooled:
        subprocess.run(diode_cmd("keygen", "-o", str(tmp_path / "spool.key")), check=True,
                       capture_output=True)
        rx["spool"] = {"dir": "spool", "key_file": str(tmp_path / "spool.key"),
                       "fsync": "never"}
    _, rx_agent = start_pair(diode, tx_doc(diode, [tcp]), rx)
    before = logger(tcp, "--rfc5424", "--octet-count",
                    lines=b"".join(b"before %d\n" % i for i in range(500)))
    collector.wait_lines(500, 15)
    collector.stop()
    during = logger(tcp, "--rfc5424", "--octet-count",
                    lines=b"".join(b"during %d\n" % i for i in range(3000)))
    diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["held"] >= 3000, 10,
                      "RX holding the messages")
    time.sleep(28 if spooled else 8)
    collector.start()
    got = collector.wait_lines(3500, 20, settle=1.0)
    originals = [split(line)[1] for line in got]
    assert sorted(set(originals)) == sorted(before + during), "messages lost"
    st = diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["held"] == 0, 10,
                           "the backlog drained")
    ot = st["syslog"]["ot"]
    assert ot["dropped"] == 0 and ot["outages"] == 1
    col = ot["collectors"][collector.endpoint("tcp")]
    assert col["connects"] == 2 and ("spool" in col) == spooled
    assert len(originals) - len(set(originals)) <= col["resent"]  # duplicates, if any, counted


def test_a_full_rx_spool_drops_its_oldest_and_counts_each(
        diode: Diode, make_rsyslog: Callable[..., Rsyslog], tmp_path: Path) -> None:
    """Collector away, 3.6 MB of messages into a 1 MiB spool: the oldest are dropped and
    counted one by one; once the collector is back it gets exactly the newest, so
    delivered + dropped == sent."""
    collector = make_rsyslog("collector")
    (tcp,) = listen("tcp")
    subprocess.run(diode_cmd("keygen", "-o", str(tmp_path / "spool.key")), check=True,
                   capture_output=True)
    rx = rx_doc(diode, [collector.endpoint("tcp")], reconnect_min=0.2, reconnect_max=0.5)
    rx["spool"] = {"dir": "spool", "key_file": str(tmp_path / "spool.key"), "fsync": "never",
                   "max_bytes": 1 << 20}
    _, rx_agent = start_pair(diode, tx_doc(diode, [tcp]), rx)
    collector.stop()
    diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["state"] != "connected", 10,
                      "RX saw its collector go")
    n = 3000
    sent = logger(tcp, "--rfc5424", "--octet-count", "-S", "8192",
                  lines=b"".join(b"bound %04d %s\n" % (i, b"y" * 1000) for i in range(n)))
    st = diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["received"] == n, 20,
                           "RX received every message")["syslog"]["ot"]
    dropped = st["dropped"]
    assert 0 < dropped < n - 500, st  # well past the bound, yet the newest ~800 kept
    assert st["held"] + dropped == n, st
    collector.start()
    got = collector.wait_lines(n - dropped, 20, settle=0.5)
    delivered = list(dict.fromkeys(split(line)[1] for line in got))  # a resend, if any, once
    assert delivered == sent[dropped:]  # the newest survive, in order; the oldest dropped
    assert len(delivered) + dropped == n
    st = diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["held"] == 0, 10,
                           "the spool drained")["syslog"]["ot"]
    assert st["dropped"] == dropped


def test_tls_from_an_rsyslog_relay_to_a_tls_collector(diode: Diode, tmp_path: Path,
                                                      make_rsyslog: Callable[..., Rsyslog]) -> None:
    pki = make_pki(tmp_path / "pki")
    collector = make_rsyslog("collector", tcp=False, tls=pki.server_tls)
    (tls,) = listen("tls")
    relay = make_rsyslog("ot-relay", forward=tls, forward_ca=pki.ca_cert,
                         forward_name="localhost")
    tx = tx_doc(diode, [tls], tls_cert_file=str(pki.server_cert),
                tls_key_file=str(pki.server_key))
    start_pair(diode, tx, rx_doc(diode, [collector.endpoint("tls")],
                                 tls_ca_file=str(pki.ca_cert)))
    sent = logger(relay.endpoint("tcp"), "--rfc5424", "--octet-count",
                  lines=b"".join(b"over tls %d\n" % i for i in range(200)))
    got = collector.wait_lines(200, 20, settle=0.3)
    assert [split(line)[1] for line in got] == sent
    assert {split(line)[0].group(6) for line in got} == {b"tls"}


def test_tls_refusals_are_loud(diode: Diode, tmp_path: Path,
                               make_rsyslog: Callable[..., Rsyslog]) -> None:
    """A collector whose certificate RX cannot verify stops RX with the fix; a sender
    without the client certificate TX asks for is refused and counted."""
    import ssl
    pki = make_pki(tmp_path / "pki")
    collector = make_rsyslog("collector", tcp=False, tls=TlsFiles(pki.ca_cert, pki.server_cert,
                                                                  pki.server_key))
    (tls,) = listen("tls")
    rx_agent = diode.start("rx", rx_doc(diode, [collector.endpoint("tls")],
                                        tls_ca_file=str(pki.rogue_ca_cert)))
    assert rx_agent.wait_exit(20) == 2
    assert "failed verification" in rx_agent.log() and "Fix: set tls_ca_file" in rx_agent.log()
    tx_agent = diode.start("tx", tx_doc(diode, [tls], tls_cert_file=str(pki.server_cert),
                                        tls_key_file=str(pki.server_key),
                                        tls_client_ca_file=str(pki.ca_cert)))
    diode.wait_status(tx_agent, lambda st: st["sources"].get("syslog:ot") == "connected", 10,
                      "TX listening")
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    with socket.create_connection(("127.0.0.1", int(port_of(tls))), timeout=5) as raw, \
            contextlib.suppress(ssl.SSLError, ConnectionError), \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"5 <13>x")  # TLS 1.3: the client's handshake ends before TX checks it
        assert s.recv(1) == b""
    diode.wait_status(tx_agent, lambda st: st["counters"]["syslog:ot.tls_failures"] == 1, 10,
                      "the refused handshake counted")


def test_connection_limit_and_idle_timeout(diode: Diode,
                                           make_rsyslog: Callable[..., Rsyslog]) -> None:
    (tcp,) = listen("tcp")
    tx_agent = diode.start("tx", tx_doc(diode, [tcp], max_connections=2, idle_timeout=1.0))
    diode.wait_status(tx_agent, lambda st: st["sources"].get("syslog:ot") == "connected", 10,
                      "TX listening")
    addr = ("127.0.0.1", int(port_of(tcp)))
    conns = [socket.create_connection(addr, timeout=5) for _ in range(3)]
    try:
        assert conns[2].recv(1) == b""  # the third is closed at once
        for c in conns[:2]:
            c.settimeout(5)
            assert c.recv(1) == b""  # and the two others once idle for a second
        st = diode.wait_status(tx_agent, lambda st: st["counters"]["syslog:ot.idle_closed"] == 2,
                               5, "idle connections counted")
        assert st["counters"]["syslog:ot.connections_refused"] == 1
    finally:
        for c in conns:
            c.close()


def test_tx_own_warnings_reach_rx_log_and_status(diode: Diode) -> None:
    """A listener on an address TX does not have: TX logs an error and retries; RX logs
    it as "TX: ..." and `diode status` shows it."""
    rx_agent = diode.start("rx", rx_doc(diode, [f"udp://127.0.0.1:{free_udp_port()}"]))
    diode.start("tx", tx_doc(diode, ["udp://192.0.2.1:5514"]))
    diode.wait_up(rx_agent)
    wait_until(lambda: "TX: diode.source.syslog: syslog channel 'ot': cannot listen on "
               "udp://192.0.2.1:5514" in rx_agent.log(), 10, "TX's error in RX's log")
    # (the log record may come before TX's next heartbeat: from the recovery window, when
    # RX started listening after TX's first frames)
    st = diode.wait_status(rx_agent, lambda st: st.get("tx_log") and st.get("tx"), 5,
                           "TX's log and heartbeat in the status")
    assert st["tx_log"][0]["level"] == "ERROR"
    assert st["tx"]["sources"]["syslog:ot"] == "disconnected"
    out = subprocess.run(diode_cmd("status", "-f", str(rx_agent.status_file)),
                         capture_output=True, text=True, timeout=30)
    assert "TX log" in out.stdout and "cannot listen on udp://192.0.2.1:5514" in out.stdout


def test_ipv6_listener_and_tx_spool(diode: Diode, make_rsyslog: Callable[..., Rsyslog],
                                    tmp_path: Path) -> None:
    """A listener on an IPv6 address, and TX's channel spooled into a folder of its own
    (`<name>.syslog`, never an MQTT channel's), with no orphaned-spool warning."""
    collector = make_rsyslog("collector")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    tx = tx_doc(diode, [f"udp://[::1]:{port}"])
    subprocess.run(diode_cmd("keygen", "-o", str(tmp_path / "spool.key")), check=True,
                   capture_output=True)
    tx["spool"] = {"dir": "spool", "key_file": str(tmp_path / "spool.key"), "fsync": "never"}
    tx_agent, _ = start_pair(diode, tx, rx_doc(diode, [collector.endpoint("tcp")]))
    proc = subprocess.run(["logger", "-s", "--server", "::1", "--port", str(port), "--udp",
                           "--rfc5424", "over ipv6"], capture_output=True, timeout=30)
    (line,) = collector.wait_lines(1, 10)
    m, original = split(line)
    assert (m.group(4), m.group(6), original) == (b"::1", b"udp", proc.stderr.rstrip(b"\n"))
    assert (tmp_path / "spool" / "ot.syslog").is_dir()
    assert "belongs to no channel" not in tx_agent.log()


def _receiving_sockets(pid: int) -> tuple[list[str], list[str]]:
    """The process's listening TCP and bound UDP sockets (local addresses), from `ss`."""
    def local(flags: str) -> list[str]:
        out = subprocess.run(["ss", "-H", flags], capture_output=True, text=True,
                             check=True).stdout
        return sorted(line.split()[3] for line in out.splitlines() if f"pid={pid}," in line)
    return local("-ltnp"), local("-uanp")


@root_only
def test_tx_opens_no_receiving_socket_without_syslog_and_exactly_its_listeners_with(
        diode: Diode, it_broker: Broker, collector: Callable[..., Collector]) -> None:
    """Without a [[syslog]] table TX (MQTT channel, link sender, heartbeats all busy) holds
    no listening TCP and no UDP socket at all (root: its link sender is a send-only raw
    socket); with one, exactly the configured listeners and nothing else."""
    rx_agent = diode.start_rx()
    tx_agent = diode.start_tx()
    diode.wait_up(rx_agent)
    diode.wait_ready(collector(it_broker))  # TX subscribed and sending
    assert _receiving_sockets(tx_agent.pid) == ([], [])
    diode.stop(tx_agent)

    udp, tcp = listen("udp", "tcp")
    tx = diode.tx_doc()
    tx["syslog"] = [{"name": "ot", "listen": [udp, tcp]}]
    tx_agent = diode.start("tx", tx, "tx-syslog")
    diode.wait_status(tx_agent, lambda st: st["sources"].get("syslog:ot") == "connected", 10,
                      "TX listening")
    diode.wait_ready(collector(it_broker))
    assert _receiving_sockets(tx_agent.pid) == ([tcp.split("://")[1]], [udp.split("://")[1]])
