"""One simulation: check the server, plan the calls, send them (at most `concurrency` at once)
with a progress bar, follow each to its final state, and hand the results to the report.

The run is bounded: sending lasts what the calls last at the chosen pace, and waiting for final
states at most `timeout_s` after the last call was sent. A refused key stops everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simulate.pbx_send import PbxTargets, send_pbx
from simulate.plan import PBX_TRANSPORTS, CallPlan, Faults, Transport, plan_calls
from simulate.transports import (
    AccessRefused,
    Pace,
    Sent,
    check_access,
    problem,
    send_http,
    send_ws,
    ws_url,
)
from simulate.watch import Seen, Watcher

REQUEST_TIMEOUT_S = 10.0
POLL_SLOTS = 32  # long polls held at once, whatever the number of calls


@dataclass(frozen=True)
class Options:
    url: str
    calls: int
    transport: Transport | Literal["mixed"]
    pace: Pace
    faults: Faults
    concurrency: int
    batch: int
    timeout_s: float
    seed: int
    api_key: str | None = None
    read_key: str | None = None  # for the reads, when the ingest key may not read
    # AudioSocket's listeners (caller, agent): AUDIOSOCKET_ADDR and AUDIOSOCKET_OUTBOUND_ADDR.
    audiosocket: tuple[tuple[str, int], tuple[str, int]] = (("127.0.0.1", 9092),
                                                            ("127.0.0.1", 9093))  # fmt: skip


@dataclass
class CallResult:
    plan: CallPlan
    sent: Sent | None = None
    seen: Seen = field(default_factory=Seen)


@dataclass
class RunResult:
    calls: list[CallResult]
    started_at: float  # epoch seconds
    sending_s: float = 0.0
    waited_s: float = 0.0
    timed_out: bool = False


class ServerProblem(RuntimeError):
    """The server cannot take a simulation (down, not ready, refusing the key): said plainly."""


def headers_for(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def preflight(options: Options) -> None:
    """Is it up and ready, and may the reading key read? One request each, before any call."""
    read_headers = headers_for(options.read_key or options.api_key)
    async with httpx.AsyncClient(base_url=options.url, timeout=REQUEST_TIMEOUT_S) as client:
        try:
            ready = await client.get("/readyz")
            listed = await client.get("/v1/calls", params={"limit": 1}, headers=read_headers)
        except httpx.HTTPError as exc:
            raise ServerProblem(
                f"cannot reach Callstream at {options.url} ({type(exc).__name__}: {exc}); "
                "is it running? (`make run` starts one)"
            ) from None
    if ready.status_code != 200:
        raise ServerProblem(f"Callstream at {options.url} is not ready: {ready.text[:300]}")
    try:
        check_access(listed, "reading calls (GET /v1/calls)")
    except AccessRefused as refused:
        raise ServerProblem(f"{refused}. {KEY_HINT}") from None
    if listed.status_code != 200:
        raise ServerProblem(f"GET /v1/calls answered {problem(listed)}")


KEY_HINT = (
    "Pass a key with the admin role in CALLSTREAM_API_KEY (or --api-key); or an ingest key there "
    "and a supervisor key in CALLSTREAM_READ_KEY (or --read-key)"
)


class Simulation:
    def __init__(self, options: Options, plans: list[CallPlan], progress: Progress) -> None:
        self.options = options
        self.results = {plan.call_id: CallResult(plan) for plan in plans}
        self.progress = progress
        self.sending = progress.add_task(
            "sending frames", total=sum(len(p.schedule.deliveries) for p in plans)
        )
        self.finals = progress.add_task("calls final", total=len(plans))
        self.call_slots = asyncio.Semaphore(options.concurrency)
        self.unsent = len(plans)
        self.all_sent = asyncio.Event()
        self.refused: AccessRefused | None = None

    def on_sent(self, deliveries: int) -> None:
        self.progress.advance(self.sending, deliveries)

    async def run(self) -> RunResult:
        options = self.options
        result = RunResult(list(self.results.values()), started_at=time.time())
        limits = httpx.Limits(max_connections=options.concurrency + POLL_SLOTS)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
        async with (
            self._client(options.api_key, limits, timeout) as ingest,
            self._client(options.read_key or options.api_key, limits, timeout) as reader,
        ):
            watcher = Watcher(reader, POLL_SLOTS)
            began = time.monotonic()
            tasks = [
                asyncio.create_task(self._call(ingest, watcher, call)) for call in result.calls
            ]
            try:
                await self.all_sent.wait()
                result.sending_s = time.monotonic() - began
                if self.refused is None:
                    _, pending = await asyncio.wait(tasks, timeout=options.timeout_s)
                    result.timed_out = bool(pending)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            result.waited_s = time.monotonic() - began - result.sending_s
        if self.refused is not None:
            raise ServerProblem(f"{self.refused}. {KEY_HINT}")
        return result

    def _client(
        self, key: str | None, limits: httpx.Limits, timeout: httpx.Timeout
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.options.url, headers=headers_for(key), limits=limits, timeout=timeout
        )

    async def _call(self, client: httpx.AsyncClient, watcher: Watcher, call: CallResult) -> None:
        try:
            with self._counted_as_sent():
                async with self.call_slots:
                    call.sent = await self._send(client, call.plan)
            if call.sent.completed:
                await watcher.until_final(call.plan.call_id, call.seen)
                self.progress.advance(self.finals)
        except AccessRefused as refused:
            self.refused = self.refused or refused
            self.all_sent.set()  # nothing more can succeed: wake the run to stop
        except Exception as exc:  # one call's surprise is that call's failure, not the run's
            call.seen.error = f"{type(exc).__name__}: {exc}"

    async def _send(self, client: httpx.AsyncClient, plan: CallPlan) -> Sent:
        options = self.options
        if plan.transport in PBX_TRANSPORTS:
            ws_base = ws_url(options.url).removesuffix("/v1/call/media")
            targets = PbxTargets(ws_base, *options.audiosocket)
            return await send_pbx(plan, targets, options.api_key, options.pace, self.on_sent)
        if plan.transport == "ws":
            url = ws_url(options.url)
            headers = headers_for(options.api_key)
            return await send_ws(url, headers, plan, options.pace, self.on_sent)
        return await send_http(client, plan, options.pace, options.batch, self.on_sent)

    @contextlib.contextmanager
    def _counted_as_sent(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.unsent -= 1
            if self.unsent == 0:
                self.all_sent.set()


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


async def simulate(options: Options, console: Console) -> RunResult:
    """The whole run; raises ServerProblem (said plainly) when the server cannot take it."""
    await preflight(options)
    run_id = secrets.token_hex(3)  # fresh ids every run, even with the same seed
    plans = plan_calls(
        options.calls, options.transport, options.faults, random.Random(options.seed), run_id
    )
    audio_s = sum(plan.audio_s for plan in plans)
    if options.pace.speed is not None:
        # Calls of similar length, `concurrency` at a time: the least sending can take.
        least = audio_s / options.pace.speed / min(options.concurrency, len(plans))
        console.print(
            f"{audio_s:.0f}s of audio: sending takes {least:.0f}s or more at this pace, "
            f"then at most {options.timeout_s:g}s of waiting for final states",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    with new_progress(console) as progress:
        return await Simulation(options, plans, progress).run()
