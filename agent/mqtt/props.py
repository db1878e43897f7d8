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
subscriber sees the same deadline the OT publisher set. On the link it is the
seconds left, to the millisecond (a float), when TX framed the message; only
the IT PUBLISH rounds it, up to whole seconds (MQTT's unit; 0 would not mean
"expired"), and a message with nothing left is dropped instead.
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
    expiry = props["expiry"]
    if not isinstance(expiry, int | float) or isinstance(expiry, bool):
        return {k: v for k, v in props.items() if k != "expiry"}  # not ours: drop it
    return {**props, "expiry": max(0.0, round(expiry - seconds, 3))}


def expired(props: dict[str, Any] | None) -> bool:
    """Nothing left of its expiry (a message without one never expires)."""
    if props is None:
        return False
    expiry = props.get("expiry")
    return expiry is not None and expiry <= 0


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
        out.MessageExpiryInterval = max(1, min(0xFFFFFFFF, math.ceil(props["expiry"])))
    return out
