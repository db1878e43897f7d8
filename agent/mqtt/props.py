"""MQTT v5 PUBLISH properties <-> a portable dict that crosses the link.

| key              | v5 property             |
|------------------|-------------------------|
| user             | UserProperty (pairs)    |
| content_type     | ContentType             |
| payload_format   | PayloadFormatIndicator  |
| correlation_data | CorrelationData         |
| response_topic   | ResponseTopic           |
| expiry           | MessageExpiryInterval   |

`expiry` is reduced by the time the message spent in each agent, so an IT
subscriber sees the same deadline the OT publisher set.
"""

from __future__ import annotations

import math
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_SIMPLE = (("content_type", "ContentType"), ("payload_format", "PayloadFormatIndicator"),
           ("correlation_data", "CorrelationData"), ("response_topic", "ResponseTopic"))


def from_paho(props: Properties | None) -> dict[str, Any] | None:
    if props is None:
        return None
    out: dict[str, Any] = {}
    for key, attr in _SIMPLE:
        if hasattr(props, attr):
            out[key] = getattr(props, attr)
    if hasattr(props, "UserProperty"):
        out["user"] = [list(p) for p in props.UserProperty]
    if hasattr(props, "MessageExpiryInterval"):
        out["expiry"] = props.MessageExpiryInterval
    return out or None


def age(props: dict[str, Any] | None, seconds: float) -> dict[str, Any] | None:
    """Reduce the expiry by time spent here; see `expired`."""
    if props is None or "expiry" not in props:
        return props
    return {**props, "expiry": max(0, math.ceil(props["expiry"] - seconds))}


def expired(props: dict[str, Any] | None) -> bool:
    return props is not None and props.get("expiry") == 0


def to_paho(props: dict[str, Any] | None) -> Properties | None:
    if not props:
        return None
    out = Properties(PacketTypes.PUBLISH)
    for key, attr in _SIMPLE:
        if key in props:
            setattr(out, attr, props[key])
    if "user" in props:
        out.UserProperty = [tuple(p) for p in props["user"]]
    if "expiry" in props:
        out.MessageExpiryInterval = int(props["expiry"])
    return out
