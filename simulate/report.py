"""The summary of a run: a row per call (what it said, what the network did, where it ended,
its transcript and sentiment, and the time from its last packet to its final state), then totals.

The time to final is the server's `finished_at` minus the moment our last packet went out: the
same clock on loopback, and free of how often we polled.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from rich.table import Table

from simulate.run import CallResult, RunResult

MAX_ROWS = 100  # beyond this the calls that went wrong are shown first, the rest counted
EXCERPT_CHARS = 48


def n_calls(count: int) -> str:
    return f"{count} call" if count == 1 else f"{count} calls"


def seconds_to_final(call: CallResult) -> float | None:
    record, sent = call.seen.record, call.sent
    if not call.seen.final or record is None or sent is None or sent.last_packet_at is None:
        return None
    finished = record.get("finished_at")
    if not isinstance(finished, str):
        return None
    return datetime.fromisoformat(finished).timestamp() - sent.last_packet_at


def counters_match(call: CallResult) -> bool | None:
    """Whether the server counted exactly the faults we sent (None: the call was not all sent)."""
    record, schedule = call.seen.record, call.plan.schedule
    if record is None or call.sent is None or not call.sent.completed:
        return None
    expected = {
        # A PBX feed's call has two tracks of frame_count frames each.
        "packets_received": call.plan.frame_count * call.plan.parties - len(schedule.lost),
        "missing_count": len(schedule.lost),
        "out_of_order_packets": len(schedule.reordered),
        "duplicate_packets": len(schedule.duplicated),
    }
    return all(record.get(name) == value for name, value in expected.items())


def exit_code(result: RunResult) -> int:
    """0 when every call reached ARCHIVED or FAILED, 1 otherwise."""
    return 0 if all(call.seen.final for call in result.calls) else 1


def _state(call: CallResult) -> str:
    if call.sent is not None and call.sent.error:
        return f"[red]not sent[/]: {call.sent.error}"
    state = call.seen.state or "unknown"
    colour = {"ARCHIVED": "green", "FAILED": "red"}.get(state, "yellow")
    note = "" if call.seen.final else " (not final)"
    error = call.seen.error or (call.seen.record or {}).get("last_error")
    reason = f": {error}" if error and state != "ARCHIVED" else ""
    return f"[{colour}]{state}[/]{note}{reason}"


def _sentiment(record: dict[str, Any] | None) -> str:
    sentiment = (record or {}).get("sentiment")
    if not isinstance(sentiment, dict):
        return "-"
    return f"{sentiment.get('label')} {float(sentiment.get('score', 0)):+.2f}"


def _label(record: dict[str, Any] | None) -> str | None:
    sentiment = (record or {}).get("sentiment")
    return str(sentiment.get("label")) if isinstance(sentiment, dict) else None


def _excerpt(record: dict[str, Any] | None) -> str:
    transcript = (record or {}).get("transcript")
    if not transcript:
        return "-"
    text = str(transcript)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def summary_table(result: RunResult) -> Table:
    table = Table(title="Simulated calls")
    for column in ("call", "via", "said", "sent", "lost/late/dup"):
        table.add_column(column, no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("transcript", no_wrap=True, overflow="ellipsis", max_width=EXCERPT_CHARS)
    table.add_column("sentiment", no_wrap=True)
    table.add_column("to final", justify="right", no_wrap=True)
    # The calls that went wrong first, so a long run still shows them.
    calls = sorted(result.calls, key=lambda call: call.seen.state == "ARCHIVED")
    for call in calls[:MAX_ROWS]:
        schedule = call.plan.schedule
        took = seconds_to_final(call)
        table.add_row(
            call.plan.call_id,
            call.plan.transport,
            call.plan.mood,
            str(len(schedule.deliveries)),
            f"{len(schedule.lost)}/{len(schedule.reordered)}/{len(schedule.duplicated)}",
            _state(call),
            _excerpt(call.seen.record),
            _sentiment(call.seen.record),
            "-" if took is None else f"{took:.2f}s",
        )
    if len(calls) > MAX_ROWS:
        table.caption = f"{len(calls) - MAX_ROWS} more calls not shown (all ARCHIVED)"
    return table


def totals(result: RunResult) -> list[str]:
    """The run in a few lines: where the calls ended, how long they took, what agreed."""
    calls = result.calls
    states: dict[str, int] = {}
    for call in calls:
        state = call.seen.state if call.seen.final else "not final"
        states[state or "not final"] = states.get(state or "not final", 0) + 1
    ended = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    lines = [f"{n_calls(len(result.calls))}: {ended}"]
    archived = [call for call in calls if call.seen.state == "ARCHIVED"]
    times = sorted(t for t in map(seconds_to_final, archived) if t is not None)
    if times:
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        lines.append(
            f"last packet → ARCHIVED: median {statistics.median(times):.2f}s, "
            f"p95 {p95:.2f}s, max {times[-1]:.2f}s"
        )
    audio_s = sum(call.plan.audio_s for call in calls)
    deliveries = sum(len(call.plan.schedule.deliveries) for call in calls)
    lines.append(
        f"sent {deliveries} frames ({audio_s:.1f}s of audio) in {result.sending_s:.1f}s, "
        f"then waited {result.waited_s:.1f}s" + (" (timed out)" if result.timed_out else "")
    )
    sending = sum(call.sent.requests for call in calls if call.sent is not None)
    retried = sum(call.sent.retries for call in calls if call.sent is not None)
    reading = sum(call.seen.requests for call in calls)
    lines.append(
        f"requests: {sending} to send (WebSocket: one a call), {retried} of them repeated "
        f"after 429/503; {reading} to follow the calls"
    )
    matched = [counters_match(call) for call in calls]
    checked = [m for m in matched if m is not None]
    if checked:
        lines.append(
            f"server counted exactly the losses, reorders and duplicates sent: "
            f"{sum(checked)} of {n_calls(len(checked))}"
        )
    labels = [(_label(call.seen.record), call.plan.mood) for call in archived]
    scored = [(label, mood) for label, mood in labels if label is not None]
    if scored:
        agree = sum(1 for label, mood in scored if label == mood)
        lines.append(f"sentiment agrees with what was said: {agree} of {n_calls(len(scored))}")
    return lines
