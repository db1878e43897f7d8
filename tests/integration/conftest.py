"""Integration fixtures: real Mosquitto brokers, real `diode` agent processes.

```
publisher ─► OT broker ─► diode tx ══ UDP / serial ══► diode rx ─► IT broker ─► Collector (paho v5)
```

- `ot_broker`, `it_broker`: one fresh Mosquitto each per test (`make_broker`
  for brokers with users or TLS); `make_rsyslog` for rsyslogd collectors and
  forwarders (diode_tools/sim/rsyslog.py).
- `diode`: writes tx/rx TOML into tmp_path, starts `diode tx -c FILE` /
  `diode rx -c FILE` the way a user does (``python -m agent.cli``), stderr to
  a log file per process; `stop` sends SIGTERM and asserts exit code 0;
  `wait_up` waits for the RX status file to say UP; `wait_ready` pushes probe
  messages until one crosses end to end.
- `collector`: a paho MQTT v5 subscriber (retainAsPublished) that records
  every message in arrival order.

Every process a test started is SIGKILLed at teardown if still running. When
a test fails, the agents' stderr logs and the brokers' log tails are added to
the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from diode_tools.sim.mosquitto import Broker, BrokerOptions
from diode_tools.sim.rsyslog import Rsyslog

REPO = Path(__file__).resolve().parents[2]
STATUS_PREFIX = "diode/status/"
PROBE_PREFIX = "probe/"
_LOG_TAIL = 30_000


# -- report: logs of failed tests ----------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    rep = yield
    if rep.failed:
        for title, read in getattr(item, "_diode_logs", []):
            try:
                text = read()
            except Exception as exc:  # a log we cannot read must not hide the failure
                text = f"(cannot read: {exc})"
            rep.sections.append((title, text[-_LOG_TAIL:] or "(empty)"))
    return rep


def _add_log_source(request: pytest.FixtureRequest, title: str, read: Callable[[], str]) -> None:
    node = request.node
    if not hasattr(node, "_diode_logs"):
        node._diode_logs = []
    node._diode_logs.append((title, read))


# -- small helpers -------------------------------------------------------------------


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `pred` until truthy; its value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(doc: dict[str, Any]) -> str:
    """Tables of scalars and arrays of such tables: all an agent config needs."""
    out: list[str] = []
    for name, body in doc.items():
        if isinstance(body, dict):
            out.append(f"[{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        elif isinstance(body, list):
            for item in body:
                out.append(f"[[{name}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        else:
            out.insert(0, f"{name} = {_toml_value(body)}")
        out.append("")
    return "\n".join(out)


def diode_cmd(*args: str) -> list[str]:
    """`diode ARGS` run by this interpreter, so any venv with the project works."""
    return [sys.executable, "-m", "agent.cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("JOURNAL_STREAM", None)
    return env


# -- brokers -------------------------------------------------------------------------


@pytest.fixture
def make_broker(request: pytest.FixtureRequest) -> Iterator[Callable[..., Broker]]:
    """Start a Mosquitto with these options; it is closed after the test."""
    made: list[Broker] = []

    def make(options: BrokerOptions | None = None, name: str = "broker") -> Broker:
        broker = Broker(options).start()
        made.append(broker)
        _add_log_source(request, f"mosquitto {name} log", broker.log_text)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def make_rsyslog(request: pytest.FixtureRequest) -> Iterator[Callable[..., Rsyslog]]:
    """Start an rsyslogd (collector, or forwarder with forward=...); closed after the test."""
    made: list[Rsyslog] = []

    def make(name: str = "rsyslog", **kw: Any) -> Rsyslog:
        rs = Rsyslog(name=name, **kw).start()
        made.append(rs)
        _add_log_source(request, f"{name} log", rs.log_text)
        return rs

    yield make
    for rs in made:
        rs.close()


@pytest.fixture
def ot_broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(name="OT")


@pytest.fixture
def it_broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(name="IT")


@pytest.fixture
def link_key(tmp_path: Path) -> Path:
    path = tmp_path / "link.key"
    done = subprocess.run(diode_cmd("keygen", "-o", str(path)), capture_output=True, text=True,
                          env=_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return path


@pytest.fixture
def udp_port() -> int:
    return free_udp_port()


# -- the MQTT collector ---------------------------------------------------------------


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Any  # paho Properties (attributes only when present) or None
    at: float  # monotonic


class Collector:
    """A paho subscriber that records (topic, payload, retain, qos, properties) in order."""

    def __init__(self, host: str, port: int, topics: Iterable[str] = ("#",), *,
                 protocol: paho.MQTTProtocolVersion = paho.MQTTv5, qos: int = 1, tls_ca: Path | None = None,
                 client_id: str = "") -> None:
        self.host, self.port, self.topics, self.qos = host, port, tuple(topics), qos
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        self._v5 = protocol == paho.MQTTv5
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise AssertionError(f"collector on {self.host}:{self.port}: no SUBACK in {timeout} s")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            return
        if self._v5:
            opts = SubscribeOptions(qos=self.qos, retainAsPublished=True)
            client.subscribe([(t, opts) for t in self.topics])
        else:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties if self._v5 else None
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, props,
                       time.monotonic())
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    # -- reading ---------------------------------------------------------------

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def data(self, prefix: str = "") -> list[Received]:
        """Messages under `prefix`, without status topics and probes."""
        return [m for m in self.snapshot() if m.topic.startswith(prefix)
                and not m.topic.startswith((STATUS_PREFIX, PROBE_PREFIX))]

    def wait_for(self, pred: Callable[[list[Received]], Any], timeout: float,
                 what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred(self.messages)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    n = len(self.messages)
                    raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                         f"({n} messages collected)")
                self._cond.wait(min(left, 0.1))

    def wait_count(self, n: int, prefix: str, timeout: float) -> list[Received]:
        seen = [0, 0]  # messages scanned, matches among them

        def enough(msgs: list[Received]) -> bool:
            for m in msgs[seen[0]:]:
                seen[1] += m.topic.startswith(prefix)
            seen[0] = len(msgs)
            return seen[1] >= n
        self.wait_for(enough, timeout, f"{n} messages under {prefix!r}")
        return self.data(prefix)

    def latest_status(self, channel: str = "plant") -> dict[str, Any] | None:
        for m in reversed(self.snapshot()):
            if m.topic == STATUS_PREFIX + channel:
                return json.loads(m.payload)
        return None


@pytest.fixture
def collector() -> Iterator[Callable[..., Collector]]:
    """`collector(broker, topics=("#",), ...)` -> a started Collector; stopped after the test."""
    made: list[Collector] = []

    def make(broker: Broker, topics: Iterable[str] = ("#",), **kw: Any) -> Collector:
        c = Collector(broker.host, broker.port, topics, **kw).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def publish_all(host: str, port: int, messages: Iterable[tuple[Any, ...]], *,
                protocol: paho.MQTTProtocolVersion = paho.MQTTv5, timeout: float = 60.0,
                tls_ca: Path | None = None) -> int:
    """Publish (topic, payload, qos, retain[, properties]) at full speed; wait until sent.

    QoS 1 messages count as sent when PUBACKed, QoS 0 when written to the socket.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.max_inflight_messages_set(1000)  # well below 65,535 unacknowledged (docs/ARCHITECTURE.md, traps)
    client.max_queued_messages_set(0)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set()
    client.connect(host, port, 30)
    client.loop_start()
    try:
        assert connected.wait(10), f"publisher: no CONNACK from {host}:{port}"
        infos = []
        for m in messages:
            topic, payload, qos, retain = m[:4]
            props = m[4] if len(m) > 4 else None
            info = client.publish(topic, payload, qos, retain, props)
            assert info.rc == paho.MQTT_ERR_SUCCESS, f"publish {topic}: {info.rc}"
            infos.append(info)
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            assert info.is_published(), "publisher: not all messages were sent in time"
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


