"""The test brokers themselves, checked against Mosquitto's own clients and paho.

Every other MQTT test trusts `diode_tools.sim.mosquitto` to start what it claims
(users enforced, TLS verified, bridges carrying messages), so these tests
check that with independent peers rather than with our own code.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from diode_tools.sim import mosquitto
from diode_tools.sim.certs import Pki, TlsFiles, make_pki
from diode_tools.sim.mosquitto import BridgeTo, Broker, BrokerError, BrokerOptions, free_port

pytestmark = pytest.mark.timeout(60)


def _client_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found; apt-get install mosquitto-clients")
    return path


def _pub(broker: Broker, topic: str, payload: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_client_tool("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port)]
        + ["-t", topic, "-m", payload, *args],
        capture_output=True,
        text=True,
        timeout=10,
    )


def _sub(broker: Broker, topic: str, *args: str) -> subprocess.Popen[str]:
    """A mosquitto_sub that prints one message as 'topic payload' and exits."""
    return subprocess.Popen(
        [_client_tool("mosquitto_sub"), "-h", broker.host, "-p", str(broker.port)]
        + ["-t", topic, "-C", "1", "-W", "10", "-v", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _publish_until_received(src: Broker, dst: Broker, topic: str, payload: str) -> str:
    """Publish on `src` every 100 ms until a subscriber on `dst` has the message.

    Retrying stands in for knowing when the subscription (or the bridge) is up.
    """
    sub = _sub(dst, topic)
    try:
        deadline = time.monotonic() + 10
        while sub.poll() is None and time.monotonic() < deadline:
            assert _pub(src, topic, payload).returncode == 0
            time.sleep(0.1)
        out, err = sub.communicate(timeout=5)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, f"mosquitto_sub: {err}\nsrc log:\n{src.log_text()}"
    return out.strip()


def _paho_connect(
    broker: Broker, tls: TlsFiles, server_hostname: str = "localhost", timeout: float = 5.0
) -> str:
    """Try a paho MQTT connection over TLS; 'connected' or why it failed."""
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        outcome.append("connected" if not getattr(rc, "is_failure", False) else f"refused {rc}")
        done.set()

    def on_disconnect(
        client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        outcome.append(f"disconnected {rc}")
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.tls_set(
        ca_certs=str(tls.cafile),
        certfile=str(tls.certfile) if tls.certfile else None,
        keyfile=str(tls.keyfile) if tls.keyfile else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
    try:
        client.connect(server_hostname, broker.port, keepalive=10)
    except (ssl.SSLError, OSError) as e:
        return f"error {e}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return "timeout"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_plain_broker_round_trips_a_message() -> None:
    with Broker() as broker:
        got = _publish_until_received(broker, broker, "sim/plain", "hello")
        assert got == "sim/plain hello"
        assert "mosquitto version" in broker.log_text()


def test_users_refuse_a_wrong_password() -> None:
    with Broker(BrokerOptions(users={"alice": "s3cret"})) as broker:
        wrong = _pub(broker, "sim/auth", "x", "-u", "alice", "-P", "wrong")
        assert wrong.returncode != 0, wrong
        anonymous = _pub(broker, "sim/auth", "x")
        assert anonymous.returncode != 0, anonymous
        right = _pub(broker, "sim/auth", "x", "-u", "alice", "-P", "s3cret")
        assert right.returncode == 0, right.stderr


def test_acl_lines_are_enforced() -> None:
    opts = BrokerOptions(
        users={"alice": "a", "bob": "b"},
        acl=["user alice", "topic readwrite sim/#", "user bob", "topic read sim/#"],
    )
    with Broker(opts) as broker:
        sub = _sub(broker, "sim/acl", "-u", "alice", "-P", "a", "-C", "2")
        deadline = time.monotonic() + 10
        while sub.poll() is None and time.monotonic() < deadline:
            # Bob may not write: Mosquitto drops his publish without telling a
            # 3.1.1 client. Once the subscription is up, a whole round lands
            # within any two messages received, so a leak would show.
            assert _pub(broker, "sim/acl", "from-bob", "-u", "bob", "-P", "b").returncode == 0
            assert _pub(broker, "sim/acl", "from-alice", "-u", "alice", "-P", "a").returncode == 0
            time.sleep(0.05)
        out, err = sub.communicate(timeout=5)
        assert sub.returncode == 0, err
        assert out.split() == ["sim/acl", "from-alice"] * 2


def test_tls_broker_verifies_by_ca_and_hostname(pki: Pki) -> None:
    with Broker(BrokerOptions(tls=pki.server_tls)) as broker:
        assert broker.url.startswith("mqtts://")
        assert _paho_connect(broker, TlsFiles(pki.ca_cert)) == "connected"
        rogue = _paho_connect(broker, TlsFiles(pki.rogue_ca_cert))
        assert rogue.startswith("error") and "CERTIFICATE_VERIFY_FAILED" in rogue, rogue


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    with Broker(BrokerOptions(tls=pki.server_tls, require_certificate=True)) as broker:
        assert _paho_connect(broker, TlsFiles(pki.ca_cert)) != "connected"
        assert _paho_connect(broker, pki.client_tls) == "connected"


def test_bridge_carries_a_message_from_a_to_b() -> None:
    with Broker() as b, Broker(BrokerOptions(bridge=BridgeTo(b.host, b.port, "sim/#"))) as a:
        got = _publish_until_received(a, b, "sim/bridged", "across")
        assert got == "sim/bridged across"


def test_bridge_reconnects_soon_when_the_remote_starts_late() -> None:
    port = free_port()
    with Broker(BrokerOptions(bridge=BridgeTo("127.0.0.1", port))) as a:
        a.wait_for_log("Error creating bridge")
        with Broker(BrokerOptions(port=port)) as b:
            started = time.monotonic()
            assert _publish_until_received(a, b, "late/x", "ok") == "late/x ok"
            # restart_timeout 1: Mosquitto's default would take 5 s or more.
            assert time.monotonic() - started < 4


def test_restart_keeps_the_port_and_persisted_state() -> None:
    with Broker(BrokerOptions(persistence=True)) as broker:
        port, pid = broker.port, broker.pid
        assert _pub(broker, "sim/kept", "retained", "-r", "-q", "1").returncode == 0
        broker.restart()
        assert (broker.port, broker.running) == (port, True)
        assert broker.pid != pid
        sub = _sub(broker, "sim/kept")
        out, err = sub.communicate(timeout=15)
        assert sub.returncode == 0, err
        assert out.strip() == "sim/kept retained"


def test_stop_then_start_and_close_removes_the_workdir() -> None:
    broker = Broker()
    broker.start()
    workdir = broker.workdir
    broker.stop()
    assert not broker.running and broker.pid is None
    broker.start()
    assert _pub(broker, "sim/x", "y").returncode == 0
    broker.close()
    assert not Path(workdir).exists()


def test_a_bad_config_raises_with_the_log_tail() -> None:
    broker = Broker(BrokerOptions(extra=["no_such_option 1"]))
    with pytest.raises(BrokerError, match="no_such_option"):
        broker.start()
    assert not broker.running
    broker.close()


def test_a_port_held_by_another_socket_is_an_error_not_a_false_start() -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        broker = Broker(BrokerOptions(port=squatter.getsockname()[1]))
        with pytest.raises(BrokerError, match="in use"):
            broker.start()
        broker.close()


def test_a_picked_port_taken_meanwhile_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = mosquitto.free_port
        monkeypatch.setattr(mosquitto, "free_port", lambda host: next(picks, real_free_port(host)))
        with Broker() as broker:
            assert broker.port != taken
            assert _pub(broker, "sim/x", "y").returncode == 0
