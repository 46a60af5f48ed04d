"""An app process calling `ami.test.Echo` at a target, with the environment it was given.

`python -m tests.grpcclient reviews:9080` makes a unary call, a server-streaming call, a
bidirectional one and a `Fail` call on one insecure channel, then prints the results as one
JSON object. Run as its own process so that grpcio reads the proxy variables (`grpc_proxy`,
`http_proxy`...) as any app would, and its connections end with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tests.grpcapp import method

DEADLINE = 10.0


async def calls(target: str) -> dict[str, Any]:
    async def chat_requests() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"m%d" % i

    async with grpc.aio.insecure_channel(target, options=(("grpc.enable_retries", 0),)) as ch:
        unary = json.loads(await method(ch, "Unary")(b"hi", timeout=DEADLINE))
        stream = [m.decode() async for m in method(ch, "Stream", "unary_stream")(b"5")]
        chat = [m.decode() async for m in method(ch, "Chat", "stream_stream")(chat_requests())]
        try:
            await method(ch, "Fail")(b"OK", timeout=DEADLINE)
            fail = "OK"
        except grpc.aio.AioRpcError as err:
            fail = err.code().name
    return {"unary": unary, "stream": stream, "chat": chat, "fail": fail}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(calls(sys.argv[1]))))
