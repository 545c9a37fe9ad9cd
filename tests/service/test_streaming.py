"""service/streaming.py's timing helpers, without a socket: the shared windows held packets are
stored at the end of, and waiting for the next message by a deadline (Waiter, over an ASGI
`receive` that is an asyncio.Queue's get, as uvicorn's is)."""

from __future__ import annotations

import asyncio

import pytest

from service import streaming
from service.streaming import HOLD_S, Waiter, store_at


@pytest.mark.parametrize("held_since", [0.0, 0.001, HOLD_S * 0.5, HOLD_S * 7.99, 12345.678])
def test_a_packet_is_stored_at_the_end_of_its_window_within_hold_s(held_since: float):
    due = store_at(held_since)
    assert held_since < due <= held_since + HOLD_S + 1e-9


def test_packets_held_in_one_window_by_different_streams_are_stored_at_one_moment():
    start = 100.01 * HOLD_S
    moments = {store_at(start + HOLD_S * f) for f in (0.0, 0.1, 0.5, 0.9, 0.98)}
    assert len(moments) == 1
    assert store_at(start + HOLD_S * 1.0) > moments.pop()  # the next window: the next moment


def queue_receive() -> tuple[asyncio.Queue[dict[str, object]], Waiter]:
    messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    return messages, Waiter(messages.get)


def frame(text: str) -> dict[str, object]:
    return {"type": "websocket.receive", "text": text}


async def test_a_message_already_received_is_taken_even_past_the_deadline():
    messages, waiter = queue_receive()
    messages.put_nowait(frame("frame"))
    assert await waiter.receive(asyncio.get_running_loop().time() - 1) == frame("frame")
    waiter.close()


async def test_no_message_by_the_deadline_is_a_timeout_and_loses_no_later_message():
    messages, waiter = queue_receive()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await waiter.receive(loop.time() + 0.02)
    messages.put_nowait(frame("late"))  # the timed-out wait took nothing away
    assert await waiter.receive(loop.time() + 1) == frame("late")
    waiter.close()


async def test_a_message_arriving_while_waiting_is_returned():
    messages, waiter = queue_receive()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, messages.put_nowait, frame("frame"))
    assert await waiter.receive(loop.time() + 1) == frame("frame")
    waiter.close()


async def test_one_deadline_for_many_messages_times_out_only_the_wait_that_passes_it():
    messages, waiter = queue_receive()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    for n in range(3):  # the same deadline: one timer, armed once
        loop.call_later(0.005, messages.put_nowait, frame(str(n)))
        assert await waiter.receive(deadline) == frame(str(n))
    with pytest.raises(TimeoutError):
        await waiter.receive(deadline)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the timeout's own cancellation is taken back
    waiter.close()


async def test_a_deadline_that_passes_during_other_work_does_not_cancel_that_work():
    messages, waiter = queue_receive()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.01
    messages.put_nowait(frame("frame"))
    assert await waiter.receive(deadline) == frame("frame")  # armed, and not waiting now
    await asyncio.sleep(0.03)  # a store in flight as the deadline passes: not cancelled
    with pytest.raises(TimeoutError):  # the window is over: the next wait ends at once
        await waiter.receive(deadline)
    waiter.close()


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_timeout():
    messages, _ = queue_receive()

    async def wait() -> None:
        waiter = Waiter(messages.get)
        try:
            await waiter.receive(asyncio.get_running_loop().time() + 10)
        finally:
            waiter.close()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_hold_stays_within_the_status_lag_budget():
    # The status lag's p99 budget is 250 ms (bench capacity): a frame waits HOLD_S at most, and
    # its store and the status read must fit in the rest (at 150 ms, p99 141-175 ms measured).
    assert streaming.HOLD_S <= 0.6 * 0.250
