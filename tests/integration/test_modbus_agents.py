"""Modbus through the real agent processes, read-only.

```
3 simulated PLCs (pymodbus servers) ─► diode tx ══ UDP ══► diode rx ─► OPC UA mirror ─► asyncua client
 each counts every request                 [[modbus]]           ├─► [[opcua]] "plc"
 by function code                                               └─► [[mqtt]] "plant" ─► IT broker ─► collector
```

The PLCs are pymodbus's own server over real TCP and, for RTU, over a socat
pseudo-terminal pair; TX polls them with `diode tx -c FILE` as a user runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from diode_tools.sim.mosquitto import Broker, free_port
from diode_tools.sim.plant_modbus import SimulatedPlc, channel_toml, load_map, sample_map
from tests.integration.conftest import Collector, Diode, to_toml, wait_until
from tests.integration.test_serial_e2e import pty_link  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(180)

Values = list[tuple[dict[str, Any], Any]]


@pytest.fixture
def plcs() -> Iterator[list[SimulatedPlc]]:
    made = [SimulatedPlc(port=free_port()) for _ in range(3)]
    try:
        yield made
    finally:
        for p in made:
            p.stop()


def _rx_doc(diode: Diode, mirror_port: int, broker: Broker | None = None) -> dict[str, Any]:
    rx = diode.rx_doc(broker=broker)
    rx["opcua"] = [{"name": "plc", "endpoint": f"opc.tcp://127.0.0.1:{mirror_port}/diode/",
                    "bad_after": 3.0}]
    return rx


def _configs(diode: Diode, devices: list[tuple[dict[str, Any], Values]], mirror_port: int,
             **channel: Any) -> tuple[Path, Path]:
    tx = diode.tx_doc()
    rx = _rx_doc(diode, mirror_port)
    del tx["mqtt"]  # Modbus only on TX; RX's [[mqtt]] "plant" publishes the values
    body = channel_toml({"name": "plc", "opcua_mirror": "plc", "mqtt_channel": "plant",
                         "carousel_period": 3.0, **channel},
                        [(d, [t for t, _ in values]) for d, values in devices])
    return (diode.write("tx.toml", to_toml(tx) + "\n" + body),
            diode.write("rx.toml", to_toml(rx)))


def _device(name: str, plc: SimulatedPlc, **kw: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": plc.port, "poll_period": 0.5,
            "timeout": 0.5, "retries": 1, "backoff_min": 0.5, "backoff_max": 2.0, **kw}


def _close(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        return isinstance(a, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


async def _read_mirror(endpoint: str, node_ids: list[str], timeout: float
                       ) -> list[ua.DataValue]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Client(endpoint, timeout=5) as c:
                nodes = [c.get_node(n) for n in node_ids]
                out: list[ua.DataValue] = []
                for i in range(0, len(nodes), 500):
                    out += await c.read_attributes(nodes[i:i + 500])
                return out
        except (OSError, TimeoutError, ua.UaError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _mirror_matches(endpoint: str, expected: dict[str, Any], timeout: float,
                    bad: Collection[str] = ()) -> list[ua.DataValue]:
    """Waits until every node shows its expected value (Good), or Bad for those in `bad`."""
    ids = list(expected)
    deadline = time.monotonic() + timeout
    while True:
        dvs = asyncio.run(_read_mirror(endpoint, ids, 30))
        wrong = []
        for nid, dv in zip(ids, dvs, strict=True):
            if nid in bad:
                if dv.StatusCode.name != "BadNoCommunication":
                    wrong.append((nid, dv.StatusCode.name))
            elif not (dv.StatusCode.is_good() and _close(dv.Value.Value, expected[nid])):
                wrong.append((nid, dv.StatusCode.name, dv.Value.Value, expected[nid]))
        if not wrong:
            return dvs
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(wrong)} of {len(ids)} mirrored values wrong, e.g. "
                                 f"{wrong[:3]}")
        time.sleep(0.5)


def _latest(sub: Collector, prefix: str) -> dict[str, dict[str, Any]]:
    out = {}
    for m in sub.data(prefix):
        out[m.topic] = json.loads(m.payload)
    return out


def _mqtt_matches(sub: Collector, expected: dict[str, Any], timeout: float,
                  bad: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    def ok() -> dict[str, dict[str, Any]] | None:
        got = _latest(sub, "modbus/")
        for topic, want in expected.items():
            doc = got.get(topic)
            if doc is None:
                return None
            if topic in bad:
                if doc["quality"] != "bad" or doc["value"] is not None:
                    return None
            elif doc["quality"] != "good" or not _close(doc["value"], want):
                return None
        return got
    got: dict[str, dict[str, Any]] = wait_until(ok, timeout, "every Modbus topic on the IT broker")
    return got


def _retained(broker: Broker, n: int) -> dict[str, dict[str, Any]]:
    """The broker's retained store under modbus/: what a new subscriber gets at once."""
    c = Collector(broker.host, broker.port, ["modbus/#"]).start()
    try:
        with contextlib.suppress(AssertionError):
            c.wait_for(lambda msgs: len(msgs) >= n, 1.0, "the retained store")
        return {m.topic: json.loads(m.payload) for m in c.data("modbus/") if m.retain}
    finally:
        c.stop()


