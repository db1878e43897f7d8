"""Real Mosquitto brokers, started and stopped for tests, the demo and benchmarks.

A `Broker` writes a config file into its own temporary directory, runs
`mosquitto -c FILE` with stderr going to a log file there, and returns once
the listener accepts TCP connections (or raises with the tail of the log if
Mosquitto exited). It can stop and restart on the same port, keeping the
persistence directory, so tests can take the broker away under a running
client and bring it back.

    with Broker(BrokerOptions(users={"tx": "secret"})) as broker:
        ...  # connect to broker.host, broker.port

Defaults are chosen for load tests rather than Mosquitto's own (see "Traps
traps in our dependencies" in docs/ARCHITECTURE.md): a large but finite `max_queued_messages` (the default
1000 silently drops under load, and 0 is broken in 2.0.x), more QoS 1/2
messages in flight, and TCP_NODELAY (Nagle plus delayed ACKs cost 40 ms).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from diode_tools.sim.certs import TlsFiles

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "BridgeTo",
    "TlsFiles",
    "find_mosquitto",
    "free_port",
    "password_line",
    "render_config",
]

_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_LOG_TAIL_LINES = 40
# Logged (at notice level) once every listener is bound.
_RUNNING = " running\n"


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class BrokerError(RuntimeError):
    """Mosquitto would not start, or did not come up in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_mosquitto() -> str:
    """Path of the `mosquitto` binary; Debian puts it in /usr/sbin, often not on PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in _SEARCH_DIRS:
        candidate = os.path.join(d, "mosquitto")
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "mosquitto not found on PATH or in " + ", ".join(_SEARCH_DIRS) + "; install it with "
        "`apt-get install mosquitto mosquitto-clients` (scripts/setup.sh does this)"
    )


@dataclass(frozen=True)
class BridgeTo:
    """A Mosquitto `connection` block bridging this broker to another one.

    This is the benchmark baseline: a plain Mosquitto-to-Mosquitto bridge.
    `direction` is from this broker's point of view ("out" forwards local
    publishes to the remote broker).
    """

    host: str
    port: int
    topic_pattern: str = "#"
    direction: Literal["in", "out", "both"] = "out"
    qos: int = 0
    name: str = "bridge"
    # Seconds between reconnection attempts; Mosquitto's default backs off
    # from 5 s up to 30 s, far too slow for a test that starts the remote
    # broker second or restarts it.
    restart_timeout: int = 1
    tls: TlsFiles | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("in", "out", "both"):
            raise ValueError(f"bridge direction must be in, out or both, not {self.direction!r}")
        if self.restart_timeout < 1:
            raise ValueError(f"bridge restart_timeout must be >= 1 s, not {self.restart_timeout}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"bridge qos must be 0, 1 or 2, not {self.qos!r}")
        for what, value in (("topic_pattern", self.topic_pattern), ("name", self.name)):
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"bridge {what} must be non-empty without spaces: {value!r}")

    def config_lines(self) -> list[str]:
        """The `connection` block; it must come last, after every listener option."""
        lines = [
            f"connection {self.name}",
            f"address {self.host}:{self.port}",
            f"topic {self.topic_pattern} {self.direction} {self.qos}",
            "bridge_protocol_version mqttv311",
            "cleansession true",
            "start_type automatic",
            # Written as "base cap": Mosquitto 2.0.11 ignores the one-number
            # form and keeps its 5 s jittered backoff (measured: about 6 s).
            f"restart_timeout {self.restart_timeout} {self.restart_timeout}",
            # Keep $SYS/broker/connection/... state messages out of benchmarks.
            "notifications false",
        ]
        if self.username is not None:
            lines.append(f"remote_username {self.username}")
        if self.password is not None:
            lines.append(f"remote_password {self.password}")
        if self.tls is not None:
            lines.append(f"bridge_cafile {self.tls.cafile}")
            if self.tls.certfile is not None:
                lines.append(f"bridge_certfile {self.tls.certfile}")
            if self.tls.keyfile is not None:
                lines.append(f"bridge_keyfile {self.tls.keyfile}")
        return lines


@dataclass(frozen=True)
class BrokerOptions:
    """How to configure one test broker. `port=0` picks a free port at first start."""

    host: str = "127.0.0.1"
    port: int = 0
    tls: TlsFiles | None = None
    # Mutual TLS: refuse clients without a certificate signed by tls.cafile.
    require_certificate: bool = False
    # user -> password. When set, anonymous clients are refused.
    users: Mapping[str, str] | None = None
    # Lines of a Mosquitto ACL file (`user alice`, `topic read a/#`, ...).
    acl: Sequence[str] | None = None
    # Large but finite: 0 ("no limit") is broken in Mosquitto 2.0.x and the
    # default of 1000 drops messages silently under load.
    max_queued_messages: int = 1_000_000
    # Mosquitto's default of 20 throttles QoS 1/2 delivery to one client.
    max_inflight_messages: int = 1000
    # Bounded so a runaway publisher cannot exhaust memory, far above any
    # message our tests or the demo send. A bigger packet gets its sender
    # disconnected: loud, unlike message_size_limit, which drops the message
    # silently (and which Mosquitto 2 asks to replace with max_packet_size).
    max_packet_size: int = 32 * 1024 * 1024
    # Payload limit with silent drops; 0 leaves it out of the config.
    message_size_limit: int = 0
    tcp_nodelay: bool = True
    persistence: bool = False
    # Config lines added right after our listener block, so listener options
    # (tls_version, ...) apply to it; global options work anywhere.
    extra: Sequence[str] = ()
    bridge: BridgeTo | None = None

    def __post_init__(self) -> None:
        if self.require_certificate and self.tls is None:
            raise ValueError("require_certificate needs tls")
        if self.tls is not None and (self.tls.certfile is None or self.tls.keyfile is None):
            raise ValueError("a TLS broker needs tls.certfile and tls.keyfile")
        for user in self.users or {}:
            if not user or ":" in user or any(c.isspace() for c in user):
                raise ValueError(f"user name must be non-empty, without ':' or spaces: {user!r}")


def render_config(
    options: BrokerOptions,
    port: int,
    *,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    persistence_dir: Path | None = None,
) -> str:
    """The mosquitto.conf text for `options` listening on `port` (no file I/O)."""
    lines = [
        "# Written by diode_tools.sim.mosquitto for tests; not for production.",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        f"max_queued_messages {options.max_queued_messages}",
        f"max_inflight_messages {options.max_inflight_messages}",
        f"max_packet_size {options.max_packet_size}",
        f"set_tcp_nodelay {'true' if options.tcp_nodelay else 'false'}",
    ]
    if options.message_size_limit:
        lines.append(f"message_size_limit {options.message_size_limit}")
    if os.geteuid() == 0:
        # As root, Mosquitto 2 drops to the `mosquitto` user before reading
        # certificates and writing persistence, and cannot read our 0700 temp
        # dir or 0600 keys. Naming root keeps it as it is.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    if options.persistence:
        if persistence_dir is None:
            raise ValueError("persistence needs a persistence_dir")
        lines += [
            "persistence true",
            f"persistence_location {persistence_dir}",
            "persistence_file mosquitto.db",
        ]
    else:
        lines.append("persistence false")
    if options.users:
        if password_file is None:
            raise ValueError("users need a password_file")
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    if options.acl is not None:
        if acl_file is None:
            raise ValueError("acl needs an acl_file")
        lines.append(f"acl_file {acl_file}")

    # Mosquitto 2 listens on nothing but loopback 1883 without a listener line.
    lines += ["", f"listener {port} {options.host}"]
    if options.tls is not None:
        lines += [
            f"cafile {options.tls.cafile}",
            f"certfile {options.tls.certfile}",
            f"keyfile {options.tls.keyfile}",
            f"require_certificate {'true' if options.require_certificate else 'false'}",
        ]
    lines += list(options.extra)
    if options.bridge is not None:
        lines += [""] + options.bridge.config_lines()
    return "\n".join(lines) + "\n"


def password_line(user: str, password: str) -> str:
    """One password-file line in Mosquitto 2's `$7$` format (PBKDF2-SHA512, 101 rounds).

    The same format `mosquitto_passwd -b` writes; computed here to avoid a
    subprocess per user.
    """
    iterations = 101
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (
        f"{user}:$7${iterations}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


class Broker:
    """One real Mosquitto process in its own temp dir; a context manager.

    `stop()` ends the process but keeps the directory (config, log,
    persistence), so `restart()` comes back on the same port with the same
    stored state. `close()` (or leaving the `with` block) also removes the
    directory, unless the caller supplied it.
    """

    def __init__(
        self,
        options: BrokerOptions | None = None,
        *,
        workdir: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.options = options if options is not None else BrokerOptions()
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._port = self.options.port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what clients need ------------------------------------------------

    @property
    def host(self) -> str:
        """Address to connect to (loopback if the broker listens on all addresses)."""
        if self.options.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.options.host == "::":
            return "::1"
        return self.options.host

    @property
    def port(self) -> int:
        if self._port == 0:
            raise BrokerError("broker not started yet: no port picked")
        return self._port

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.options.tls is not None else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise BrokerError("broker not started yet: no workdir")
        return self._workdir

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log_text(self) -> str:
        """Everything Mosquitto logged, across restarts."""
        if self._workdir is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Block until `text` appears in the log; BrokerError on timeout."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                raise BrokerError(f"{text!r} not logged within {timeout} s\n{self._log_tail()}")
            time.sleep(0.02)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Write the config, run Mosquitto, return once it accepts TCP."""
        if self.running:
            raise BrokerError(f"broker already running (pid {self.pid})")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        # A port picked here may be taken by someone else before Mosquitto
        # binds it; only then is trying another port the right answer.
        attempts = 3 if self._port == 0 else 1
        for attempt in range(attempts):
            if self.options.port == 0 and (self._port == 0 or attempt > 0):
                self._port = free_port(self.host)
            try:
                self._launch()
                return self
            except BrokerError:
                if attempt + 1 < attempts and "in use" in self._log_tail():
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Mosquitto saves persistence then), then SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _live.discard(proc)
        terminate(proc, timeout)

    def restart(self) -> None:
        """Stop and start again on the same port with the same directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the temp dir if this broker made it."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        where = f"{self.options.host}:{self._port}" if self._port else self.options.host
        return f"<Broker {where} {state}>"

    # -- internals ----------------------------------------------------------

    def _launch(self) -> None:
        workdir = self.workdir
        password_file = acl_file = persistence_dir = None
        if self.options.users:
            password_file = workdir / "passwd"
            _write_private(
                password_file,
                "".join(password_line(u, p) + "\n" for u, p in self.options.users.items()),
            )
        if self.options.acl is not None:
            acl_file = workdir / "acl"
            _write_private(acl_file, "".join(line + "\n" for line in self.options.acl))
        if self.options.persistence:
            persistence_dir = workdir / "persistence"
            persistence_dir.mkdir(exist_ok=True)
        _write_private(
            self.config_path,
            render_config(
                self.options,
                self._port,
                password_file=password_file,
                acl_file=acl_file,
                persistence_dir=persistence_dir,
            ),
        )
        binary = find_mosquitto()
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            log.write(f"--- diode_tools.sim: starting {binary} on port {self._port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        self._proc = proc
        _live.add(proc)
        try:
            self._wait_until_listening(proc, log_offset)
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        """Wait for this process's "running" line, then for the port to accept TCP.

        A TCP connect alone is not proof: if someone else holds the port, the
        connect succeeds while Mosquitto exits with "Address already in use".
        Mosquitto logs "... running" only after every listener is bound.
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise BrokerError(
                    f"mosquitto exited with status {code} at start (config {self.config_path})\n"
                    + self._log_tail()
                )
            if _RUNNING in self._log_since(log_offset):
                try:
                    with socket.create_connection((self.host, self._port), timeout=0.5):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto not listening on {self.host}:{self._port} "
                    f"after {self.start_timeout} s\n" + self._log_tail()
                )
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        lines = self.log_text().splitlines()[-_LOG_TAIL_LINES:]
        return "--- mosquitto log tail ---\n" + "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (passwords, keys, config naming them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


# Brokers a test forgot to stop must not outlive the interpreter.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
    _live.clear()
