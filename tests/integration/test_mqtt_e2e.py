"""MQTT end to end with real parts: Mosquitto brokers, `diode tx` and `diode rx` as
processes started from TOML files, loopback UDP between them.

```
paho publishers ─► OT Mosquitto ─► diode tx ══ UDP 127.0.0.1 ══► diode rx ─► IT Mosquitto ─► paho v5 collector
```
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from diode_tools.sim.certs import make_pki
from diode_tools.sim.mosquitto import Broker, BrokerOptions
from tests.integration.conftest import Collector, Diode, Received, free_udp_port, publish_all

pytestmark = pytest.mark.timeout(120)

MakeCollector = Callable[..., Collector]


def _by_topic(msgs: list[Received]) -> dict[str, list[tuple[bytes, bool, int]]]:
    out: dict[str, list[tuple[bytes, bool, int]]] = defaultdict(list)
    for m in msgs:
        out[m.topic].append((m.payload, m.retain, m.qos))
    return out


def _retained_view(broker: Broker, collector: MakeCollector, prefix: str, expect: int,
                   timeout: float = 10.0) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained state under `prefix`."""
    fresh = collector(broker, [prefix + "#"])
    if expect:
        fresh.wait_count(expect, prefix, timeout)
    time.sleep(0.3)  # anything beyond what we expected would show now
    msgs = fresh.data(prefix)
    assert all(m.retain for m in msgs), "retained delivery without the retain flag"
    return {m.topic: m.payload for m in msgs}


# -- bulk --------------------------------------------------------------------------------


def test_10000_messages_arrive_byte_identical_in_order_with_retain_flags(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    rng = random.Random(20240611)
    topics = [f"bulk/{i:03d}" for i in range(500)]
    plan: list[tuple[str, bytes, int, bool]] = []
    for _ in range(10_000):
        t = rng.randrange(len(topics))
        # Even topics come from a QoS 0 publisher, odd ones from a QoS 1 publisher.
        # Payloads are never empty: an empty retained message deletes the topic.
        plan.append((topics[t], rng.randbytes(rng.randint(1, 2000)), t % 2, rng.random() < 0.3))

    rx = diode.start_rx()
    # A short carousel runs during the burst: its re-sends must not show on IT.
    diode.start_tx(mqtt={"carousel_period": 1.0})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)

    started = time.monotonic()
    errors: list[BaseException] = []

    def publish(qos: int) -> None:
        try:
            publish_all(ot_broker.host, ot_broker.port, [m for m in plan if m[2] == qos])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(q,)) for q in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert not errors, errors
    published = time.monotonic() - started
    sub.wait_count(len(plan), "bulk/", timeout=60)
    arrived = time.monotonic() - started
    time.sleep(1.5)  # more than a carousel period: no duplicates may follow
    got = _by_topic(sub.data("bulk/"))
    want = _by_topic([Received(t, p, r, q, None, 0.0) for t, p, q, r in plan])

    wrong = sorted(t for t in want.keys() | got.keys() if want.get(t) != got.get(t))
    detail = ""
    if wrong:
        topic = wrong[0]
        w, g = want.get(topic, []), got.get(topic, [])
        first = next((i for i, (a, b) in enumerate(zip(w, g, strict=False)) if a != b),
                     min(len(w), len(g)))
        detail = (f"; first: {topic} sent {len(w)} got {len(g)}, differ at #{first}: "
                  f"sent {[(len(p), r, q) for p, r, q in w[first:first + 3]]} "
                  f"got {[(len(p), r, q) for p, r, q in g[first:first + 3]]}")
    assert not wrong, f"{len(wrong)} of {len(want)} topics differ{detail}"
    assert sum(map(len, got.values())) == len(plan)
    st = rx.status()
    assert st is not None and st["counters"]["lost"] == 0
    # The carousel did run meanwhile; RX recognised its copies and kept them off IT.
    assert st["sinks"]["plant"]["carousel_skipped"] > 0, st["sinks"]

    # The IT broker's retained state equals the OT broker's.
    ot_retained = _retained_view(ot_broker, collector, "bulk/", 0)
    n_retained = len(ot_retained)
    assert n_retained > 100
    assert _retained_view(it_broker, collector, "bulk/", n_retained) == ot_retained
    print(f"10,000 messages: published in {published:.1f} s, all arrived after {arrived:.1f} s")


