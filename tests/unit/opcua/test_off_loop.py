"""A large response decoded by OffLoopSession leaves the event loop free: its timers
(TX's heartbeats) keep their times, where asyncua's own decode holds them all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from agent.opcua.off_loop import OffLoopSession

VALUES = 150_000


def _response() -> bytes:
    r = ua.ReadResponse()
    r.Results = [ua.DataValue(ua.Variant(float(i), ua.VariantType.Double),
                              ua.StatusCode(ua.StatusCodes.Good)) for i in range(VALUES)]
    return bytes(struct_to_binary(r))


class _Answering:
    """The part of asyncua's UaSession that OffLoopSession uses: the answer's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[Any] = []

    async def _send_request(self, request: Any) -> Buffer:
        self.requests.append(request)
        return Buffer(self.data)


async def _longest_gap(work: Any) -> tuple[float, Any]:
    """Run `work` while a timer ticks every 10 ms: the longest its ticks were apart."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    result = await work()
    await asyncio.sleep(0.05)  # the tick after the work ends measures the gap it made
    ticker.cancel()
    return max(gaps), result


def test_the_loop_keeps_ticking_while_a_large_read_response_decodes() -> None:
    data = _response()
    session = _Answering(data)

    async def in_loop() -> list[ua.DataValue]:
        await asyncio.sleep(0)
        return struct_from_binary(ua.ReadResponse, Buffer(data)).Results  # type: ignore[no-any-return]

    async def off_loop() -> list[ua.DataValue]:
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(ua.NodeId(1, 2), ua.AttributeIds.Value)]
        return await OffLoopSession(session).read(params)  # type: ignore[arg-type]

    blocked, expected = asyncio.run(_longest_gap(in_loop))
    free, got = asyncio.run(_longest_gap(off_loop))
    print(f"\nlongest timer gap while {VALUES} values decode: {blocked:.3f} s in the loop, "
          f"{free:.3f} s off it")
    assert got == expected and len(got) == VALUES
    assert isinstance(session.requests[0], ua.ReadRequest)
    assert blocked > 0.1  # the baseline measured here: the decode is long enough to see
    assert free < blocked / 3


def test_a_refused_service_raises_as_asyncua_does() -> None:
    r = ua.BrowseResponse()
    r.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManyOperations)
    session = _Answering(bytes(struct_to_binary(r)))
    try:
        asyncio.run(OffLoopSession(session).browse(ua.BrowseParameters()))  # type: ignore[arg-type]
    except ua.UaStatusCodeError as exc:
        assert exc.code == ua.StatusCodes.BadTooManyOperations
    else:
        raise AssertionError("a Bad service result must raise")
