"""bench/live_transcripts: the feed is read until it has told every ended call's final state."""

from __future__ import annotations

import asyncio
import time

from bench.live_transcripts import Feed


async def _tell_final(feed: Feed, call_id: str, after_s: float) -> None:
    await asyncio.sleep(after_s)
    async with feed.told:
        feed.finished.add(call_id)
        feed.told.notify_all()


async def test_the_wait_ends_when_the_feed_has_told_every_call_final() -> None:
    feed = Feed()
    tellers = [asyncio.create_task(_tell_final(feed, c, 0.1 * n)) for n, c in enumerate("ab", 1)]

    started = time.monotonic()
    await feed.told_final({"a", "b"}, timeout_s=10)

    assert feed.finished == {"a", "b"}
    assert time.monotonic() - started < 5  # ended by the events, not by the timeout
    await asyncio.gather(*tellers)


async def test_a_final_state_the_feed_never_tells_is_waited_for_only_until_the_timeout() -> None:
    feed = Feed()
    await _tell_final(feed, "a", 0)

    started = time.monotonic()
    await feed.told_final({"a", "never-told"}, timeout_s=0.2)

    assert time.monotonic() - started >= 0.2
    assert feed.finished == {"a"}


async def test_no_call_ended_means_no_wait() -> None:
    await asyncio.wait_for(Feed().told_final(set(), timeout_s=10), 1)