# -- MQTT 5 properties ---------------------------------------------------------------------


def _props(**kw: Any) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_v5_properties_are_kept(diode: Diode, ot_broker: Broker, it_broker: Broker,
                                collector: MakeCollector) -> None:
    rx = diode.start_rx()
    diode.start_tx()
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    user = [("site", "north"), ("unit", "7"), ("site", "again, repeated")]
    full = _props(UserProperty=user, ContentType="application/json", PayloadFormatIndicator=1,
                  CorrelationData=b"\x00\x01corr\xff", ResponseTopic="reply/here",
                  MessageExpiryInterval=3600)
    msgs = [
        ("props/full", json.dumps({"t": 21.5}).encode(), 1, False, full),
        ("props/retained", b"\x00\xffbinary", 1, True,
         _props(MessageExpiryInterval=30, CorrelationData=b"c2")),
        ("props/none", b"plain", 0, False, None),
        ("props/user-only", b"u", 1, False, _props(UserProperty=[("k", "v")])),
    ]
    publish_all(ot_broker.host, ot_broker.port, msgs)
    got = {m.topic: m for m in sub.wait_count(len(msgs), "props/", timeout=15)}
    assert set(got) == {m[0] for m in msgs}

    f = got["props/full"]
    assert f.payload == msgs[0][1] and not f.retain
    assert f.properties is not None
    assert [tuple(p) for p in f.properties.UserProperty] == user
    assert f.properties.ContentType == "application/json"
    assert f.properties.PayloadFormatIndicator == 1
    assert f.properties.CorrelationData == b"\x00\x01corr\xff"
    assert f.properties.ResponseTopic == "reply/here"
    assert 0 < f.properties.MessageExpiryInterval <= 3600

    r = got["props/retained"]
    assert r.payload == b"\x00\xffbinary" and r.retain
    assert r.properties is not None
    assert 0 < r.properties.MessageExpiryInterval <= 30
    assert r.properties.CorrelationData == b"c2"
    assert not hasattr(r.properties, "ContentType")

    n = got["props/none"]
    assert n.payload == b"plain"
    for attr in ("UserProperty", "ContentType", "PayloadFormatIndicator", "CorrelationData",
                 "ResponseTopic", "MessageExpiryInterval"):
        assert n.properties is None or not hasattr(n.properties, attr), attr

    u = got["props/user-only"]
    assert u.properties is not None and [tuple(p) for p in u.properties.UserProperty] == [
        ("k", "v")]
    assert not hasattr(u.properties, "MessageExpiryInterval")


# -- state convergence -------------------------------------------------------------------------


def test_restarted_rx_regains_all_retained_topics_within_one_carousel_period(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    period = 3.0
    rng = random.Random(7)
    rx = diode.start_rx()
    diode.start_tx(mqtt={"carousel_period": period})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)

    latest: dict[str, bytes] = {}
    plan: list[tuple[str, bytes, int, bool]] = []
    for i in range(300):
        payload = rng.randbytes(rng.randint(1, 1000))
        plan.append((f"state/{i:03d}", payload, 1, True))
        latest[f"state/{i:03d}"] = payload
    for i in range(0, 300, 3):  # a third of them change again
        payload = b"v2:" + rng.randbytes(rng.randint(1, 500))
        plan.append((f"state/{i:03d}", payload, 1, True))
        latest[f"state/{i:03d}"] = payload
    publish_all(ot_broker.host, ot_broker.port, plan)
    sub.wait_count(len(plan), "state/", timeout=30)

    diode.stop(rx)
    it_broker.stop()
    it_broker.start()  # no persistence: the IT broker's retained state is gone
    assert _retained_view(it_broker, collector, "state/", 0) == {}

    fresh = collector(it_broker, ["state/#"])
    t0 = time.monotonic()
    rx2 = diode.start_rx(name="rx2")

    def complete(msgs: list[Received]) -> bool:
        last = {m.topic: m.payload for m in msgs if m.retain}
        return last == latest
    fresh.wait_for(complete, period + 5.0, "every retained topic with its latest payload")
    took = time.monotonic() - t0
    # One carousel period, plus RX's own start (interpreter, IT connection).
    assert took <= period + 3.0, f"took {took:.1f} s"
    assert _retained_view(it_broker, collector, "state/", len(latest)) == latest
    diode.wait_up(rx2)
    print(f"restarted RX had all {len(latest)} retained topics after {took:.1f} s")


