"""The chaos run: a few hundred calls through the real API while a worker is SIGKILLed, Redis is
restarted and PostgreSQL is stopped; then every call must be ARCHIVED or FAILED, exactly once,
with exactly the packets the API acknowledged.

`pytest -s -m chaos tests/chaos/test_chaos.py` prints the figures of the run.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from db.live import LiveCalls
from db.redis_client import close_redis, make_redis
from db.states import TERMINAL_STATES, CallState, can_transition
from tests.chaos.harness import (
    Stack,
    StackConfig,
    holder_pid,
    lease_holders,
    pg_engine,
    poll_until,
    running_stack,
)

FIGURES_DIR = Path(tempfile.gettempdir()) / "callstream-chaos"


# --- the client and its ledger ---------------------------------------------------------------


@dataclass
class Ledger:
    """What the API told the client. `stored` is every sequence answered 2xx (the server has it);
    `unique` those answered duplicate=false. A sequence may be answered duplicate=true without a
    prior unique answer only if an earlier request for it got no clear answer (`ambiguous`)."""

    unique: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    stored: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    ambiguous: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    unique_twice: list[tuple[str, int]] = field(default_factory=list)
    unexplained_duplicates: list[tuple[str, int]] = field(default_factory=list)
    requests: int = 0
    duplicates: int = 0
    rejected_409: int = 0
    transport_errors: int = 0
    answers_503: list[float] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)
    idle: set[str] = field(default_factory=set)

    def acknowledge(self, call_id: str, sequence: int, duplicate: bool) -> None:
        if duplicate:
            self.duplicates += 1
            known = sequence in self.stored[call_id] or sequence in self.ambiguous[call_id]
            if not known:
                self.unexplained_duplicates.append((call_id, sequence))
        else:
            if sequence in self.unique[call_id]:
                self.unique_twice.append((call_id, sequence))
            self.unique[call_id].add(sequence)
        self.stored[call_id].add(sequence)


RETRYABLE = (503,)


async def post_until_answered(
    client: httpx.AsyncClient, ledger: Ledger, url: str, json: object | None, on_fail: set[int]
) -> httpx.Response:
    """POST until an answer other than 503 / no answer; failures are retried after a pause."""
    while True:
        ledger.requests += 1
        try:
            answer = await client.post(url, json=json)
        except httpx.TransportError:
            ledger.transport_errors += 1
            on_fail.add(1)
            await asyncio.sleep(0.2)
            continue
        if answer.status_code in RETRYABLE:
            ledger.answers_503.append(time.monotonic())
            on_fail.add(1)
            await asyncio.sleep(0.2)
            continue
        return answer


@dataclass(frozen=True)
class CallPlan:
    call_id: str
    sends: list[int]  # sequences in the order sent, duplicates and reorderings included
    explicit: bool  # POST /complete at the end, else left to the idle sweep


def plan_call(rng: random.Random, call_id: str) -> CallPlan:
    count = rng.randint(5, 20)
    order = list(range(count))
    for i in range(1, count - 1):
        if rng.random() < 0.15:  # reordered
            order[i], order[i + 1] = order[i + 1], order[i]
    order = [s for s in order if s == 0 or rng.random() > 0.04]  # a few never sent: gaps
    sends: list[int] = []
    for sequence in order:
        sends.append(sequence)
        if rng.random() < 0.12:  # a duplicate of something already sent
            sends.append(rng.choice(sends))
    return CallPlan(call_id, sends, explicit=rng.random() < 0.8)


async def drive_call(client: httpx.AsyncClient, ledger: Ledger, plan: CallPlan) -> None:
    rng = random.Random(plan.call_id)
    call_id = plan.call_id
    for sequence in plan.sends:
        packet = {"sequence": sequence, "timestamp": 1e9 + sequence, "data": f"w{sequence} good"}
        failed: set[int] = set()
        answer = await post_until_answered(
            client, ledger, f"/v1/call/stream/{call_id}", packet, failed
        )
        if failed:
            ledger.ambiguous[call_id].add(sequence)
        if answer.status_code == 409:
            ledger.rejected_409 += 1
        elif answer.status_code in (200, 202):
            ledger.acknowledge(call_id, sequence, bool(answer.json()["duplicate"]))
        else:
            raise AssertionError(f"{call_id}/{sequence}: {answer.status_code} {answer.text}")
        await asyncio.sleep(rng.uniform(0.01, 0.05))
    if plan.explicit:
        ledger.explicit.add(call_id)
        answer = await post_until_answered(
            client, ledger, f"/v1/call/complete/{call_id}", None, set()
        )
        assert answer.status_code in (200, 202), f"{call_id}: {answer.status_code} {answer.text}"
    else:
        ledger.idle.add(call_id)


async def drive_load(
    client: httpx.AsyncClient, ledger: Ledger, calls: int, spacing_s: float, seed: int
) -> None:
    rng = random.Random(seed)
    plans = [plan_call(rng, f"chaos-{seed}-{i:04d}") for i in range(calls)]
    async with asyncio.TaskGroup() as calls_in_flight:  # one failure cancels the rest
        for plan in plans:
            calls_in_flight.create_task(drive_call(client, ledger, plan))
            await asyncio.sleep(spacing_s)


# --- the chaos --------------------------------------------------------------------------------


@dataclass
class Figures:
    killed_pid: int = 0
    held_at_kill: int = 0
    processing_at_kill: int = 0
    recovery_s: float | None = None
    redis_down: tuple[float, float] = (0.0, 0.0)
    postgres_down_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    killed: asyncio.Event = field(default_factory=asyncio.Event)


async def _query(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(text(sql))).all()]


async def _epochs(engine: AsyncEngine, call_ids: list[str]) -> dict[str, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT call_id, state, lease_epoch FROM call WHERE call_id = ANY(:ids)"),
            {"ids": call_ids},
        )
        return {str(r.call_id): (str(r.state), int(r.lease_epoch)) for r in rows}


async def kill_a_worker_mid_job(stack: Stack, engine: AsyncEngine, figures: Figures) -> None:
    """SIGKILL the first worker while it holds calls; time until all of them have moved on."""
    victim = next(iter(stack.workers.values()))

    async def victim_busy() -> bool:
        """The victim holds the lease of a call that PostgreSQL shows in PROCESSING_AI."""
        mine = [c for c, h in (await lease_holders(stack)).items() if holder_pid(h) == victim.pid]
        states = await _epochs(engine, mine) if mine else {}
        return any(state == CallState.PROCESSING_AI for state, _ in states.values())

    await poll_until(victim_busy, 60, "the first worker never held a call", 0.02)
    stack.kill_worker(victim)  # on the loop's thread: the supervisor never sees it as a crash
    killed_at = time.monotonic()
    figures.killed_pid = victim.pid
    figures.killed.set()
    held = [c for c, h in (await lease_holders(stack)).items() if holder_pid(h) == victim.pid]
    before = await _epochs(engine, held)
    figures.held_at_kill = len(held)
    processing = await _query(engine, "SELECT count(*) FROM call WHERE state = 'PROCESSING_AI'")
    figures.processing_at_kill = int(str(processing[0][0]))
    figures.notes.append(f"killed worker held {held} (PG state, epoch at kill: {before})")

    async def moved_on() -> bool:
        try:
            now = await _epochs(engine, held)
        except Exception:  # PostgreSQL may be down meanwhile: not yet known
            return False
        return all(_moved_on(now.get(c), before.get(c)) for c in held)

    await poll_until(moved_on, 60, "the killed worker's calls never moved on", 0.05)
    figures.recovery_s = time.monotonic() - killed_at


def _moved_on(now: tuple[str, int] | None, before: tuple[str, int] | None) -> bool:
    """Terminal, or claimed again (a newer epoch) since the kill."""
    if now is None:
        return False
    state, epoch = now
    return CallState(state) in TERMINAL_STATES or epoch > (before[1] if before else 0)


async def inflict_chaos(stack: Stack, engine: AsyncEngine, figures: Figures) -> None:
    recovery = asyncio.create_task(kill_a_worker_mid_job(stack, engine, figures))
    await asyncio.wait(
        [recovery, asyncio.create_task(figures.killed.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    await asyncio.sleep(2)
    stack.start_worker()  # the replacement
    await recovery  # measured before the other outages, so the figure is the lease's alone

    down_at = time.monotonic()
    await asyncio.to_thread(stack.restart_redis, 1.0)
    figures.redis_down = (down_at, time.monotonic())

    await asyncio.sleep(1)
    await asyncio.to_thread(stack.stop_postgres)
    stopped = time.monotonic()
    await asyncio.sleep(5)
    await asyncio.to_thread(stack.start_postgres)
    figures.postgres_down_s = time.monotonic() - stopped


# --- the verdict ------------------------------------------------------------------------------


async def wait_quiescent(stack: Stack, engine: AsyncEngine, call_ids: set[str]) -> None:
    redis = make_redis(
        stack.call_keys_url, max_connections=8, connect_timeout_s=2, read_timeout_s=5
    )

    async def settled() -> bool:
        try:
            rows = await _query(engine, "SELECT call_id, state FROM call")
            counts = await LiveCalls(redis).counts()
            pending = counts.pending + counts.live
        except Exception:
            return False
        terminal = {str(c) for c, s in rows if CallState(str(s)) in TERMINAL_STATES}
        return call_ids <= terminal and pending == 0

    try:
        await poll_until(settled, 60, "calls still not ARCHIVED/FAILED", 0.5)
    except TimeoutError:
        rows = await _query(engine, "SELECT call_id, state, lease_epoch, last_error FROM call")
        stuck = [r for r in rows if CallState(str(r[1])) not in TERMINAL_STATES]
        missing = call_ids - {str(r[0]) for r in rows}
        pending = await LiveCalls(redis).pending(time.time() + 1, 10)
        raise AssertionError(
            f"not quiescent after 60s: stuck in PG {stuck[:10]}, "
            f"never flushed {sorted(missing)[:10]}, pending in Redis {pending[:10]}"
        ) from None
    finally:
        await close_redis(redis)


async def supervise(stack: Stack) -> None:
    """Restart workers that exit by themselves, as systemd or Kubernetes would."""
    while True:
        stack.replace_crashed_workers()
        await asyncio.sleep(0.5)


async def _stored_once(engine: AsyncEngine) -> dict[str, set[int]]:
    """Every call's stored sequences; segments flushed while the calls went on, across the
    kills and the restart, must hold none twice."""
    stored: dict[str, set[int]] = defaultdict(set)
    twice: list[tuple[str, int]] = []
    for call_id, sequence in await _query(
        engine, "SELECT call_id, unnest(sequences) FROM call_segment"
    ):
        if int(str(sequence)) in stored[str(call_id)]:
            twice.append((str(call_id), int(str(sequence))))
        stored[str(call_id)].add(int(str(sequence)))
    assert not twice, f"packets stored twice: {twice[:10]}"
    return stored


async def verify(
    stack: Stack, engine: AsyncEngine, ledger: Ledger, lost: list[tuple[str, int]] | None = None
) -> tuple[Counter[str], int]:
    """Every promise of the run; with `lost`, acknowledged packets missing from PostgreSQL are
    collected there instead of failing, and so is a first answer of `duplicate` (a run without
    REDIS_WAIT_REPLICAS on a cluster: redis-py re-sends a pipeline that met a dying master, and
    the replica may already hold the first attempt's packet: the retry's answer is duplicate)."""
    assert not ledger.unique_twice, f"answered duplicate=false twice: {ledger.unique_twice[:10]}"
    if lost is None:
        assert not ledger.unexplained_duplicates, ledger.unexplained_duplicates[:10]
    call_ids = set(ledger.stored)

    calls = await _query(engine, "SELECT call_id, state, last_error FROM call")
    in_postgres = {str(c) for c, _, _ in calls}
    assert call_ids <= in_postgres, call_ids - in_postgres
    # A call none of whose packets got a clear answer may exist: they may have been stored.
    assert in_postgres - call_ids <= set(ledger.ambiguous), in_postgres - call_ids
    states: Counter[str] = Counter()
    for call_id, state, last_error in calls:
        states[str(state)] += 1
        assert CallState(str(state)) in TERMINAL_STATES, f"{call_id} is stuck in {state}"
        if state == CallState.FAILED:
            assert last_error, f"{call_id} FAILED without last_error"

    stored = await _stored_once(engine)
    for call_id in call_ids:
        acknowledged = ledger.stored[call_id]
        extra = stored[call_id] - acknowledged
        # A packet whose every request went unanswered may or may not have been stored.
        assert extra <= ledger.ambiguous[call_id] - acknowledged, (call_id, extra)
        if lost is not None:
            lost.extend((call_id, s) for s in sorted(acknowledged - stored[call_id]))
        else:
            assert acknowledged <= stored[call_id], (call_id, acknowledged - stored[call_id])

    results: Counter[str] = Counter()
    for call_id, source, target in await _query(
        engine, "SELECT call_id, from_state, to_state FROM state_transition ORDER BY id"
    ):
        origin = CallState(str(source)) if source is not None else None
        assert can_transition(origin, CallState(str(target))), (call_id, source, target)
        if CallState(str(target)) in TERMINAL_STATES:
            results[str(call_id)] += 1
    assert all(results[c] == 1 for c in in_postgres), {
        c: results[c] for c in in_postgres if results[c] != 1
    }

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
        sample = sorted(call_ids)
        answers = await asyncio.gather(*(client.get(f"/v1/calls/{c}") for c in sample))
        by_pg = {str(c): str(s) for c, s, _ in calls}
        for call_id, answer in zip(sample, answers, strict=True):
            assert answer.status_code == 200, (call_id, answer.text)
            assert answer.json()["state"] == by_pg[call_id]
    return states, sum(map(len, stored.values()))


def report(
    stack: Stack, ledger: Ledger, figures: Figures, states: Counter[str], stored: int, took: float
) -> str:
    logs = stack.worker_logs()
    reaped = sum(int(n) for n in re.findall(r"reaper re-ran (\d+) orphaned", logs))
    outages = logs.count("dependency unavailable")
    start, end = figures.redis_down
    during_restart = sum(start <= t <= end + 2 for t in ledger.answers_503)
    recovery = f"{figures.recovery_s:.1f}s" if figures.recovery_s is not None else "n/a"
    lines = [
        f"calls                          {len(ledger.stored)} "
        f"({len(ledger.explicit)} completed explicitly, {len(ledger.idle)} by the idle sweep)",
        f"packet requests                {ledger.requests}",
        f"packets acknowledged (unique)  {sum(map(len, ledger.unique.values()))}",
        f"packets acknowledged (any 2xx) {sum(map(len, ledger.stored.values()))}",
        f"packets stored (PostgreSQL)    {stored}",
        f"duplicates answered            {ledger.duplicates}",
        f"409 after completion           {ledger.rejected_409}",
        f"503s (all / Redis restart)     {len(ledger.answers_503)} / {during_restart}",
        f"transport errors               {ledger.transport_errors}",
        f"worker killed (pid)            {figures.killed_pid}",
        f"calls it held at the kill      {figures.held_at_kill} "
        f"(PROCESSING_AI in PG, all workers: {figures.processing_at_kill})",
        f"recovery after the kill        {recovery}",
        f"Redis down                     {end - start:.1f}s",
        f"PostgreSQL down                {figures.postgres_down_s:.1f}s",
        f"calls re-run by the reaper     {reaped}",
        f"workers crashed (restarted)    {len(stack.crashed)} {stack.crashed}",
        f"AI breaker openings            {stack.worker_logs().count('circuit breaker open')}"
        " (AI down 3 s of every 12 s)",
        f"job retries on outages         {outages}",
        f"final states                   {dict(states)}",
        f"FAILED                         {states.get('FAILED', 0)}",
        f"run time                       {took:.1f}s",
        *figures.notes,
    ]
    return "\n".join(lines)


async def chaos_run(calls: int, spacing_s: float, seed: int) -> None:
    # The AI fails 30% of requests, and in bursts it is down altogether: the first 3 s of every
    # 12 s, which the shared circuit breaker must ride out without failing calls for it.
    bursts = {
        "AI_OUTAGE_PERIOD_S": "12",
        "AI_OUTAGE_DURATION_S": "3",
        "AI_BREAKER_THRESHOLD": "5",
        "AI_BREAKER_COOLDOWN_S": "1",
    }
    config = StackConfig(
        ai_failure_rate=0.3,
        lease_ttl_s=5.0,
        call_idle_timeout_s=4.0,
        extra_env=bursts,
        # Every call is flushed in segments while it goes on (a segment every 5 packets or
        # 0.1 s), so the worker kills and the Redis restart land between segments' commits and
        # their trims too.
        shared_env={"SEGMENT_SECONDS": "0.1"},
    )
    FIGURES_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    with running_stack(config, keep_logs=FIGURES_DIR / f"logs-{seed}") as stack:
        engine = pg_engine(stack)
        ledger, figures = Ledger(), Figures()
        supervisor = asyncio.create_task(supervise(stack))
        chaos = asyncio.create_task(inflict_chaos(stack, engine, figures))
        try:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=5, limits=limits) as c:
                await drive_load(c, ledger, calls, spacing_s, seed)
                await chaos
            await wait_quiescent(stack, engine, set(ledger.stored))
            states, stored = await verify(stack, engine, ledger)
        finally:
            for task in (chaos, supervisor):
                task.cancel()
            await asyncio.gather(chaos, supervisor, return_exceptions=True)
            await engine.dispose()
        text_report = report(stack, ledger, figures, states, stored, time.monotonic() - started)
    out = FIGURES_DIR / f"figures-{seed}.txt"
    out.write_text(text_report + "\n")
    print(f"\nchaos run ({out}):\n{text_report}")  # noqa: T201


@pytest.mark.chaos
async def test_chaos_short() -> None:
    await chaos_run(calls=60, spacing_s=0.3, seed=1)


@pytest.mark.chaos_long
@pytest.mark.timeout(600)
async def test_chaos_long() -> None:
    await chaos_run(calls=300, spacing_s=0.12, seed=2)
