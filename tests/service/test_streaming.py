"""service/streaming.py's timing helpers, without a socket: the shared windows held packets are
stored at the end of, and waiting for the next message by a deadline."""

from __future__ import annotations

import asyncio

import pytest

from service import streaming
from service.streaming import HOLD_S, next_message, store_at


@pytest.mark.parametrize("held_since", [0.0, 0.001, HOLD_S * 0.5, HOLD_S * 7.99, 12345.678])
def test_a_packet_is_stored_at_the_end_of_its_window_within_hold_s(held_since: float):
    due = store_at(held_since)
    assert held_since < due <= held_since + HOLD_S + 1e-9


def test_packets_held_in_one_window_by_different_streams_are_stored_at_one_moment():
    start = 100.01 * HOLD_S
    moments = {store_at(start + HOLD_S * f) for f in (0.0, 0.1, 0.5, 0.9, 0.98)}
    assert len(moments) == 1
    assert store_at(start + HOLD_S * 1.0) > moments.pop()  # the next window: the next moment


async def test_a_message_already_read_is_taken_even_past_the_deadline():
    messages: asyncio.Queue[object] = asyncio.Queue()
    messages.put_nowait("frame")
    assert await next_message(messages, asyncio.get_running_loop().time() - 1) == "frame"


async def test_no_message_by_the_deadline_is_a_timeout_and_loses_no_later_message():
    messages: asyncio.Queue[object] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await next_message(messages, loop.time() + 0.02)
    messages.put_nowait("late")  # the timed-out wait took nothing away
    assert await next_message(messages, loop.time() + 1) == "late"


async def test_a_message_arriving_while_waiting_is_returned():
    messages: asyncio.Queue[object] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, messages.put_nowait, "frame")
    assert await next_message(messages, loop.time() + 1) == "frame"


def test_the_hold_stays_within_the_status_lag_budget():
    assert streaming.HOLD_S <= 0.1  # the lag's p99 budget is 250 ms (bench capacity)
