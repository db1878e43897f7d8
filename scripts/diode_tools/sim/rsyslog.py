"""Real rsyslogd processes for tests, the demo and `diode bench syslog`.

An `Rsyslog` runs `rsyslogd -n` (foreground, not a daemon) on a config of its own
in a temporary folder, on free loopback ports, and either

- collects: every message it receives goes to a file, one line each, through a
  template that keeps the message exactly as received (`%rawmsg%`; control
  characters are not escaped), or
- forwards: every message goes on to `forward` (`tcp://HOST:PORT` or
  `tls://HOST:PORT`, octet counting, with a queue that retries forever; over
  TLS the peer's certificate must name `forward_name`), as an OT-side relay or
  as the baseline of a benchmark.

Its own pid file and work folder keep it apart from the system's rsyslog and
from other tests. The TLS listener and the TLS forwarder use GnuTLS
(`rsyslog-gnutls`, installed by scripts/setup.sh).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from diode_tools.sim.certs import TlsFiles
from diode_tools.sim.mosquitto import free_port, terminate


def find_rsyslogd() -> str:
    for candidate in (shutil.which("rsyslogd"), "/usr/sbin/rsyslogd", "/sbin/rsyslogd"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("rsyslogd not found. Fix: apt-get install rsyslog rsyslog-gnutls "
                       "(scripts/setup.sh does it)")


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bound(kind: str, port: int) -> bool:
    """Whether some socket on this machine is bound to `port` (tcp: listening)."""
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == port and (kind == "udp" or state == "0A"):
                    return True
    return False


class Rsyslog:
    def __init__(self, *, udp: bool = False, tcp: bool = True, tls: TlsFiles | None = None,
                 forward: str | None = None, forward_ca: Path | None = None,
                 forward_name: str | None = None, host: str = "127.0.0.1",
                 name: str = "rsyslog") -> None:
        self.host, self.name = host, name
        self.forward, self.forward_ca, self.forward_name = forward, forward_ca, forward_name
        self.tls_files = tls
        self.dir = Path(tempfile.mkdtemp(prefix=f"diode-{name}-"))
        self.output = self.dir / "received.log"
        self.udp_port = free_udp_port(host) if udp else None
        self.tcp_port = free_port(host) if tcp else None
        self.tls_port = free_port(host) if tls is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def config(self) -> str:
        d = self.dir
        out = [f'global(workDirectory="{d}" maxMessageSize="64k" '
               'parser.escapeControlCharactersOnReceive="off")']
        tls = self.tls_files
        ca = tls.cafile if tls is not None else self.forward_ca
        if ca is not None or tls is not None:
            parts = [f'defaultNetstreamDriverCAFile="{ca}"'] if ca is not None else []
            if tls is not None and tls.certfile and tls.keyfile:
                parts += [f'defaultNetstreamDriverCertFile="{tls.certfile}"',
                          f'defaultNetstreamDriverKeyFile="{tls.keyfile}"']
            out.append(f"global({' '.join(parts)})")
        ruleset = ' ruleset="main"'
        if self.tcp_port is not None or self.tls_port is not None:
            out.append('module(load="imtcp" maxSessions="1000")')
        if self.tcp_port is not None:
            out.append(f'input(type="imtcp" address="{self.host}" port="{self.tcp_port}"'
                       f'{ruleset})')
        if self.tls_port is not None:
            out.append(f'input(type="imtcp" address="{self.host}" port="{self.tls_port}" '
                       'streamDriver.name="gtls" streamDriver.mode="1" '
                       f'streamDriver.authMode="anon"{ruleset})')
        if self.udp_port is not None:
            out.append('module(load="imudp")')
            # a burst of small datagrams overflows the default receive buffer (each costs
            # about 1 KB of it): a collector that drops would hide what RX forwarded
            out.append(f'input(type="imudp" address="{self.host}" port="{self.udp_port}" '
                       f'rcvbufSize="8m"{ruleset})')
        out.append('template(name="raw" type="string" string="%rawmsg%\\n")')
        out.append('template(name="rawfwd" type="string" string="%rawmsg%")')
        if self.forward is None:
            out.append(f'ruleset(name="main") {{ action(type="omfile" file="{self.output}" '
                       'template="raw") }')
        else:
            scheme, rest = self.forward.split("://", 1)
            host, port = rest.rsplit(":", 1)
            tls_opts = ""
            if scheme == "tls":
                tls_opts = (' StreamDriver="gtls" StreamDriverMode="1" '
                            'StreamDriverAuthMode="x509/name" '
                            f'StreamDriverPermittedPeers="{self.forward_name or host}"')
            out.append(f'ruleset(name="main") {{ action(type="omfwd" target="{host}" '
                       f'port="{port}" protocol="tcp" TCP_Framing="octet-counted" '
                       f'template="rawfwd"{tls_opts} queue.type="LinkedList" '
                       f'queue.size="1000000" queue.filename="fwd" queue.spoolDirectory="{d}" '
                       'action.resumeRetryCount="-1" action.resumeInterval="1") }')
        return "\n".join(out) + "\n"

    def start(self, timeout: float = 10.0) -> Rsyslog:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(self.config())
        log = open(self.dir / "rsyslogd.log", "ab")  # noqa: SIM115 (owned by the process)
        self._proc = subprocess.Popen([find_rsyslogd(), "-n", "-f", str(conf), "-i",
                                       str(self.dir / "rsyslogd.pid")], stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log, cwd=self.dir)
        log.close()
        _live.add(self._proc)
        deadline = time.monotonic() + timeout
        want = [("tcp", p) for p in (self.tcp_port, self.tls_port) if p is not None]
        want += [("udp", self.udp_port)] if self.udp_port is not None else []
        while not all(_bound(k, p) for k, p in want):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not come up:\n{self.log_text()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _live.discard(proc)
            terminate(proc, timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def endpoint(self, transport: str) -> str:
        port = {"udp": self.udp_port, "tcp": self.tcp_port, "tls": self.tls_port}[transport]
        if port is None:
            raise ValueError(f"{self.name} has no {transport} listener")
        return f"{transport}://{self.host}:{port}"

    # -- what it received -------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return (self.dir / "rsyslogd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def lines(self) -> list[bytes]:
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        return data.split(b"\n")[:-1]

    def count(self) -> int:
        try:
            return self.output.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_lines(self, n: int, timeout: float, settle: float = 0.0) -> list[bytes]:
        """At least `n` lines (then `settle` seconds more for extra ones); AssertionError
        with the count on timeout."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.count()} of {n} messages after "
                                     f"{timeout} s\n{self.log_text()}")
            time.sleep(0.05)
        if settle:
            time.sleep(settle)
        return self.lines()


_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
    _live.clear()
