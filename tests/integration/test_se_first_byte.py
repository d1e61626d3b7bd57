"""The reference SE records when the first byte of a file part arrived
(`first_byte_at`, time.time()), which the streaming benchmark compares with the
moment the client sent its first body byte."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp

from tests.stack import Stack, se_metadata

PAUSE_S = 0.6


def test_se_records_when_the_first_file_byte_arrived(stack: Stack) -> None:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="description"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent_first: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        yield head
        await asyncio.sleep(PAUSE_S)  # form head alone: not a file byte yet
        sent_first.append(time.time())
        yield b"first"
        await asyncio.sleep(PAUSE_S)  # the rest comes much later
        yield b" and the rest" + f"\r\n--{boundary}--\r\n".encode()

    async def upload() -> dict[str, object]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{stack.se.url}/api/v1/files/upload",
                data=body(),
                headers={
                    **stack.keys.auth(),
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
            return dict(await resp.json())

    reply = asyncio.run(upload())
    stored = se_metadata(stack, str(reply["file_id"]))
    first_byte_at = stored["first_byte_at"]
    assert isinstance(first_byte_at, float)
    # after the client sent the first file byte, well before it sent the rest
    assert sent_first[0] - 0.01 <= first_byte_at < sent_first[0] + PAUSE_S / 2
    assert stored["file_size"] == len(b"first and the rest")
