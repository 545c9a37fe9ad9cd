"""The live feed's section of BENCHMARKS.md, from bench/fanout.py's figures.

The section opens with its heading, then a start marker, and ends with an end marker; `write`
replaces exactly that span, or appends the section at the end of the file. The start marker sits
after the heading, not before it, because the other benchmarks rewrite their own sections by
heading ("\\n## "): a marker above ours would be taken as the tail of theirs and dropped."""

from __future__ import annotations

import os
from typing import Any

from bench.sections import ratio
from service.feed import READ_BLOCK_MS

HEADING = "## Live event feed: fan-out to 500 subscribers"
CONFIG_NAMES = {
    "none": "no subscriber",
    "filtered": "500 subscribers, filter matches nothing (`?call_id=` of no call)",
    "all": "500 subscribers taking every event",
}


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _delivery_rows(steps: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| published events/s | deliveries/s | every subscriber got every event once"
        " | latency p50 / p99 ms | API CPU ms per 1,000 deliveries | API: share of a core used"
        " / ready but waiting for one | kernel's part of the API's CPU | XREAD per event"
        " | XRANGE calls | load processes' share of a core |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        complete = "yes" if s["complete"] else (
            f"**no**: {s['short_subscribers']} short, {s['duplicated_subscribers']} duplicated"
        )  # fmt: skip
        if s["complete"] and not s["sustained"]:
            complete += f", late (the last {s['drain_s']:.1f} s after the last publish)"
        clients = " / ".join(f"{c:.0%}" for c in s["client_cpu_share"])
        rows.append(
            f"| {s['rate']:g} | {s['delivered_per_s']:,.0f} | {complete} |"
            f" {_ms(s['latency_p50_ms'])} / {_ms(s['latency_p99_ms'])} |"
            f" {s['api_cpu_ms_per_1k']:.0f} | {s['api_cpu_share']:.0%} /"
            f" {s['api_wait_share']:.0%} | {s['api_system_share']:.0%} |"
            f" {s['xread_per_event']:.2f} | {s['xrange_calls']} | {clients} |"
        )
    return rows


def batched_us_per_delivery(ing: dict[str, Any]) -> float:
    """API CPU per delivery while ingestion fed the feed: each round's CPU with every event
    taken, less what its packets cost with no subscriber, over its deliveries; median."""
    per_packet = ing["medians"]["none"]["cpu_us_per_packet_all"] / 1e6
    values = [
        (r["api_cpu_s"] - r["packets"] * per_packet) / r["deliveries"] * 1e6
        for r in ing["rounds"]
        if r["config"] == "all" and r["deliveries"]
    ]
    return _median(values)


