"""Typed constructors for the asyncua values we build.

asyncua annotates its constructors with its own NewTypes (``ua.Int16``,
``ua.UInt32``, ``ua.DateTime``), so plain ints and datetimes do not type-check
at every call site; these helpers take the plain Python types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncua import ua

from agent.opcua import ticks

ticks.install()  # 100 ns DateTimes, in every process that imports this (agent/opcua/ticks.py)


def node_id(identifier: Any = 0, ns: int = 0, kind: Any = None) -> ua.NodeId:
    if kind is None:
        return ua.NodeId(identifier, ns)  # type: ignore[arg-type]
    return ua.NodeId(identifier, ns, kind)  # type: ignore[arg-type]


def status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)  # type: ignore[arg-type]


def data_value(value: ua.Variant | None, code: ua.StatusCode | None = None,
               source: datetime | None = None, server: datetime | None = None) -> ua.DataValue:
    kw: dict[str, Any] = {"SourceTimestamp": source, "ServerTimestamp": server}
    if code is not None:
        kw["StatusCode"] = code
    return ua.DataValue(value, **kw)