# -- agent processes --------------------------------------------------------------------


@dataclass
class Agent:
    role: str
    name: str
    config: Path
    log_path: Path
    status_file: Path | None
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any] | None:
        if self.status_file is None:
            return None
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Exit code within `timeout` seconds, or AssertionError with the log."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"diode {self.name} still running after {timeout} s\n"
                                 f"{self.log()[-4000:]}") from None


class Diode:
    """Configs and processes for one test; see the module docstring."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest, link_key: Path,
                 udp_port: int, ot: Callable[[], Broker], it: Callable[[], Broker]) -> None:
        self.tmp, self.request, self.key, self.udp_port = tmp_path, request, link_key, udp_port
        self._ot, self._it = ot, it
        self.agents: list[Agent] = []

    # -- configs ---------------------------------------------------------------

    def tx_doc(self, *, link: dict[str, Any] | None = None, mqtt: dict[str, Any] | None = None,
               status: str = "tx.status.json", broker: Broker | None = None) -> dict[str, Any]:
        ot = broker or self._ot()
        channel = {"name": "plant", "host": ot.host, "port": ot.port, "topics": ["#"],
                   "carousel_period": 5.0}
        return {"link": {"key_file": str(self.key), "host": "127.0.0.1", "port": self.udp_port,
                         "heartbeat_interval": 0.25, **(link or {})},
                "status": {"file": status, "interval": 0.2},
                "mqtt": [{**channel, **(mqtt or {})}]}

    def rx_doc(self, *, link: dict[str, Any] | None = None, mqtt: dict[str, Any] | None = None,
               status: str = "rx.status.json", broker: Broker | None = None) -> dict[str, Any]:
        it = broker or self._it()
        channel = {"name": "plant", "host": it.host, "port": it.port}
        return {"link": {"key_file": str(self.key), "host": "127.0.0.1", "port": self.udp_port,
                         **(link or {})},
                "status": {"file": status, "interval": 0.2},
                "mqtt": [{**channel, **(mqtt or {})}]}

    def write(self, name: str, doc: dict[str, Any] | str) -> Path:
        path = self.tmp / name
        path.write_text(doc if isinstance(doc, str) else to_toml(doc))
        return path

    # -- processes ----------------------------------------------------------------

    def start(self, role: str, config: Path | dict[str, Any], name: str | None = None) -> Agent:
        """Run `diode ROLE -c CONFIG` in tmp_path, stderr to NAME.log."""
        name = name or role
        if isinstance(config, dict):
            config = self.write(f"{name}.toml", config)
        status_file = self._status_file(config)
        if status_file is not None:
            status_file.unlink(missing_ok=True)  # never read a previous process's status
        log_path = self.tmp / f"{name}.log"
        n = sum(1 for a in self.agents if a.log_path.name.startswith(name))
        if n:
            log_path = self.tmp / f"{name}.{n}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(diode_cmd(role, "-c", str(config)), cwd=self.tmp,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=_env())
        agent = Agent(role, name, config, log_path, status_file, proc)
        self.agents.append(agent)
        _add_log_source(self.request, f"diode {name} stderr ({log_path.name}, pid {proc.pid})",
                        agent.log)
        return agent

    def start_tx(self, name: str = "tx", **kw: Any) -> Agent:
        return self.start("tx", self.tx_doc(**kw), name)

    def start_rx(self, name: str = "rx", **kw: Any) -> Agent:
        """RX, returned once it listens (its first status file), or exited: a TX started
        next must not send its first frames into a socket that is not bound yet (RX would
        take them, late from TX's recovery window, for frames from before it ran)."""
        agent = self.start("rx", self.rx_doc(**kw), name)
        deadline = time.monotonic() + 20
        while agent.status_file is not None and agent.status() is None and agent.running() \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        return agent

    def stop(self, agent: Agent, timeout: float = 10.0) -> None:
        """SIGTERM; the agent must exit 0 within `timeout`."""
        assert agent.running(), f"diode {agent.name} died early:\n{agent.log()[-4000:]}"
        agent.proc.send_signal(signal.SIGTERM)
        rc = agent.wait_exit(timeout)
        assert rc == 0, f"diode {agent.name} exited {rc} on SIGTERM:\n{agent.log()[-4000:]}"

    def kill(self, agent: Agent) -> None:
        if agent.running():
            agent.proc.kill()
        agent.proc.wait(10)

    def cleanup(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                self.kill(agent)

    def _status_file(self, config: Path) -> Path | None:
        import tomllib
        raw = tomllib.loads(config.read_text()).get("status", {})
        if not isinstance(raw, dict) or "file" not in raw:
            return None
        p = Path(raw["file"])
        return p if p.is_absolute() else config.parent / p

    # -- waiting ---------------------------------------------------------------------

    def wait_status(self, agent: Agent, pred: Callable[[dict[str, Any]], Any], timeout: float,
                    what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if not agent.running():
                raise AssertionError(f"diode {agent.name} exited {agent.proc.returncode} while "
                                     f"waiting for {what}:\n{agent.log()[-4000:]}")
            st = agent.status()
            return st if st is not None and pred(st) else None
        result: dict[str, Any] = wait_until(check, timeout, f"{agent.name} status: {what}")
        return result

    def wait_up(self, rx: Agent, timeout: float = 15.0) -> dict[str, Any]:
        """RX's status file says link_state UP."""
        return self.wait_status(rx, lambda st: st.get("link_state") == "UP", timeout,
                                "link_state UP")

    def wait_ready(self, collector: Collector, timeout: float = 20.0, *,
                   protocol: paho.MQTTProtocolVersion = paho.MQTTv5, tls_ca: Path | None = None,
                   broker: Broker | None = None) -> None:
        """Publish probes on OT until one reaches `collector`: TX subscribed, link up,
        RX connected. Probes are non-retained, under `probe/`."""
        ot = broker or self._ot()
        deadline = time.monotonic() + timeout
        start = len(collector.snapshot())
        i = 0
        while True:
            topic = f"{PROBE_PREFIX}{i}"
            publish_all(ot.host, ot.port, [(topic, b"probe", 1, False)], protocol=protocol,
                        tls_ca=tls_ca)
            try:
                collector.wait_for(lambda msgs: any(m.topic.startswith(PROBE_PREFIX)
                                                    for m in msgs[start:]), 0.5, "probe")
                return
            except AssertionError:
                for a in self.agents:
                    if a.proc.poll() is not None and a.proc.returncode != 0:
                        raise AssertionError(f"diode {a.name} exited {a.proc.returncode}:\n"
                                             f"{a.log()[-4000:]}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"no probe crossed OT -> IT within {timeout} s") \
                        from None
            i += 1


@pytest.fixture
def diode(tmp_path: Path, request: pytest.FixtureRequest, link_key: Path,
          udp_port: int) -> Iterator[Diode]:
    """Agent configs and processes; the brokers are requested lazily, so a test that
    brings its own (users, TLS) does not start the default ones needlessly."""
    d = Diode(tmp_path, request, link_key, udp_port,
              lambda: request.getfixturevalue("ot_broker"),
              lambda: request.getfixturevalue("it_broker"))
    try:
        yield d
    finally:
        d.cleanup()