def test_tx_restart_is_followed_as_a_new_epoch(diode: Diode, ot_broker: Broker,
                                               it_broker: Broker, collector: MakeCollector) -> None:
    rx = diode.start_rx()
    tx1 = diode.start_tx(name="tx1")
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    publish_all(ot_broker.host, ot_broker.port,
                [(f"before/{i}", b"b%d" % i, 1, False) for i in range(50)])
    sub.wait_count(50, "before/", timeout=10)
    st1 = rx.status()
    assert st1 is not None and st1["link"]["epochs"] == 1
    epoch1 = st1["epoch"]
    assert epoch1 == tx1.status()["epoch"]  # type: ignore[index]

    diode.stop(tx1)
    tx2 = diode.start_tx(name="tx2")
    diode.wait_ready(sub)
    after = [(f"after/{i % 10}", b"a%d" % i, i % 2, False) for i in range(500)]
    publish_all(ot_broker.host, ot_broker.port, after)
    got = sub.wait_count(len(after), "after/", timeout=15)
    assert _by_topic(got) == _by_topic([Received(t, p, r, q, None, 0) for t, p, q, r in after])

    assert rx.running(), "RX must follow the new TX by itself"
    epoch2 = tx2.status()["epoch"]  # type: ignore[index]
    assert epoch2 != epoch1
    st = diode.wait_status(rx, lambda s: s["epoch"] == epoch2, 5, "the new epoch")
    assert st["link"]["epochs"] == 2
    assert st["link_state"] == "UP"
    assert f"TX restarted (epoch {epoch1} -> {epoch2})" in rx.log()
    diode.stop(tx2)
    diode.stop(rx)


# -- refusals, protocol versions ------------------------------------------------------------


def _assert_refused(agent: Any, started: float) -> str:
    rc = agent.wait_exit(10)
    took = time.monotonic() - started
    log: str = agent.log()
    assert rc != 0, log
    assert took < 10, f"took {took:.1f} s"
    assert "Bad user name or password" in log or "Not authorized" in log, log
    assert "Fix:" in log, log
    return log


def test_tx_with_a_wrong_password_exits_loudly(diode: Diode, make_broker: Callable[..., Broker]
                                               ) -> None:
    ot = make_broker(BrokerOptions(users={"tx": "right"}), name="OT with users")
    t0 = time.monotonic()
    tx = diode.start("tx", diode.tx_doc(broker=ot, mqtt={"username": "tx",
                                                         "password": "wrong"}))
    log = _assert_refused(tx, t0)
    assert f"{ot.host}:{ot.port}" in log


def test_rx_with_a_wrong_password_exits_loudly(diode: Diode, make_broker: Callable[..., Broker]
                                               ) -> None:
    it = make_broker(BrokerOptions(users={"rx": "right"}), name="IT with users")
    t0 = time.monotonic()
    rx = diode.start("rx", diode.rx_doc(broker=it, mqtt={"username": "rx",
                                                         "password": "wrong"}))
    log = _assert_refused(rx, t0)
    assert f"{it.host}:{it.port}" in log


def test_mqtt_311_on_both_sides(diode: Diode, ot_broker: Broker, it_broker: Broker,
                                collector: MakeCollector) -> None:
    v311 = paho.MQTTv311
    # Retained before TX subscribes: 3.1.1 marks it retained on delivery.
    publish_all(ot_broker.host, ot_broker.port, [("v311/state", b"on", 1, True)], protocol=v311)
    rx = diode.start_rx(mqtt={"protocol": "3.1.1"})
    diode.start_tx(mqtt={"protocol": "3.1.1"})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub, protocol=v311)
    publish_all(ot_broker.host, ot_broker.port,
                [("v311/event", b"hello \x00 3.1.1", 1, False)], protocol=v311)
    got = {m.topic: m for m in sub.wait_count(2, "v311/", timeout=10)}
    assert got["v311/event"].payload == b"hello \x00 3.1.1"
    assert not got["v311/event"].retain
    assert got["v311/state"].payload == b"on" and got["v311/state"].retain
    fresh = collector(it_broker, ["v311/#"], protocol=v311)
    state = fresh.wait_count(1, "v311/", timeout=5)
    assert [(m.topic, m.payload, m.retain) for m in state] == [("v311/state", b"on", True)]


