"""Focused failure tests against real processes: Redis gone, a worker stopped, a worker killed."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from sqlalchemy import text

from tests.chaos.harness import (
    StackConfig,
    holder_pid,
    lease_holders,
    pg_engine,
    poll_until,
    running_stack,
)

pytestmark = pytest.mark.chaos


def _packet(sequence: int) -> dict[str, object]:
    return {"sequence": sequence, "timestamp": 1000.0 + sequence, "data": f"hello {sequence}"}


async def test_redis_unreachable_answers_503_then_recovers_without_restart() -> None:
    with running_stack(StackConfig(), workers=0) as stack:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
            first = await client.post("/v1/call/stream/c-redis", json=_packet(0))
            assert first.status_code == 202

            await asyncio.to_thread(stack.stop_redis)

            started = time.monotonic()
            down = await client.post("/v1/call/stream/c-redis", json=_packet(1))
            elapsed = time.monotonic() - started
            assert down.status_code == 503
            assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
            assert down.headers.get("retry-after")
            body = down.json()
            assert body["code"] == "redis_unavailable"
            assert "Traceback" not in down.text

            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"] != "ok"

            await asyncio.to_thread(stack.start_redis)

            async def ingesting() -> bool:
                answer = await client.post("/v1/call/stream/c-redis", json=_packet(2))
                return answer.status_code == 202

            await poll_until(ingesting, 15, "ingestion never recovered after Redis came back")
            # AOF: the packet acknowledged before the restart is still there.
            again = await client.post("/v1/call/stream/c-redis", json=_packet(0))
            assert again.status_code == 200
            assert again.json()["duplicate"] is True
            assert (await client.get("/readyz")).status_code == 200


async def test_sigterm_on_idle_worker_exits_zero() -> None:
    with running_stack(StackConfig(), workers=1) as stack:
        (worker,) = stack.workers.values()
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 10)
        assert code == 0, stack.worker_logs()[-3000:]


async def test_killed_worker_call_is_finished_by_the_other_worker() -> None:
    config = StackConfig(ai_failure_rate=0.0, ai_latency_min_s=3.0, ai_latency_max_s=3.0)
    with running_stack(config, workers=1) as stack:
        (doomed,) = stack.workers.values()
        engine = pg_engine(stack)
        try:
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
                for sequence in range(5):
                    answer = await client.post("/v1/call/stream/c-kill", json=_packet(sequence))
                    assert answer.status_code == 202
                assert (await client.post("/v1/call/complete/c-kill")).status_code == 202

                # The doomed worker holds the call; the other one starts while it does.
                async def held_by_doomed() -> bool:
                    holder = (await lease_holders(stack)).get("c-kill")
                    return holder is not None and holder_pid(holder) == doomed.pid

                await poll_until(held_by_doomed, 15, "the first worker never took the call")
                survivor = stack.start_worker()
                await asyncio.to_thread(stack.wait_worker_ready, survivor)

                async def state() -> tuple[str, bool]:
                    async with engine.connect() as conn:
                        row = (
                            await conn.execute(
                                text("SELECT state, transcript FROM call WHERE call_id = 'c-kill'")
                            )
                        ).one()
                    return str(row.state), row.transcript is not None

                # Mid-job: transcription stored, sentiment running (3 s of AI latency).
                async def in_sentiment() -> bool:
                    return await state() == ("PROCESSING_AI", True)

                await poll_until(in_sentiment, 15, "the call never reached sentiment", 0.05)
                assert await held_by_doomed()
                await asyncio.to_thread(stack.kill_worker, doomed)
                killed_at = time.monotonic()

                async def archived() -> bool:
                    return (await state())[0] == "ARCHIVED"

                # The lease runs out up to LEASE_TTL_S after the kill, the reaper's next pass
                # re-runs the job and its sentiment takes 3 s: 11.8 s on a quiet machine. The
                # rest is room for a loaded one (a bound of 15 s failed CI once).
                recovery_bound_s = config.lease_ttl_s + 20
                await poll_until(
                    archived, recovery_bound_s, "the killed worker's call was never archived"
                )
                recovery_s = time.monotonic() - killed_at
                print(f"\nkilled worker's call archived {recovery_s:.1f}s after the kill")  # noqa: T201
                status = (await client.get("/v1/calls/c-kill")).json()
                assert status["state"] == "ARCHIVED"
                assert "reaper re-ran" in survivor.log.read_text()
        finally:
            await engine.dispose()


async def test_worker_survives_a_redis_restart() -> None:
    config = StackConfig(ai_failure_rate=0.0)
    with running_stack(config, workers=1) as stack:
        (worker,) = stack.workers.values()
        await asyncio.to_thread(stack.restart_redis, 1.0)
        engine = pg_engine(stack)
        try:
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:

                async def ingested() -> bool:
                    answer = await client.post("/v1/call/stream/c-after", json=_packet(0))
                    return answer.status_code in (200, 202)

                await poll_until(ingested, 15, "ingestion never recovered")
                assert (await client.post("/v1/call/complete/c-after")).status_code == 202

            async def archived_or_dead() -> bool:
                if worker.proc.poll() is not None:
                    return True
                async with engine.connect() as conn:
                    state = await conn.scalar(
                        text("SELECT state FROM call WHERE call_id = 'c-after'")
                    )
                return bool(state == "ARCHIVED")

            await poll_until(archived_or_dead, 30, "the call was never archived")
            assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
        finally:
            await engine.dispose()


async def test_sigterm_mid_job_hands_the_call_back_and_exits_zero() -> None:
    config = StackConfig(
        ai_failure_rate=0.0,
        ai_latency_min_s=4.0,
        ai_latency_max_s=4.0,
        extra_env={"SHUTDOWN_GRACE_S": "1"},
    )
    with running_stack(config, workers=1) as stack:
        (stopping,) = stack.workers.values()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
            assert (await client.post("/v1/call/stream/c-term", json=_packet(0))).status_code == 202
            assert (await client.post("/v1/call/complete/c-term")).status_code == 202

            async def held() -> bool:
                holder = (await lease_holders(stack)).get("c-term")
                return holder is not None and holder_pid(holder) == stopping.pid

            await poll_until(held, 15, "the worker never took the call")
            successor = stack.start_worker(AI_LATENCY_MIN_S="0.05", AI_LATENCY_MAX_S="0.1")
            await asyncio.to_thread(stack.wait_worker_ready, successor)
            stopping.proc.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            code = await asyncio.to_thread(stopping.proc.wait, 15)
            assert code == 0, stack.worker_logs()[-3000:]

            async def archived() -> bool:
                return bool((await client.get("/v1/calls/c-term")).json()["state"] == "ARCHIVED")

            await poll_until(archived, 15, "the handed-back call was never finished")
            # Handed back at once, not after the 10 s lease lapsed and the reaper noticed.
            assert time.monotonic() - stopped_at < 8
