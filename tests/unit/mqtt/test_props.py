from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import props as mqtt_props


def test_round_trip_and_expiry_ageing() -> None:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("a", "1"), ("b", "2")]
    p.ContentType = "application/json"
    p.PayloadFormatIndicator = 1
    p.CorrelationData = b"\x00\x01"
    p.ResponseTopic = "reply/here"
    p.MessageExpiryInterval = 60
    portable = mqtt_props.from_paho(p)
    assert portable is not None
    back = mqtt_props.to_paho(mqtt_props.age(portable, 10.2))
    assert back is not None
    assert back.UserProperty == [("a", "1"), ("b", "2")]
    assert back.ContentType == "application/json"
    assert back.PayloadFormatIndicator == 1
    assert back.CorrelationData == b"\x00\x01"
    assert back.ResponseTopic == "reply/here"
    assert back.MessageExpiryInterval == 50
    assert mqtt_props.expired(mqtt_props.age(portable, 61))
    assert not mqtt_props.expired(mqtt_props.age(portable, 59))


def test_none_and_empty() -> None:
    assert mqtt_props.from_paho(None) is None
    assert mqtt_props.from_paho(Properties(PacketTypes.PUBLISH)) is None
    assert mqtt_props.to_paho(None) is None
    assert mqtt_props.age(None, 5) is None


def test_expiry_keeps_fractions_on_the_link_and_rounds_up_only_for_the_broker() -> None:
    portable = {"expiry": 2}
    aged = mqtt_props.age(portable, 1.5)
    assert aged == {"expiry": 0.5} and not mqtt_props.expired(aged)
    back = mqtt_props.to_paho(aged)
    assert back is not None and back.MessageExpiryInterval == 1
    assert mqtt_props.expired(mqtt_props.age(portable, 2.0))
    # aged twice (TX, then RX): the fractions add up, nothing is rounded away
    assert mqtt_props.age(mqtt_props.age(portable, 0.6), 0.6) == {"expiry": 0.8}
    assert mqtt_props.age({"expiry": "x"}, 1) == {}  # not a number: dropped, not a crash
