"""One-way Ethernet testbed: the whole MQTT path across two network namespaces (root only),
and a syslog channel beside it.

```
 TX namespace diode-tx-ID                                     RX namespace diode-rx-ID
 publisher ─► OT Mosquitto ─► diode tx ─► dtxID ══ veth ══► drxID ─► diode rx ─► IT Mosquitto ─► counter
 logger (udp, tcp) ──────────────┘                                           └─► UDP syslog collector
 (paced)      127.0.0.1:1883              │                  │                  127.0.0.1:1883  (unique seq)
                                          │ tc tbf (--rate)  │ nftables netdev table "diode":
                                          │ permanent neigh  │   ingress: numgen random loss (--loss)
                                          │ for RX, IPv6 off │   egress:  counter rx_sent, drop all
                                                             │ NOARP, IPv6 off
```

`run` builds the namespaces and the veth pair, sets up each end with
`agent.board.netlink` from inside its namespace (`ip netns exec NS python -m
diode_tools.sim.testbed setup-tx|setup-rx`), starts brokers, agents and MQTT
clients with `ip netns exec`, carries traffic for `--duration` seconds, then
reports. Everything it made is removed on exit, failure included (processes
in the namespaces by pid, then the namespaces; deleting a namespace deletes
its veth end).

Honest counts:
- `rx_link_tx_packets`: what RX's kernel tried to send on the link, from the
  nftables counter on the egress hook (a dropped packet never reaches the
  interface's own TX counter). Counted from before the link comes up until
  after every process stopped.
- `tx_listening_sockets`: listening TCP plus bound UDP sockets in the TX
  namespace (`ss -ltn`, `ss -uan`), the OT broker's own excluded by pid.
  Raw sockets (`ss -w`) are listed apart in `tx_raw_sockets`: an
  IPPROTO_RAW socket is send-only and cannot receive. TX's configured syslog
  listeners (on the namespace's loopback, its OT side) are the one allowance:
  a socket of the TX process bound to exactly a configured `listen` address
  and port is listed in `tx_syslog_listeners` instead, and anything else, a
  TX socket on another address or port included, counts.
- `syslog_sent`, `syslog_delivered`: messages `logger` sent to those
  listeners, and datagrams RX's syslog collector (in RX's namespace) got.

The other subcommands are the pieces `run` starts inside the namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from diode_tools.sim.agents import _die_with_parent
from diode_tools.sim.mosquitto import BrokerOptions, find_mosquitto, render_config

MQTT_PORT = 1883
LINK_PORT = 5600
# TX's syslog listeners, on the TX namespace's loopback (its OT side), and RX's collector
SYSLOG_LISTENERS = ("udp://127.0.0.1:5514", "tcp://127.0.0.1:5601")
SYSLOG_COLLECTOR_PORT = 5514
LINK_NET = "10.77.0."
PREFIX = 24
TOOLS = ("ip", "tc", "nft", "ss")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_PID = re.compile(r"pid=(\d+)")


class TestbedError(RuntimeError):
    """The testbed could not be built or a part of it failed; the message says which."""


# -- small helpers ---------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    package = "nftables" if name == "nft" else "iproute2"
    raise TestbedError(f"`{name}` not found. Fix: apt-get install -y {package} "
                       "(scripts/setup.sh installs it)")


def check_prerequisites() -> None:
    """Root and the tools; a clear error naming the fix otherwise."""
    if os.geteuid() != 0:
        raise TestbedError("the testbed must run as root (network namespaces, nftables, tc). "
                           "Fix: sudo ./scripts/testbed.sh")
    for t in TOOLS:
        _tool(t)
    find_mosquitto()


def sh(*cmd: str, stdin: str | None = None) -> str:
    """Run a command, return stdout; TestbedError with its stderr if it fails."""
    argv = [_tool(cmd[0]), *cmd[1:]]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def in_ns(ns: str, *cmd: str) -> list[str]:
    return [_tool("ip"), "netns", "exec", ns, *cmd]


def _wait(check: Callable[[], Any], timeout: float, what: str,
          alive: Callable[[], None] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- topology -------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    run_id: str
    tx_ns: str
    rx_ns: str
    tx_if: str
    rx_if: str
    tx_ip: str = LINK_NET + "1"
    rx_ip: str = LINK_NET + "2"

    @classmethod
    def new(cls, run_id: str | None = None) -> Topology:
        rid = run_id or secrets.token_hex(4)
        if not re.fullmatch(r"[0-9a-zA-Z]{1,8}", rid):
            raise TestbedError(f"run id {rid!r}: use 1..8 letters or digits")
        return cls(rid, f"diode-tx-{rid}", f"diode-rx-{rid}", f"dtx{rid}", f"drx{rid}")


NFT_RULES = """\
table netdev diode {{
  counter rx_sent {{ }}
  counter link_in {{ }}
  counter loss {{ }}
  chain rx_egress {{
    type filter hook egress device "{dev}" priority 0; policy accept;
    counter name "rx_sent" drop
  }}
  chain rx_ingress {{
    type filter hook ingress device "{dev}" priority 0; policy accept;
    counter name "link_in"
{loss_rule}  }}
}}
"""


def build(topo: Topology, *, loss: float, rate: int | None, mtu: int) -> str:
    """Namespaces, veth, nftables, interface setup, shaping. Returns RX's MAC."""
    sh("ip", "netns", "add", topo.tx_ns)
    sh("ip", "netns", "add", topo.rx_ns)
    for ns in (topo.tx_ns, topo.rx_ns):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    # Created straight into the namespaces, down: nothing is sent before setup.
    sh("ip", "link", "add", topo.tx_if, "netns", topo.tx_ns, "type", "veth",
       "peer", "name", topo.rx_if, "netns", topo.rx_ns)
    # The egress counter goes on before RX's interface comes up, so whatever
    # RX emits at link-up (IPv6 RS, DAD, MLD, ARP) is counted too.
    loss_rule = ""
    if loss > 0:
        loss_rule = (f"    numgen random mod 1000000 < {round(loss * 1_000_000)} "
                     "counter name \"loss\" drop\n")
    sh(*in_ns(topo.rx_ns, "nft", "-f", "-"), stdin=NFT_RULES.format(dev=topo.rx_if,
                                                                   loss_rule=loss_rule))
    link = json.loads(sh("ip", "-n", topo.rx_ns, "-j", "link", "show", topo.rx_if))
    rx_mac = str(link[0]["address"])
    py = sys.executable
    sh(*in_ns(topo.rx_ns, py, "-m", "diode_tools.sim.testbed", "setup-rx", "--interface", topo.rx_if,
              "--mtu", str(mtu), "--address", f"{topo.rx_ip}/{PREFIX}"))
    sh(*in_ns(topo.tx_ns, py, "-m", "diode_tools.sim.testbed", "setup-tx", "--interface", topo.tx_if,
              "--mtu", str(mtu), "--rx-ip", topo.rx_ip, "--rx-mac", rx_mac,
              "--address", f"{topo.tx_ip}/{PREFIX}"))
    if rate:
        # Burst: 20 ms at the rate, at least 16 full frames; queue up to 200 ms.
        burst = max(16 * (mtu + 14), rate // 8 // 50)
        sh("tc", "-n", topo.tx_ns, "qdisc", "replace", "dev", topo.tx_if, "root", "tbf",
           "rate", f"{rate}bit", "burst", str(burst), "latency", "200ms")
    return rx_mac


def destroy(topo: Topology) -> None:
    """Kill what still runs in our namespaces (by pid), then delete them. Never raises."""
    for ns in (topo.tx_ns, topo.rx_ns):
        with contextlib.suppress(Exception):
            pids = [int(p) for p in sh("ip", "netns", "pids", ns).split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            sh("ip", "netns", "del", ns)


def nft_counter(topo: Topology, name: str) -> dict[str, int]:
    out = json.loads(sh(*in_ns(topo.rx_ns, "nft", "-j", "list", "counter", "netdev", "diode",
                               name)))
    for item in out["nftables"]:
        if "counter" in item:
            return {"packets": int(item["counter"]["packets"]),
                    "bytes": int(item["counter"]["bytes"])}
    raise TestbedError(f"nftables counter {name} not found")


def link_stats(ns: str, dev: str) -> dict[str, int]:
    info = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", dev))[0]["stats64"]
    return {"tx_packets": int(info["tx"]["packets"]), "rx_packets": int(info["rx"]["packets"])}


def tbf_dropped(topo: Topology) -> int | None:
    out = json.loads(sh("tc", "-n", topo.tx_ns, "-s", "-j", "qdisc", "show", "dev", topo.tx_if))
    for q in out:
        if q.get("kind") == "tbf":
            return int(q.get("drops", 0))
    return None


@dataclass
class SocketReport:
    counted: list[str] = field(default_factory=list)   # listening TCP, bound UDP
    raw: list[str] = field(default_factory=list)       # raw sockets (send-only if proto 255)
    configured: list[str] = field(default_factory=list)  # TX's own configured listeners


def tx_sockets(topo: Topology, exclude_pids: set[int], tx_pid: int | None = None,
               listeners: Sequence[str] = ()) -> SocketReport:
    """What in the TX namespace could receive: listening TCP, bound UDP (not the OT broker).

    A socket of TX's own (`tx_pid`) bound to exactly one of the configured syslog
    `listeners` (`udp://127.0.0.1:5514`; tls counts as tcp) is reported apart, in
    `configured`; any other, TX's or not, is `counted`."""
    allowed = {("udp" if e.startswith("udp") else "tcp", e.split("://", 1)[1])
               for e in listeners}

    def lines(proto: str, *flags: str) -> tuple[list[str], list[str]]:
        out = sh(*in_ns(topo.tx_ns, "ss", "-H", *flags))
        kept, ours = [], []
        for line in out.splitlines():
            pids = {int(p) for p in _PID.findall(line)}
            fields = line.split()
            if not line.strip() or (pids and pids <= exclude_pids):
                continue
            if pids == {tx_pid} and len(fields) > 3 and (proto, fields[3]) in allowed:
                ours.append(f"{proto}://{fields[3]}")
            else:
                kept.append(" ".join(fields))
        return kept, ours
    tcp, tcp_ours = lines("tcp", "-ltnp")
    udp, udp_ours = lines("udp", "-uanp")
    raw, _ = lines("raw", "-wanp")
    return SocketReport(counted=tcp + udp, raw=raw, configured=sorted(tcp_ours + udp_ours))


# -- processes --------------------------------------------------------------------------


class Proc:
    """One process started in a namespace; stdout optionally read line by line as JSON."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, cwd: Path,
                 json_lines: bool = False) -> None:
        self.name, self.log_path = name, log
        self.last: dict[str, Any] = {}
        logf = log.open("ab")
        self.proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if json_lines else logf,
                                     stderr=logf, preexec_fn=_die_with_parent,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        logf.close()
        if json_lines:
            assert self.proc.stdout is not None
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with contextlib.suppress(ValueError):
                self.last = {**self.last, **json.loads(raw)}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise TestbedError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return f"--- {self.name} log ({self.log_path}) ---\n" + \
                self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def config_accepts(role: str, line: str) -> bool:
    """Whether this version's config reader takes `line` in [link] (optional keys)."""
    from agent import config
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{role}.toml"
        path.write_text(f'[link]\nkey_file = "link.key"\n{line}\n')
        try:
            config.load(path, role)
        except config.ConfigError:
            return False
    return True


@dataclass
class RunOptions:
    duration: float = 5.0
    loss: float = 0.0
    rate: int | None = None
    msg_rate: float = 500.0
    mtu: int = 1500
    run_id: str | None = None
    keep_workdir: bool = False
    flap: tuple[float, float] | None = None  # TX's interface down at (s into traffic, for s)
    spool: bool = False                      # TX and RX spool (store and forward)


def run(opts: RunOptions, out: IO[str]) -> dict[str, Any]:
    check_prerequisites()
    topo = Topology.new(opts.run_id)
    work = Path(tempfile.mkdtemp(prefix=f"diode-testbed-{topo.run_id}-"))
    procs: list[Proc] = []

    def say(text: str) -> None:
        print(f"testbed: {text}", file=out, flush=True)

    def start(name: str, ns: str, *argv: str, json_lines: bool = False) -> Proc:
        p = Proc(name, in_ns(ns, *argv), work / f"{name}.log", cwd=work, json_lines=json_lines)
        procs.append(p)
        return p

    def alive() -> None:
        for p in procs:
            if p.name != "publisher":
                p.check_alive()

    try:
        say(f"run {topo.run_id}: namespaces {topo.tx_ns} / {topo.rx_ns}, veth {topo.tx_if} "
            f"{topo.tx_ip} ═► {topo.rx_if} {topo.rx_ip}, loss {opts.loss:.1%}, rate "
            f"{f'{opts.rate} bit/s' if opts.rate else 'unlimited'}, {opts.duration:.0f} s at "
            f"{opts.msg_rate:.0f} msg/s; work dir {work}")
        rx_mac = build(topo, loss=opts.loss, rate=opts.rate, mtu=opts.mtu)
        ot = _start_broker(start, "ot-broker", topo.tx_ns, work)
        it = _start_broker(start, "it-broker", topo.rx_ns, work)
        py = sys.executable
        counter = start("counter", topo.rx_ns, py, "-m", "diode_tools.sim.testbed", "count",
                        "--port", str(MQTT_PORT), json_lines=True)
        _wait(lambda: counter.last.get("subscribed"), 15, "the IT counter's subscription", alive)
        syslog_counter = start("syslog-collector", topo.rx_ns, py, "-m",
                               "diode_tools.sim.testbed", "count-syslog", "--port",
                               str(SYSLOG_COLLECTOR_PORT), json_lines=True)
        _wait(lambda: syslog_counter.last.get("bound"), 15, "the IT syslog collector", alive)

        tx_toml, optional_keys = _write_configs(work, topo, rx_mac, opts)
        rx = start("rx", topo.rx_ns, py, "-m", "agent.cli", "rx", "-c", str(work / "rx.toml"))
        _wait(lambda: f":{LINK_PORT}" in sh(*in_ns(topo.rx_ns, "ss", "-H", "-uln")), 15,
              "diode rx to listen", alive)
        tx = start("tx", topo.tx_ns, py, "-m", "agent.cli", "tx", "-c", str(tx_toml))
        _wait(lambda: _read_json(work / "rx.status.json").get("link_state") in ("UP", "DEGRADED")
              and all(v == "connected" for v in
                      _read_json(work / "tx.status.json").get("sources", {"-": "?"}).values()),
              20, "link UP and TX connected to the OT broker", alive)

        publisher = start("publisher", topo.tx_ns, py, "-m", "diode_tools.sim.testbed", "publish",
                          "--port", str(MQTT_PORT), "--rate", str(opts.msg_rate),
                          "--duration", str(opts.duration), json_lines=True)
        started = time.monotonic()
        flap = list(opts.flap) if opts.flap else None
        while publisher.proc.poll() is None:
            alive()
            if flap and time.monotonic() - started >= flap[0]:
                # what a technician re-plugging TX's cable does to the kernel's state
                sh(*in_ns(topo.tx_ns, "ip", "link", "set", topo.tx_if, "down"))
                say(f"{topo.tx_if} down for {flap[1]:.0f} s")
                time.sleep(flap[1])
                sh(*in_ns(topo.tx_ns, "ip", "link", "set", topo.tx_if, "up"))
                say(f"{topo.tx_if} up")
                flap = None
                continue
            time.sleep(1.0)
            st = _read_json(work / "rx.status.json")
            say(f"[{time.monotonic() - started:4.0f}s] published "
                f"{publisher.last.get('sent', 0):6d}  delivered "
                f"{counter.last.get('delivered', 0):6d}  link {st.get('link_state', '?')}")
        if publisher.proc.returncode != 0 or "published" not in publisher.last:
            raise TestbedError(f"publisher failed ({publisher.proc.returncode})\n"
                               f"{publisher.tail()}")
        published = int(publisher.last["published"])
        with contextlib.suppress(TestbedError):
            _wait(lambda: counter.last.get("delivered", 0) >= published,
                  30 if opts.flap else 10, "the last messages", alive)

        syslog = _send_syslog(topo, work)
        with contextlib.suppress(TestbedError):
            _wait(lambda: syslog_counter.last.get("received", 0) >= syslog, 10,
                  "the syslog messages", alive)
        tx_pid = tx.pid
        sockets = tx_sockets(topo, exclude_pids={ot.pid}, tx_pid=tx_pid,
                             listeners=SYSLOG_LISTENERS)
        uses_raw = any(f"pid={tx_pid}," in s and ":255" in s for s in sockets.raw)
        tx_status = _read_json(work / "tx.status.json")
        rx_status = _read_json(work / "rx.status.json")
        # Stop in the order that keeps RX silent: TX first (RX must never see a
        # datagram for a closed port: its kernel would answer ICMP), then RX.
        rc_tx = tx.stop()
        time.sleep(0.5)
        rc_rx = rx.stop()
        delivered = int(counter.last.get("delivered", 0))
        for p in (counter, ot, it):
            p.stop()
        time.sleep(0.2)
        sent = nft_counter(topo, "rx_sent")
        summary: dict[str, Any] = {
            "run_id": topo.run_id,
            "duration_s": opts.duration, "loss": opts.loss, "rate_bits": opts.rate,
            "published": published, "delivered": delivered, "lost": published - delivered,
            "duplicates_at_it": int(counter.last.get("messages", 0)) - delivered,
            "rx_link_tx_packets": sent["packets"], "rx_link_tx_bytes": sent["bytes"],
            "link_in_packets": nft_counter(topo, "link_in")["packets"],
            "link_loss_dropped": nft_counter(topo, "loss")["packets"],
            "tx_if_tx_packets": link_stats(topo.tx_ns, topo.tx_if)["tx_packets"],
            "rx_if_tx_packets": link_stats(topo.rx_ns, topo.rx_if)["tx_packets"],
            "tbf_dropped": tbf_dropped(topo) if opts.rate else None,
            "tx_listening_sockets": len(sockets.counted),
            "tx_sockets": sockets.counted,
            "tx_syslog_listeners": sockets.configured,
            "tx_syslog_listeners_configured": sorted(
                e.replace("tls://", "tcp://") for e in SYSLOG_LISTENERS),
            "syslog_sent": syslog, "syslog_delivered": int(syslog_counter.last.get("received", 0)),
            "tx_raw_sockets": sockets.raw,
            "tx_transport": "raw" if uses_raw else "udp",
            "optional_config_keys": optional_keys,
            "link_state": rx_status.get("link_state"),
            "frames_lost": rx_status.get("counters", {}).get("lost"),
            "datagram_loss": rx_status.get("datagram_loss"),
            "tx_send_errors": tx_status.get("counters", {}).get("send_errors"),
            "tx_interface_restored": tx_status.get("counters", {}).get("interface_restored"),
            "tx_exit": rc_tx, "rx_exit": rc_rx,
        }
        return summary
    except Exception:
        for p in procs:
            with contextlib.suppress(Exception):
                print(p.tail(), file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop(timeout=3)
        destroy(topo)
        if not opts.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)


def _start_broker(start: Callable[..., Proc], name: str, ns: str, work: Path) -> Proc:
    bdir = work / name
    bdir.mkdir()
    conf = bdir / "mosquitto.conf"
    conf.write_text(render_config(BrokerOptions(port=MQTT_PORT), MQTT_PORT))
    proc: Proc = start(name, ns, find_mosquitto(), "-c", str(conf))
    _wait(lambda: f"127.0.0.1:{MQTT_PORT}" in sh(*in_ns(ns, "ss", "-H", "-ltn")), 10,
          f"{name} to listen", proc.check_alive)
    return proc


def _write_configs(work: Path, topo: Topology, rx_mac: str,
                   opts: RunOptions) -> tuple[Path, list[str]]:
    """tx.toml and rx.toml. Keys proposed for the agents' own interface setup and raw
    sending go in only where this version's config takes them; returns those used."""
    subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "-o", str(work / "link.key")],
                   check=True, capture_output=True)
    bitrate = int(opts.rate * 0.95) if opts.rate else 100_000_000
    optional = {
        "tx": [f'rx_mac = "{rx_mac}"', "raw_socket = true",
               f'interface_address = "{topo.tx_ip}/{PREFIX}"', f"interface_mtu = {opts.mtu}"],
        "rx": [f'interface_address = "{topo.rx_ip}/{PREFIX}"', f"interface_mtu = {opts.mtu}"],
    }
    used = {role: [line for line in lines if config_accepts(role, line)]
            for role, lines in optional.items()}
    common = f'key_file = "link.key"\nport = {LINK_PORT}\nheartbeat_interval = 0.5\n'
    spool = ""
    if opts.spool:
        subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "-o",
                        str(work / "spool.key")], check=True, capture_output=True)
        spool = '\n[spool]\ndir = "spool"\nkey_file = "spool.key"\n'
    (work / "tx.toml").write_text(
        f'[link]\n{common}host = "{topo.rx_ip}"\ninterface = "{topo.tx_if}"\n'
        f'bitrate = {bitrate}\n' + "".join(x + "\n" for x in used["tx"]) +
        '\n[status]\nfile = "tx.status.json"\ninterval = 0.2\n' + spool + '\n'
        f'[[mqtt]]\nname = "plant"\nhost = "127.0.0.1"\nport = {MQTT_PORT}\n'
        'topics = ["plant/#"]\nqos = 1\n\n'
        f'[[syslog]]\nname = "ot"\nlisten = {json.dumps(list(SYSLOG_LISTENERS))}\n')
    (work / "rx.toml").write_text(
        f'[link]\n{common}host = "{topo.rx_ip}"\ninterface = "{topo.rx_if}"\n'
        + "".join(x + "\n" for x in used["rx"]) +
        '\n[status]\nfile = "rx.status.json"\ninterval = 0.2\n\n'
        f'[[mqtt]]\nname = "plant"\nhost = "127.0.0.1"\nport = {MQTT_PORT}\n\n'
        f'[[syslog]]\nname = "ot"\ncollectors = ["udp://127.0.0.1:{SYSLOG_COLLECTOR_PORT}"]\n')
    return work / "tx.toml", [f"{role}: {line.split(' =')[0]}" for role, lines in used.items()
                              for line in lines]


