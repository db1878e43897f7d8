"""Records: what frames carry. Each record is a CBOR array `[tag, fields...]`.

The link core knows two records of its own; every protocol registers its own
records with `register` (the tag table of all of them is in
docs/ARCHITECTURE.md, "Wire format"):

| tag | record      | fields                                                         |
|-----|-------------|----------------------------------------------------------------|
| 0   | Heartbeat   | tx_time, interval, repeat, counters{str:int}, sources{str:str} |
| 2   | Fragment    | frag_id, index, count, chunk                                   |

A record class has a class attribute `TAG`, `to_list()` and a classmethod
`from_list(fields)` that raises `RecordError` (or ValueError / TypeError) on
fields that do not fit. A receiver skips (and counts) tags it does not know,
so newer TX versions can add record types without breaking older RX boards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2


class RecordError(ValueError):
    """A record that authenticated but does not decode: a TX bug or a version skew."""


class UnknownRecord(RecordError):
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TAG = 0
    tx_time: float
    interval: float
    repeat: int
    counters: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def to_list(self) -> list[Any]:
        return [self.TAG, self.tx_time, self.interval, self.repeat, self.counters, self.sources]

    @classmethod
    def from_list(cls, f: list[Any]) -> Heartbeat:
        _, tx_time, interval, repeat, counters, sources = f
        if not (isinstance(counters, dict) and isinstance(sources, dict)
                and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                        for k, v in counters.items())
                and all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items())):
            raise RecordError("heartbeat maps malformed")
        return cls(float(tx_time), float(interval), int(repeat), counters, sources)


@dataclass(frozen=True, slots=True)
class Fragment:
    TAG = 2
    frag_id: int
    index: int
    count: int
    chunk: bytes

    def to_list(self) -> list[Any]:
        return [self.TAG, self.frag_id, self.index, self.count, self.chunk]

    @classmethod
    def from_list(cls, f: list[Any]) -> Fragment:
        _, frag_id, index, count, chunk = f
        if not (isinstance(chunk, bytes) and 0 <= index < count):
            raise RecordError("fragment malformed")
        return cls(int(frag_id), int(index), int(count), chunk)


class Record(Protocol):
    """What every record is: a tag and its fields as a list."""

    TAG: int

    def to_list(self) -> list[Any]: ...


_BY_TAG: dict[int, Any] = {Heartbeat.TAG: Heartbeat, Fragment.TAG: Fragment}


def register(cls: type[Any]) -> type[Any]:
    """Make a record class decodable (a class decorator); each tag belongs to one class."""
    owner = _BY_TAG.get(cls.TAG)
    if owner is not None and owner is not cls:
        raise ValueError(f"record tag {cls.TAG} is taken by {owner.__name__}")
    _BY_TAG[cls.TAG] = cls
    return cls


def decoder(tag: int) -> Any:
    """The class that decodes `tag`, or None."""
    return _BY_TAG.get(tag)


def encode(record: Record) -> bytes:
    return cbor2.dumps(record.to_list())


def decode_item(item: Any) -> Record:
    """Turn one decoded CBOR item into a record; RecordError if it is not one."""
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise RecordError("record is not a tagged array")
    cls = _BY_TAG.get(item[0])
    if cls is None:
        raise UnknownRecord(f"unknown record tag {item[0]}")
    try:
        rec: Record = cls.from_list(item)
    except RecordError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecordError(f"{cls.__name__} malformed: {exc}") from None
    return rec


def decode(data: bytes) -> Record:
    try:
        item = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise RecordError(f"not CBOR: {exc}") from None
    return decode_item(item)