def _retained_matches(broker: Broker, expected: dict[str, Any], timeout: float) -> None:
    """Waits until the broker retains every topic with its expected value (Good)."""
    def ok() -> bool:
        got = _retained(broker, len(expected))
        return all(t in got and got[t]["quality"] == "good" and _close(got[t]["value"], want)
                   for t, want in expected.items())
    wait_until(ok, timeout, "every Modbus topic retained on the IT broker", interval=0.5)


def _expected(devices: list[tuple[dict[str, Any], Values]]) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
    ua_ids, topics = {}, {}
    for dev, values in devices:
        for table, shown in values:
            ua_ids[f"ns=1;s={dev['name']}/{table['name']}"] = shown
            topics[f"modbus/plc/{dev['name']}/{table['name']}"] = shown
    return ua_ids, topics


def test_1000_registers_of_3_devices_reach_the_mirror_and_mqtt_and_an_unplugged_device_turns_only_its_values_bad(  # noqa: E501
        diode: Diode, plcs: list[SimulatedPlc], it_broker: Broker,
        collector: Callable[..., Collector]) -> None:
    devices = []
    for i, plc in enumerate(plcs):
        values = sample_map(i, 334 if i < 2 else 332)
        plc.start()
        load_map(plc, values)
        devices.append((_device(f"plc{i}", plc), values))
    assert sum(t.get("count", 1) * {"int16": 1, "uint32": 2, "float32": 2, "float64": 4,
                                    "string": 1}[t["type"]]
               for _, vs in devices for t, _ in vs if t["type"] != "bits") == 1000
    port = free_port()
    tx_conf, rx_conf = _configs(diode, devices, port)
    sub = collector(it_broker, ["modbus/#"])
    rx = diode.start("rx", rx_conf)
    tx = diode.start("tx", tx_conf)
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    ua_expected, mqtt_expected = _expected(devices)

    t0 = time.monotonic()
    _mirror_matches(endpoint, ua_expected, 45)
    got = _mqtt_matches(sub, mqtt_expected, 30)
    took = time.monotonic() - t0
    assert got["modbus/plc/plc0/temp000"]["unit"] == "°C"
    asyncio.run(_check_nodes(endpoint))

    st = diode.wait_status(tx, lambda s: s["sources"].get("modbus:plc") == "connected", 10,
                           "modbus source connected")
    stats = st["queues"]["modbus:plc"]["devices"]
    figures = {n: (d["registers"], d["requests_per_cycle"], d["cycle_ms"]["0.5"])
               for n, d in stats.items()}
    print(f"1,000 registers on 3 devices: mirror and MQTT right after {took:.1f} s; "
          f"(registers, requests per cycle, cycle ms) per device: {figures}")
    # Per device: holding 0..149 int16 (2 requests of <= 125), holding 200..259 uint32 (1),
    # holding 300..307 string (1: 40 unmapped registers before it, more than max_gap 8),
    # input 0..99 float32 (1), input 200..215 float64 (1), 20 coils (1): 255 values, 7 reads.
    for _registers, requests, _ms in figures.values():
        assert requests == 7

    # A value changes on plc0 while plc1 is unplugged: plc0 and plc2 go on unhindered.
    plcs[1].stop()
    plcs[0].set(1, "holding", 0, [1234])  # temp000 = 123.4
    ua_expected["ns=1;s=plc0/temp000"] = mqtt_expected["modbus/plc/plc0/temp000"] = 123.4
    ua_bad = {k for k in ua_expected if k.startswith("ns=1;s=plc1/")}
    mqtt_bad = {k for k in mqtt_expected if k.startswith("modbus/plc/plc1/")}
    _mirror_matches(endpoint, ua_expected, 20, bad=ua_bad)
    _mqtt_matches(sub, mqtt_expected, 20, bad=mqtt_bad)
    st = diode.wait_status(tx, lambda s: s["sources"]["modbus:plc"] == "disconnected", 5,
                           "source disconnected while a device is down")
    assert st["queues"]["modbus:plc"]["devices"]["plc1"]["state"] == "down"
    assert st["queues"]["modbus:plc"]["devices"]["plc0"]["state"] == "up"

    plcs[1].start()  # plugged back in: Good again within the backoff
    _mirror_matches(endpoint, ua_expected, 20)

    counts = [p.counts() for p in plcs]
    assert all(set(c) <= {1, 3, 4} for c in counts), counts  # reads only: coils, holding, input
    assert sum(p.writes() for p in plcs) == 0
    tx_counters = diode.wait_status(tx, lambda s: True, 5, "status")["counters"]
    assert tx_counters["modbus:plc.sent_fc2"] == 0 and tx_counters["modbus:plc.sent_fc3"] > 0
    diode.stop(tx)
    diode.stop(rx)