def _send_syslog(topo: Topology, work: Path, n: int = 100) -> int:
    """`n` messages with Debian's logger in TX's namespace, half over UDP, half over TCP,
    to TX's syslog listeners; how many were sent."""
    udp = next(e for e in SYSLOG_LISTENERS if e.startswith("udp"))
    tcp = next(e for e in SYSLOG_LISTENERS if e.startswith("tcp"))
    sent = 0
    for endpoint, flag in ((udp, "--udp"), (tcp, "--tcp")):
        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        lines = "".join(f"testbed {flag} {i}\n" for i in range(n // 2))
        res = subprocess.run(in_ns(topo.tx_ns, "logger", "--server", host, "--port", port, flag,
                                   "--rfc5424", "-t", "testbed"), input=lines, text=True,
                             capture_output=True, timeout=30)
        if res.returncode != 0:
            raise TestbedError(f"logger {flag} failed: {res.stderr.strip()}")
        sent += n // 2
        time.sleep(0.2)  # UDP first, then TCP: no burst of either overflows anything
    return sent


# -- pieces run inside the namespaces ------------------------------------------------


def _emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def publish(port: int, rate: float, duration: float) -> int:
    """QoS 1 at a steady rate; last line {"published": N} counts PUBACKed messages."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="testbed-plant",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    total = int(rate * duration)
    start = time.monotonic()
    last_report = start
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = json.dumps({"seq": i, "t": time.time(), "value": i % 100}).encode()
        infos.append(client.publish(f"plant/testbed/sensor{i % 20}", body, qos=1))
        if time.monotonic() - last_report > 0.5:
            _emit(sent=i + 1)
            last_report = time.monotonic()
    deadline = time.monotonic() + 10
    for info in infos:
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
    acked = sum(1 for info in infos if info.is_published())
    client.disconnect()
    client.loop_stop()
    _emit(sent=total, published=acked)
    return 0 if acked == total else 1


def count_syslog(port: int) -> int:
    """A UDP syslog collector: counts datagrams on 127.0.0.1:PORT until SIGTERM."""
    import socket
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(0.2)
        _emit(bound=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                s.recv(65535)
                received += 1
                continue
            _emit(received=received)
    _emit(received=received)
    return 0


def count(port: int) -> int:
    """Subscribe to plant/# and report unique sequence numbers every 0.2 s until SIGTERM."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions
    seen: set[int] = set()
    messages = 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        nonlocal messages
        messages += 1
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seen.add(int(json.loads(msg.payload)["seq"]))

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="testbed-counter",
                         protocol=paho.MQTTv5)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(
        "plant/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
    client.on_subscribe = lambda *_: _emit(subscribed=True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not stop.wait(0.2):
        _emit(delivered=len(seen), messages=messages)
    client.loop_stop()
    client.disconnect()
    _emit(delivered=len(seen), messages=messages)
    return 0


# -- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diode_tools.sim.testbed",
                                description="One-way Ethernet testbed in network namespaces.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="build the testbed, carry MQTT for a while, report")
    r.add_argument("--duration", type=float, default=5.0, help="seconds of traffic")
    r.add_argument("--loss", type=float, default=0.0, help="random loss on RX ingress, 0..1")
    r.add_argument("--rate", type=int, default=None, help="link rate in bit/s (tc tbf on TX)")
    r.add_argument("--msg-rate", type=float, default=500.0, help="plant messages per second")
    r.add_argument("--mtu", type=int, default=1500, help="link interface MTU")
    r.add_argument("--run-id", default=None, help="names the namespaces (default: random)")
    r.add_argument("--json", action="store_true", help="last line: one JSON summary")
    r.add_argument("--keep", action="store_true", help="keep the work dir with the logs")
    r.add_argument("--flap", default=None, metavar="AT,FOR",
                   help="set TX's link interface down AT s into the traffic, up FOR s later")
    r.add_argument("--spool", action="store_true", help="TX spools (store and forward)")
    s = sub.add_parser("setup-tx", help="(in TX's namespace) agent.board.netlink.setup_tx_interface")
    s.add_argument("--interface", required=True)
    s.add_argument("--mtu", type=int, required=True)
    s.add_argument("--rx-ip", required=True)
    s.add_argument("--rx-mac", required=True)
    s.add_argument("--address")
    s = sub.add_parser("setup-rx", help="(in RX's namespace) agent.board.netlink.setup_rx_interface")
    s.add_argument("--interface", required=True)
    s.add_argument("--mtu", type=int, required=True)
    s.add_argument("--address")
    s = sub.add_parser("publish", help="(in TX's namespace) paced QoS 1 plant publisher")
    s.add_argument("--port", type=int, default=MQTT_PORT)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--duration", type=float, required=True)
    s = sub.add_parser("count", help="(in RX's namespace) unique deliveries on the IT broker")
    s.add_argument("--port", type=int, default=MQTT_PORT)
    s = sub.add_parser("count-syslog", help="(in RX's namespace) a UDP syslog collector")
    s.add_argument("--port", type=int, default=SYSLOG_COLLECTOR_PORT)
    args = p.parse_args(argv)

    if args.command in ("setup-tx", "setup-rx"):
        from agent.board.netlink import NetlinkSetupError, setup_rx_interface, setup_tx_interface
        try:
            if args.command == "setup-tx":
                setup_tx_interface(args.interface, mtu=args.mtu, rx_ip=args.rx_ip,
                                   rx_mac=args.rx_mac, address=args.address)
            else:
                setup_rx_interface(args.interface, mtu=args.mtu, address=args.address)
        except NetlinkSetupError as exc:
            print(f"testbed {args.command}: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "publish":
        return publish(args.port, args.rate, args.duration)
    if args.command == "count":
        return count(args.port)
    if args.command == "count-syslog":
        return count_syslog(args.port)

    if not 0 <= args.loss < 1:
        p.error("--loss must be in 0..1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    opts = RunOptions(duration=args.duration, loss=args.loss, rate=args.rate,
                      msg_rate=args.msg_rate, mtu=args.mtu, run_id=args.run_id,
                      keep_workdir=args.keep, spool=args.spool,
                      flap=tuple(float(x) for x in args.flap.split(",")) if args.flap  # type: ignore[arg-type]
                      else None)
    try:
        summary = run(opts, sys.stdout)
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print("testbed summary:")
        for k, v in summary.items():
            print(f"  {k:>22}: {v}")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
