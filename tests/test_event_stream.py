"""A relayed stream's headers leave with its first event, in one write: sent apart, the client
woke for the headers alone and the first token waited behind that."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from unittest import mock

from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from chatbeto_gateway.proxy.calls import EventStream


async def test_headers_leave_with_the_first_event_in_one_write() -> None:
    writes: list[bytes] = []
    transport = mock.Mock()
    transport.is_closing.return_value = False
    transport.write.side_effect = writes.append

    def writelines(chunks: Iterable[bytes]) -> None:
        writes.append(b"".join(chunks))

    transport.writelines.side_effect = writelines
    protocol = mock.Mock()
    protocol.transport = transport
    writer = StreamWriter(protocol, asyncio.get_running_loop())
    request = make_mocked_request(
        "POST", "/v1/chat/completions", writer=writer, protocol=protocol, transport=transport
    )
    response = EventStream(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    assert writes == []  # nothing before the first event
    await response.write(b'data: {"choices": []}\n\n')
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream\r\n" in writes[0]
    assert writes[0].endswith(b'data: {"choices": []}\n\n\r\n')
    await response.write(b"data: [DONE]\n\n")
    assert len(writes) == 2