async def _check_nodes(endpoint: str) -> None:
    """Folders per device under Objects/Modbus; names, units, types; and no writes."""
    async with Client(endpoint, timeout=5) as c:
        ns = await c.get_namespace_index("urn:diode:modbus:plc")
        assert ns == 1
        folder = await c.nodes.objects.get_child([f"{ns}:Modbus"])
        names = sorted([(await d.read_browse_name()).Name for d in await folder.get_children()])
        assert names == ["plc0", "plc1", "plc2"]
        temp = c.get_node("ns=1;s=plc0/temp000")
        assert (await temp.read_display_name()).Text == "temp000"
        assert await temp.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        eu = await temp.get_child(["0:EngineeringUnits"])
        info = await eu.read_value()
        assert isinstance(info, ua.EUInformation) and info.DisplayName.Text == "°C"
        assert await c.get_node("ns=1;s=plc0/flow01").read_data_type() == ua.NodeId(
            ua.ObjectIds.Float)
        assert await c.get_node("ns=1;s=plc0/run00").read_data_type() == ua.NodeId(
            ua.ObjectIds.Boolean)
        with pytest.raises(ua.UaStatusCodeError):
            await temp.write_value(ua.Variant(1.0, ua.VariantType.Double))


def test_rtu_over_a_serial_line_and_an_rx_restart_converges(
        diode: Diode, it_broker: Broker, collector: Callable[..., Collector],
        make_broker: Callable[..., Broker], pty_link: tuple[str, str]) -> None:  # noqa: F811
    """Modbus RTU: the PLC on one end of a pseudo-terminal pair, TX on the other, two
    units on the line; then RX restarts on an empty IT broker, and the mirror and the
    broker refill from the carousel alone."""
    plc_end, tx_end = pty_link
    # parity none: a pseudo-terminal refuses even parity (EINVAL), a real line takes it
    plc = SimulatedPlc(serial_port=plc_end, baudrate=19200, parity="N", units=(1, 2))
    values1 = sample_map(1, 200)
    values2 = [(t, v) for t, v in sample_map(2, 200) if t["type"] in ("float32", "bits")]
    try:
        plc.start()
        load_map(plc, values1, unit=1)
        load_map(plc, values2, unit=2)
        dev = {"name": "line", "serial_port": tx_end, "baudrate": 19200, "parity": "N",
               "poll_period": 0.5,
               "timeout": 0.5, "backoff_min": 0.5, "backoff_max": 2.0}
        merged = [(t, v) for t, v in values1] + [({**t, "name": f"u2{t['name']}", "unit_id": 2},
                                                  v) for t, v in values2]
        port = free_port()
        tx_conf, rx_conf = _configs(diode, [(dev, merged)], port)
        sub = collector(it_broker, ["modbus/#"])
        rx = diode.start("rx", rx_conf)
        tx = diode.start("tx", tx_conf)
        endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
        ua_expected, mqtt_expected = _expected([(dev, merged)])
        _mirror_matches(endpoint, ua_expected, 45)
        _mqtt_matches(sub, mqtt_expected, 30)
        st = diode.wait_status(tx, lambda s: s["sources"].get("modbus:plc") == "connected", 10,
                               "RTU device connected")
        line = st["queues"]["modbus:plc"]["devices"]["line"]
        print(f"RTU, 2 units, {line['registers']} registers: {line['requests_per_cycle']} "
              f"requests per cycle, cycle {line['cycle_ms']} ms")

        # RX restart: the carousel (3 s) alone brings everything back, to a new mirror
        # and to a new IT broker (the old one would still hold the retained values)
        diode.stop(rx)
        fresh = make_broker(name="IT fresh")
        assert _retained(fresh, 1) == {}
        rx2 = diode.start("rx", diode.write("rx-back.toml",
                                            to_toml(_rx_doc(diode, port, fresh))), "rx-back")
        _mirror_matches(endpoint, ua_expected, 30)
        _retained_matches(fresh, mqtt_expected, 15)
        assert set(plc.counts()) <= {1, 3, 4} and plc.writes() == 0
        diode.stop(tx)
        diode.stop(rx2)
    finally:
        plc.stop()


