"""The register map -> as few read requests as the device allows. Pure.

Values of one device are grouped by poll period, unit id and function (a
request reads one table of one unit), sorted by address, then merged greedily:
the next value joins the current request while the request stays within the
device's `max_registers` (or `max_bits`) and the hole between them is at most
`max_gap` unmapped registers. Reading a hole costs two bytes a register on
the wire, far less than another request's round trip (on RTU at 19,200 baud
a request costs ~10 ms of line time and the device's turnaround; a register
~1 ms).

A device that refuses a merged request (exception 2, illegal data address:
the hole holds addresses it does not have) gets that request split into its
contiguous runs (`split`), and only what is still refused turns Bad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.modbus.config import ModbusDevice, ModbusValue


@dataclass(frozen=True)
class Read:
    """One read request and the values it carries."""
    function: int                        # 1, 2, 3 or 4
    unit_id: int
    address: int
    count: int                           # registers or bits
    items: tuple[tuple[int, int], ...]   # (value index, offset in the response)

    @property
    def end(self) -> int:
        return self.address + self.count


def plan(device: ModbusDevice, values: Sequence[tuple[int, ModbusValue]]) -> dict[float, list[Read]]:
    """Poll period -> its requests, for (value index, value) pairs of `device`."""
    groups: dict[tuple[float, int, int], list[tuple[int, ModbusValue]]] = {}
    for i, v in values:
        groups.setdefault((v.poll_period, v.unit_id, v.function), []).append((i, v))
    out: dict[float, list[Read]] = {}
    for (period, unit, function), members in sorted(groups.items()):
        limit = device.max_bits if function in (1, 2) else device.max_registers
        out.setdefault(period, []).extend(
            merge(function, unit, members, limit, device.max_gap))
    return out


def merge(function: int, unit: int, members: Sequence[tuple[int, ModbusValue]], limit: int,
          max_gap: int) -> list[Read]:
    reads: list[Read] = []
    start = end = 0
    items: list[tuple[int, int]] = []
    for i, v in sorted(members, key=lambda m: (m[1].address, -m[1].size)):
        a, b = v.address, v.address + v.size
        if items and a - end <= max_gap and max(end, b) - start <= limit:
            end = max(end, b)
        else:
            if items:
                reads.append(Read(function, unit, start, end - start, tuple(items)))
            start, end, items = a, b, []
        items.append((i, a - start))
    if items:
        reads.append(Read(function, unit, start, end - start, tuple(items)))
    return reads


def split(read: Read, values: Sequence[ModbusValue]) -> list[Read]:
    """`read` cut into contiguous runs (no holes); itself when it has none.
    `values[i]` is the value of index i."""
    members = [(i, values[i]) for i, _ in read.items]
    limit = read.count
    return merge(read.function, read.unit_id, members, limit, 0)


def requests_per_cycle(reads: dict[float, list[Read]]) -> int:
    return sum(len(r) for r in reads.values())