def _ingestion_rows(ing: dict[str, Any]) -> list[str]:
    med = ing["medians"]
    base = med["none"]
    rows = [
        "| subscribers | packets/s | / none | API CPU µs per packet, during the load"
        " | API CPU µs per packet, until the feed delivered it all | per-round events"
        " written / deliveries |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for config, name in CONFIG_NAMES.items():
        m = med[config]
        rounds = [r for r in ing["rounds"] if r["config"] == config]
        counts = ", ".join(f"{r['events']:,} / {r['deliveries']:,}" for r in rounds)
        rows.append(
            f"| {name} | {m['packets_per_s']:,.0f} |"
            f" {ratio(m['packets_per_s'], base['packets_per_s']):.2f} |"
            f" {m['cpu_us_per_packet_loop']:,.0f} | {m['cpu_us_per_packet_all']:,.0f} |"
            f" {counts} |"
        )
    return rows


def section(figures: dict[str, Any], command: str) -> list[str]:
    plan, d, ing = figures["plan"], figures["delivery"], figures["ingestion"]
    steps = d["steps"]
    busiest = max(steps, key=lambda s: s["delivered_per_s"])
    trickle = _median([s["api_cpu_ms_per_1k"] for s in steps if s["rate"] <= 2])
    us_per_delivery = busiest["api_cpu_ms_per_1k"]  # ms per 1,000 = µs each
    per_core = ratio(1e6, us_per_delivery)
    batched = batched_us_per_delivery(ing)
    med = ing["medians"]
    none, filtered, every = (med[c]["packets_per_s"] for c in ("none", "filtered", "all"))
    lines = [
        HEADING,
        "",
        f"Command: `{command}` (part of `make bench`). One API process as `make run` starts each"
        " (uvicorn with devstack/commands.py's UVICORN_FLAGS), embedded Redis and PostgreSQL;"
        f" {plan['subscribers']} subscribers of `GET /v1/events` spread over {plan['clients']}"
        " load processes (bench/fanout_client.py: a bare asyncio Protocol per connection that"
        " sends the request and counts the `id:` lines; every"
        f" {plan['latency_every']}th also reads each event's `at`). Everything shares the"
        f" machine's cores; load average {figures['loadavg_start']} before the run,"
        f" {figures['loadavg_end']} after (other engineers' work included).",
        "",
        "### Delivery",
        "",
        "Progress events (about 230 bytes each on the wire) appended straight to the feed with"
        " `EventLog.publish` from the bench process, due at i/rate and sent every 5 ms in one"
        f" round trip, {plan['step_s']:g} s per rate; the rates rise until one is not sustained,"
        f" then bisect. Deliveries/s are counted from {plan['warmup_s']:g} s into the step to its"
        " last publish; latency is the event's `at` (the publisher's clock) to its arrival;"
        " CPU and Redis calls cover the step and its drain. Sustained = every subscriber got"
        f" every event exactly once, with p99 latency under {figures['latency_limit_ms']:.0f} ms.",
        "",
        *_delivery_rows(steps),
        "",
        f"- Sustained: **{d['sustained_rate']:g} events/s to {plan['subscribers']} subscribers"
        f" ({d['sustained_rate'] * plan['subscribers']:,.0f} deliveries/s)**; the most"
        f" delivered in a window: {d['peak_delivered_per_s']:,.0f}/s.",
        f"- API CPU per delivery: {trickle:.0f} µs at 1-2 events/s, {us_per_delivery:.0f} µs at"
        f" {busiest['rate']:g} events/s (the busiest step), so a core"
        f" of its own would make about {per_core:,.0f} deliveries/s, i.e."
        f" {per_core / plan['subscribers']:,.0f} events/s to {plan['subscribers']} subscribers;"
        f" {batched:.0f} µs per delivery while ingestion fed it (events by the hundred, see"
        f" below: about {ratio(1e6, batched) / plan['subscribers']:,.0f} events/s to"
        f" {plan['subscribers']} subscribers per core).",
        f"- {plan['subscribers']} subscribers connected, nothing published for"
        f" {plan['idle_s']:g} s: the API used {d['idle']['api_cpu_share']:.1%} of a core"
        " (heartbeat comments, the reader's empty XREADs).",
        "",
        "### Cost to ingestion",
        "",
        "Single-packet ingestion as the ingestion suite drives it (bench/load.py: "
        f"{plan['ingest_calls']} concurrent calls x {plan['ingest_packets']} packets,"
        f" {plan['ingest_connections']} keep-alive connections, closed loop, at most"
        f" {plan['ingest_s']:g} s) with progress events on (one per live call per second, plus"
        " each call's IN_PROGRESS), against the same API process, the three set-ups alternated"
        f" for {plan['ingest_rounds']} rounds; medians. The feed's reader runs in all three (it"
        " starts with the app).",
        "",
        *_ingestion_rows(ing),
        "",
        f"- 500 subscribers that take nothing: {ratio(filtered, none):.2f} x the throughput with"
        f" none; 500 taking every event: {ratio(every, none):.2f} x, and"
        f" {ratio(*(med[c]['cpu_us_per_packet_all'] for c in ('all', 'none'))):.0f} x"
        " the API CPU per packet once the feed's deliveries are counted.",
        "",
        *reading(figures, trickle, batched),
        "",
        "",
    ]
    return lines


# Measured apart from the benchmark on this machine (2026-11-30, timing loops over the same code):
# what one hand-out costs. Re-measure it when service/feed.py changes.
MATCH_500_US = 145  # FeedHub._hand_out of one event to 500 subscribers whose filter refuses it
# The same benchmark before the feed encoded each event once per process and wrote what is ready
# to a subscriber in one chunk (commit f9b381a): kept to show what that change did.
BEFORE_BATCHING = (
    "10 events/s sustained to 500 subscribers (5,000 deliveries/s), 82-160 µs of API CPU per"
    " delivery, and ingestion at 0.02 x its throughput with 500 subscribers taking every event"
)


def reading(figures: dict[str, Any], trickle: float, batched: float) -> list[str]:
    """The honest reading: what the figures say, and what bounds them."""
    steps, ing = figures["delivery"]["steps"], figures["ingestion"]
    med = ing["medians"]
    n = figures["plan"]["subscribers"]
    xread = max(s["xread_per_event"] for s in steps)
    xrange = sum(s["xrange_calls"] for s in steps)
    kernel = _median([s["api_system_share"] for s in steps])
    waits = [s["api_wait_share"] for s in steps] + [r["api_wait_share_loop"] for r in ing["rounds"]]
    none_rounds = [r for r in ing["rounds"] if r["config"] == "none"]
    per_packet = med["none"]["cpu_us_per_packet_loop"]
    filtered_cpu = ratio(med["filtered"]["cpu_us_per_packet_loop"], per_packet) - 1
    # What refusing every event must cost: the hub's test of each event against each subscriber.
    events_per_packet = ratio(
        sum(r["events"] for r in none_rounds), sum(r["packets"] for r in none_rounds)
    )
    matching = MATCH_500_US * n / 500 * events_per_packet
    every = ratio(med["all"]["packets_per_s"], med["none"]["packets_per_s"])
    events_per_s = ratio(
        sum(r["events"] for r in none_rounds), figures["plan"]["ingest_s"] * len(none_rounds)
    )
    return [
        "Reading:",
        "",
        f"- One reader per process works as meant: at most {xread:.2f} XREAD per published event"
        f" with {n} subscribers (one per event while they come one at a time, fewer once they"
        f" queue up, plus an empty one per {READ_BLOCK_MS / 1000:g} s of quiet), and"
        f" {xrange} XRANGE over the whole ramp: a subscriber costs no Redis round trip.",
        f"- The cost is the API's CPU, per subscriber and per event: {trickle:.0f} µs a"
        f" delivery when events trickle in, {batched:.0f} µs when they come by the hundred"
        f" ({kernel:.0%} of it in the kernel). Each event is encoded once per process and what"
        " is ready for a subscriber goes out in one write, so the cost per delivery falls as"
        " events come faster: a trickle pays a task wake-up and a socket write per event per"
        " subscriber. Fan-out is serial in one event loop, so an event reaches the last of"
        f" {n} subscribers up to {n * trickle / 1000:.0f} ms of CPU after the first: that, not"
        f" Redis, is the latency at 1-2 events/s. Before batching: {BEFORE_BATCHING}.",
        f"- The machine: load average {figures['loadavg_start']} on {os.cpu_count()} cores; the API"
        f" was ready to run but waiting for a core {min(waits):.0%}-{max(waits):.0%} of the"
        " time. The wall-clock figures (deliveries/s, the sustained rate, packets/s) are what it"
        " got of a shared machine; the CPU per delivery and per packet are the ones to compare.",
        f"- Cost to ingestion: {n} subscribers whose filter refuses every event changed the API"
        f" CPU per packet by {filtered_cpu:+.0%} in this run (earlier runs: +35%, +44%, -11%:"
        " the machine's noise is larger than the effect). What they must cost:"
        f" the hub tests every event against every subscriber in Python, {MATCH_500_US} µs an"
        f" event for 500 (measured apart), here {events_per_packet:.2f} events a packet: about"
        f" {matching:.0f} µs a packet, {ratio(matching, per_packet):.0%}."
        f" {n} subscribers taking every event leave ingestion {every:.0%} of"
        f" its throughput: {figures['plan']['ingest_calls']} live calls write about"
        f" {events_per_s:,.0f} events/s (their progress, and each call's IN_PROGRESS at its"
        f" first packet), i.e. {events_per_s * n:,.0f} deliveries/s wanted against"
        f" {ratio(1e6, batched):,.0f} a core can make, and the deliveries share the event loop with"
        " the packets, with no priority for the packets. Hundreds of unfiltered subscribers"
        " belong on API processes of their own (route /v1/events, /ws/supervisor and"
        " /dashboard there), not on the ones that ingest a busy call centre.",
        "- What would move these figures further: index filtered subscribers by call id (the"
        " hand-out tests every subscriber's filter in Python), and a cap on deliveries per"
        " second per process.",
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")