def _in(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start <= t < end]


def test_the_per_device_budget_paces_requests_and_a_silent_device_backs_off_alone(
        diode: Diode, plcs: list[SimulatedPlc]) -> None:
    """`paced` wants 12 reads every 0.05 s but gets `requests_per_second` = 10; `silent`
    stops answering (its TCP connection stays up) and is probed ever less often; `steady`
    keeps its 0.2 s cycle through it all. Requests are counted where they arrive."""
    for p in plcs:
        p.start()
    paced = _device("paced", plcs[0], poll_period=0.05, requests_per_second=10.0, max_gap=0)
    silent = _device("silent", plcs[1], poll_period=0.1, timeout=0.3, retries=0,
                     backoff_min=0.3, backoff_max=2.4)
    steady = _device("steady", plcs[2], poll_period=0.2)
    word = [({"name": "w", "address": 0}, 0)]
    devices = [(paced, [({"name": f"w{i:02d}", "address": 10 * i}, 0) for i in range(12)]),
               (silent, word), (steady, word)]
    tx_conf, _ = _configs(diode, devices, free_port())
    tx = diode.start("tx", tx_conf)
    diode.wait_status(tx, lambda s: s["sources"].get("modbus:plc") == "connected", 15,
                      "every device answering")
    muted = time.monotonic()
    plcs[1].mute()
    time.sleep(9.5)
    end = time.monotonic()
    st = diode.wait_status(tx, lambda s: True, 5, "status")["queues"]["modbus:plc"]["devices"]

    # paced: at most 10 requests in any second, and it does use its budget
    times = _in(plcs[0].times(), muted - 2.0, end)
    assert max(len(_in(times, t, t + 1.0)) for t in times) <= 11, times
    assert len(times) >= 8 * 11, len(times)
    assert st["paced"]["requests_per_cycle"] == 12 and st["paced"]["overruns"] > 0

    # silent: each probe one request (retries 0), the waits between them doubling from
    # backoff_min to backoff_max (+ the 0.3 s timeout and up to a poll period): about
    # 0.6, 0.9, 1.5, 2.7, 2.7 s. pymodbus closes the connection at the fifth silence; the
    # backoff goes on across the reconnect.
    probes = _in(plcs[1].times(), muted, end)
    gaps = [round(b - a, 2) for a, b in zip(probes, probes[1:], strict=False)]
    assert len(gaps) >= 5, gaps
    assert all(b > a + 0.15 for a, b in zip(gaps[:3], gaps[1:4], strict=True)), gaps
    assert all(g >= 2.4 for g in gaps[3:]), gaps
    assert st["silent"]["state"] == "down" and st["silent"]["outages"] == 1

    # steady: its cycle goes on, 5 reads a second, none late by more than a period. A
    # silent device that held TX's event loop would make a late read at each of its
    # probes; one late read is allowed only where TX itself counted its loop held (a busy
    # machine can hold a process, and TX reports that as a loop stall)
    reads = _in(plcs[2].times(), muted, end)
    assert len(reads) >= 5 * 9.5 - 3, len(reads)
    late = [round(b - a, 2) for a, b in zip(reads, reads[1:], strict=False) if b - a >= 0.4]
    stalls = diode.wait_status(tx, lambda s: True, 5, "status")["counters"]["loop_stalls"]
    assert len(late) <= min(1, stalls), (late, stalls)
    assert st["steady"]["state"] == "up"
    diode.stop(tx)


