"""The one door from the API to the worker: enqueue a call's processing, at most once at a time."""

from arq.connections import ArqRedis

PROCESS_CALL = "process_call"


async def enqueue_process_call(queue: ArqRedis, call_id: str) -> bool:
    """Queue the call's job; the job id is the call id, so a second enqueue is a no-op.
    Returns False when the job was already queued or running."""
    return await queue.enqueue_job(PROCESS_CALL, call_id, _job_id=call_id) is not None
