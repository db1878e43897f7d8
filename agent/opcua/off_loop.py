"""The crawler's services with their responses decoded off the event loop.

asyncua decodes a response in the coroutine that awaits it, in one step. A
Browse of 10,000 nodes of a large plant answers with 100,000 references, and
decoding them holds TX's one event loop for seconds: its heartbeats go out late
and RX calls the link DOWN while nothing is wrong with it. Here the request
goes out as asyncua sends it, and the response's bytes are decoded in a worker
thread. The loop then shares the interpreter with that thread (a switch every
few milliseconds) and keeps its timers. The work is the same; only where it
waits changes.

```
Crawler ─► PacedSession ─► OffLoopSession ─► UaSession._send_request ─► server
                                 ▲                         │ response bytes
                                 └── asyncio.to_thread(decode) ◄┘
       browse, browse_next: raw_browse.browse_results (asyncua's objects, few of them built)
       read_raw: raw_values.read_values (no objects at all)
       read, or any response those do not fit: asyncua's struct_from_binary
```

It uses one internal of asyncua's client, `UaSession._send_request` (the
request, sent and answered, before it is decoded); a test against a real
server covers it on upgrades.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from asyncua import ua
from asyncua.client.ua_session import UaSession
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary

from agent.opcua.raw_browse import browse_results
from agent.opcua.raw_values import RawValue, raw_of, read_values
from agent.opcua.wire import Malformed

T = TypeVar("T")


class OffLoopSession:
    """Browse, BrowseNext and Read of `session`, their responses decoded in a thread."""

    def __init__(self, session: UaSession) -> None:
        self._session = session

    async def _call(self, request: Any, response_type: type[T]) -> T:
        data = await self._session._send_request(request)
        response: Any = await asyncio.to_thread(struct_from_binary, response_type, data)
        response.ResponseHeader.ServiceResult.check()
        return response

    async def browse(self, parameters: ua.BrowseParameters) -> list[ua.BrowseResult]:
        request = ua.BrowseRequest()
        request.Parameters = parameters
        data = bytes(await self._session._send_request(request))
        return await asyncio.to_thread(_browsed, data, ua.BrowseResponse)

    async def browse_next(self, parameters: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        request = ua.BrowseNextRequest()
        request.Parameters = parameters
        data = bytes(await self._session._send_request(request))
        return await asyncio.to_thread(_browsed, data, ua.BrowseNextResponse)

    async def read(self, parameters: ua.ReadParameters) -> list[ua.DataValue]:
        request = ua.ReadRequest()
        request.Parameters = parameters
        return (await self._call(request, ua.ReadResponse)).Results

    async def read_raw(self, parameters: ua.ReadParameters) -> list[RawValue]:
        """The values as the link carries them, sliced from the response's bytes
        (agent/opcua/raw_values.py); asyncua decodes a response they do not fit."""
        request = ua.ReadRequest()
        request.Parameters = parameters
        data = bytes(await self._session._send_request(request))
        return await asyncio.to_thread(_values_of, data)


def _browsed(data: bytes, response_type: type[Any]) -> list[ua.BrowseResult]:
    try:
        return browse_results(data)
    except Malformed:
        response = struct_from_binary(response_type, Buffer(data))
        response.ResponseHeader.ServiceResult.check()
        results: list[ua.BrowseResult] = (response.Results if response_type is ua.BrowseResponse
                                          else response.Parameters.Results)
        return results


def _values_of(data: bytes) -> list[RawValue]:
    try:
        return read_values(data)
    except Malformed:
        response = struct_from_binary(ua.ReadResponse, Buffer(data))
        response.ResponseHeader.ServiceResult.check()
        return [raw_of(dv) for dv in response.Results]
