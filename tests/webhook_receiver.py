"""A real HTTP receiver of webhooks for the tests: uvicorn on a loopback port, in the test's
event loop, that keeps every request and answers as scripted (a status per request, or no
answer until released), verifying nothing itself: the tests verify with `standardwebhooks`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.types import Receive, Scope, Send

from core.webhooks import secret_key
from devstack.servers import free_port
from jobs.resources import WorkerResources
from jobs.webhooks import BATCH, claim, deliver, make_client


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """`answers`: the statuses of the next requests, in order (200 once they are spent);
    `hold`: while set, requests wait (their attempt times out) until it is cleared."""

    answers: list[int] = field(default_factory=list)
    hold: bool = False
    received: list[Received] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?token=t0ken"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(headers, body))
        self.arrived.set()
        if self.hold:
            await self.released.wait()
        status = self.answers.pop(0) if self.answers else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def receiving(receiver: Receiver, port: int | None = None) -> AsyncIterator[Receiver]:
    receiver.port = port or free_port()
    config = uvicorn.Config(
        receiver, host="127.0.0.1", port=receiver.port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "the receiver did not start"
        yield receiver
    finally:
        receiver.released.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def drain(res: WorkerResources, rounds: int) -> list[str]:
    """What the delivery loop does on each poll, up to `rounds` times (until a poll finds
    nothing due), in one piece: every due row (up to BATCH) claimed and its attempt made, all at
    once; their new states."""
    key = secret_key(res.settings.webhook_secret.get_secret_value())
    states: list[str] = []
    async with make_client() as client:
        for _ in range(rounds):
            claimed = await claim(res, {}, BATCH)
            if not claimed:
                break
            states += await asyncio.gather(*(deliver(res, client, key, d) for d in claimed))
    return states
