"""The hand-written MQTT record encoder against cbor2's generic one, byte for byte."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.link import records
from agent.mqtt import codec as mqtt_codec

props = st.none() | st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8)
                                    | st.lists(st.lists(st.text(), max_size=2), max_size=3),
                                    max_size=4)


@given(channel=st.text(max_size=300), topic=st.text(max_size=70000),
       payload=st.binary(max_size=70000) | st.sampled_from([b"x" * 65535, b"x" * 65536]),
       qos=st.integers(0, 2), retain=st.booleans(), properties=props)
def test_encode_mqtt_is_cbor_of_the_record(channel: str, topic: str, payload: bytes, qos: int,
                                          retain: bool, properties: dict[str, Any] | None
                                          ) -> None:
    data = mqtt_codec.encode_mqtt(channel, topic, payload, qos, retain, properties)
    msg = mqtt_codec.MqttMessage(channel, topic, payload, qos, retain, properties)
    assert data == cbor2.dumps([1, channel, topic, payload, qos, retain, properties, False])
    assert data == records.encode(msg)
    assert records.decode(data) == msg


def test_mqtt_message_is_immutable_and_typed() -> None:
    msg = mqtt_codec.MqttMessage("c", "t", b"p", retain=True)
    assert msg.to_list() == [mqtt_codec.MqttMessage.TAG, "c", "t", b"p", 0, True, None, False]
    with pytest.raises(AttributeError):
        msg.topic = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        msg.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(msg, "__dict__")


def test_encode_mqtt_at_every_cbor_length_boundary() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536, 70000):
        text, blob = "é" * (n // 2) + "x" * (n % 2), b"\xff" * n
        assert mqtt_codec.encode_mqtt(text, text, blob, 2, True, None) == cbor2.dumps(
            [1, text, text, blob, 2, True, None, False]), n