def _stamp(doc: dict[str, Any]) -> float:
    """The MQTT JSON `timestamp` (agent/modbus/outputs.py: ISO 8601, UTC, milliseconds,
    a `Z`), as Unix time."""
    text = doc["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


# discrete inputs (function 2), uint16, int32, offsets with and without a scale
OTHER_TYPES: Values = [
    ({"name": "door", "table": "discrete", "address": 5, "type": "bits"}, True),
    ({"name": "alarms", "table": "discrete", "address": 20, "type": "bits", "count": 3},
     [True, False, True]),
    ({"name": "speed", "address": 500, "type": "uint16", "unit": "rpm"}, 65000),
    ({"name": "position", "address": 510, "type": "int32"}, -123456),
    ({"name": "tank", "table": "input", "address": 520, "type": "int32", "scale": 0.01,
      "offset": -40.0, "word_order": "little", "unit": "°C"}, -90.0),  # raw -5000
    ({"name": "kelvin", "table": "input", "address": 530, "type": "uint16", "offset": 273.15,
      "unit": "K"}, 293.15),  # raw 20
    ({"name": "pressure", "address": 540, "type": "int16", "scale": 0.5, "offset": -10.0},
     -13.5),  # raw -7
]


def test_discrete_inputs_uint16_int32_and_offsets_reach_the_mirror_and_mqtt_with_the_poll_time(
        diode: Diode, plcs: list[SimulatedPlc], it_broker: Broker,
        collector: Callable[..., Collector]) -> None:
    plc = plcs[0].start()
    load_map(plc, OTHER_TYPES)
    dev = _device("io", plc)
    port = free_port()
    tx_conf, rx_conf = _configs(diode, [(dev, OTHER_TYPES)], port)
    sub = collector(it_broker, ["modbus/#"])
    diode.start("rx", rx_conf)
    started = time.time()
    diode.start("tx", tx_conf)
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    ua_expected, mqtt_expected = _expected([(dev, OTHER_TYPES)])
    _mirror_matches(endpoint, ua_expected, 30)
    got = _mqtt_matches(sub, mqtt_expected, 15)
    now = time.time()
    for doc in got.values():  # first read after TX started, before it reached IT
        assert started <= _stamp(doc) <= now, (doc, started, now)
    assert got["modbus/plc/io/tank"]["unit"] == "°C" and "unit" not in got[
        "modbus/plc/io/pressure"]
    types = asyncio.run(_data_types(endpoint, ["door", "alarms", "speed", "position", "tank",
                                               "kelvin", "pressure"]))
    assert types == ["Boolean", "Boolean", "UInt16", "Int32", "Double", "Double", "Double"]

    # a change: its timestamp is when the poll saw it, within a poll period (0.5 s)
    changed = time.time()
    plc.set(1, "holding", 500, [12345])
    ua_expected["ns=1;s=io/speed"] = mqtt_expected["modbus/plc/io/speed"] = 12345
    doc = _mqtt_matches(sub, mqtt_expected, 10)["modbus/plc/io/speed"]
    assert changed - 0.01 <= _stamp(doc) <= changed + 0.5 + 0.2, (doc, changed)
    (dv,) = _mirror_matches(endpoint, {"ns=1;s=io/speed": 12345}, 10)
    assert abs(dv.SourceTimestamp.timestamp() - _stamp(doc)) < 0.002  # the same poll
    assert plc.counts().get(2, 0) > 0 and set(plc.counts()) <= {2, 3, 4} and plc.writes() == 0


async def _data_types(endpoint: str, names: list[str]) -> list[str]:
    async with Client(endpoint, timeout=5) as c:
        out = []
        for name in names:
            dt = await c.get_node(f"ns=1;s=io/{name}").read_data_type()
            out.append(ua.ObjectIdNames[dt.Identifier])
        return out
