"""A spooled MQTT sink stores TX's bytes of a message it did not change, as they came."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.adapter import Arrival, RxContext
from agent.link import records
from agent.mqtt import outbox
from agent.mqtt.codec import MqttMessage
from agent.mqtt.config import BrokerConfig, RxMqttChannel
from agent.mqtt.sink import MqttSink
from agent.spool import Spool

KEY = bytes(range(32))


def spooled_sink(spool: Spool, asked: list[bool]) -> MqttSink:
    return MqttSink(RxMqttChannel("plant", BrokerConfig(client_id="t")),
                    RxContext(fail=lambda m: None, open_spool=lambda *a, **k: spool,
                              keep_raw=lambda: asked.append(True)))


def test_unchanged_messages_are_stored_as_tx_encoded_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "s", KEY, fsync="never")
    asked: list[bool] = []
    sink = spooled_sink(spool, asked)
    assert asked == [True]   # RX keeps the bytes once a sink stores records

    def no_encoding(msg: MqttMessage) -> bytes:
        raise AssertionError("a message just decoded was encoded again")

    monkeypatch.setattr(outbox, "encode_message", no_encoding)
    sent = [MqttMessage("plant", f"t/{i}", bytes([i]) * 50, qos=1, retain=i % 2 == 0,
                        properties={"content_type": "x"} if i % 3 else None)
            for i in range(20)]

    async def submit_all() -> None:   # the outbox schedules its drain on the loop
        for msg in sent:
            sink.submit(msg, 0.0, Arrival.LIVE, records.encode(msg))

    asyncio.run(submit_all())
    stored = spool.peek(100)
    assert [r.payload for r in stored] == [records.encode(m) for m in sent]
    assert [records.decode(r.payload) for r in stored] == sent
    spool.close()


def test_a_message_the_sink_changed_is_stored_as_changed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", KEY, fsync="never")
    sink = spooled_sink(spool, [])
    msg = MqttMessage("plant", "t", b"old", qos=1, retain=True)

    async def submit() -> None:
        sink.submit(msg, 0.0, Arrival.SUPERSEDED, records.encode(msg))

    asyncio.run(submit())
    stored = records.decode(spool.peek(1)[0].payload)
    assert isinstance(stored, MqttMessage)
    assert not stored.retain and stored.properties is not None   # marked diode-late
    assert stored.payload == b"old"
    spool.close()


def test_a_memory_sink_does_not_ask_for_the_bytes() -> None:
    asked: list[bool] = []
    MqttSink(RxMqttChannel("plant", BrokerConfig(client_id="t")),
             RxContext(fail=lambda m: None, open_spool=lambda *a, **k: None,
                       keep_raw=lambda: asked.append(True)))
    assert asked == []