# -- health --------------------------------------------------------------------------------------


def test_status_topic_is_up_while_tx_runs_and_down_after_it_dies(
        diode: Diode, it_broker: Broker, collector: MakeCollector) -> None:
    rx = diode.start_rx(link={"timeout": 3.0})  # the default would be 3 TX heartbeats
    tx = diode.start_tx()
    diode.wait_up(rx)
    status = collector(it_broker, ["diode/status/#"])

    def up_with_tx(msgs: list[Received]) -> bool:
        if not msgs:
            return False
        st = json.loads(msgs[-1].payload)
        return bool(st["link_state"] == "UP" and st["tx"]
                    and st["tx"]["sources"].get("mqtt:plant") == "connected")
    status.wait_for(up_with_tx, 10, "status UP with TX's source connected")
    first = status.snapshot()[0]
    assert first.topic == "diode/status/plant"
    assert first.retain, "the status topic must be retained"
    assert json.loads(first.payload)["channel"] == "plant"

    tx.proc.kill()
    killed = time.monotonic()
    status.wait_for(lambda msgs: json.loads(msgs[-1].payload)["link_state"] == "DOWN",
                    3.0 + 2.0, "status DOWN after TX was killed")
    took = time.monotonic() - killed
    assert 2.0 < took <= 3.0 + 1.5, f"DOWN after {took:.2f} s"
    diode.wait_status(rx, lambda s: s["link_state"] == "DOWN", 2, "status file DOWN")
    fresh = collector(it_broker, ["diode/status/plant"])
    st = fresh.wait_for(lambda msgs: msgs and msgs[0], 5, "retained status")
    assert st.retain and json.loads(st.payload)["link_state"] == "DOWN"
    diode.stop(rx)


# -- configuration errors --------------------------------------------------------------------


def test_config_typo_exits_2_naming_file_key_and_suggestion(diode: Diode, tmp_path: Path) -> None:
    cfg = diode.write("typo.toml", f"""\
[link]
key_file = "{diode.key}"
port = {diode.udp_port}

[[mqtt]]
name = "plant"
prot = 1883
""")
    tx = diode.start("tx", cfg, name="typo")
    assert tx.wait_exit(10) == 2
    log = tx.log()
    assert str(cfg) in log and "prot" in log, log
    assert "did you mean 'port'" in log, log


def test_key_file_readable_by_others_is_refused(diode: Diode, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(diode.key, loose)
    loose.chmod(0o644)
    cfg = diode.write("loose.toml", f"""\
[link]
key_file = "{loose}"
port = {diode.udp_port}
""")
    for role in ("tx", "rx"):
        agent = diode.start(role, cfg, name=f"loose-{role}")
        assert agent.wait_exit(10) == 2
        log = agent.log()
        assert "chmod 600" in log and str(loose) in log, log


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_to_the_ot_broker_verifies_the_ca(diode: Diode, make_broker: Callable[..., Broker],
                                              it_broker: Broker, collector: MakeCollector,
                                              tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ot = make_broker(BrokerOptions(tls=pki.server_tls), name="OT TLS")
    rx = diode.start_rx()
    diode.start("tx", diode.tx_doc(broker=ot, mqtt={"tls": True, "ca_file": str(pki.ca_cert)}))
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub, broker=ot, tls_ca=pki.ca_cert)
    publish_all(ot.host, ot.port, [("tls/x", b"over tls", 1, True)], tls_ca=pki.ca_cert)
    [m] = sub.wait_count(1, "tls/", timeout=10)
    assert (m.payload, m.retain) == (b"over tls", True)

    # The same broker seen through a CA that did not sign it: loud and fatal.
    rogue_doc = diode.tx_doc(broker=ot, mqtt={"tls": True, "ca_file": str(pki.rogue_ca_cert)},
                             link={"port": free_udp_port()}, status="rogue.status.json")
    t0 = time.monotonic()
    rogue = diode.start("tx", rogue_doc, name="rogue")
    rc = rogue.wait_exit(10)
    log = rogue.log()
    assert rc != 0, log
    assert time.monotonic() - t0 < 10
    assert "certificate" in log.lower(), log
    assert "Fix:" in log, log
    assert rx.running()
