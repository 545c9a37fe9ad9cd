"""The Redis Cluster section of BENCHMARKS.md, from bench/cluster.py's figures.

Laid out as the live feed's (bench/fanout_report.py): the heading, then a start marker, and an
end marker; `write` replaces exactly that span, or appends the section at the end of the file.
The marker sits after the heading because the other benchmarks find sections by heading."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADING = "## Redis Cluster: ingestion on 3 masters against one Redis"
START, END = "<!-- cluster -->", "<!-- /cluster -->"
TARGET = 0.85  # issue #12: the cluster within 15% of the single Redis
NAMES = {"single": "one Redis", "cluster": "Redis Cluster, 3 masters"}


def command_medians(rounds: list[dict[str, Any]], topology: str) -> dict[str, float]:
    """Median per round of each command's calls per packet (0 in a round without it)."""
    mine = [r["by_command_per_packet"] for r in rounds if r["topology"] == topology]
    names = sorted({c for r in mine for c in r}, key=lambda c: -sum(r.get(c, 0) for r in mine))
    return {c: statistics.median(r.get(c, 0.0) for r in mine) for c in names}


def _ingestion_rows(figures: dict[str, Any]) -> list[str]:
    med = figures["medians"]
    base = med["single"]["packets_per_s"]
    rows = [
        "| Redis | packets/s | / one Redis | p50 ms | p99 ms | API CPU µs per packet"
        " | Redis CPU µs per packet (all servers) | Redis commands per packet"
        " | socket reads per packet (request batches) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        rows.append(
            f"| {NAMES[name]} | {m['packets_per_s']:,.0f} | {m['packets_per_s'] / base:.2f} |"
            f" {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['api_cpu_us_per_packet']:.0f} |"
            f" {m['redis_cpu_us_per_packet']:.0f} | {m['commands_per_packet']:.3f} |"
            f" {m['reads_per_packet']:.3f} |"
        )
    return rows


def _command_rows(figures: dict[str, Any]) -> list[str]:
    per = {name: command_medians(figures["rounds"], name) for name in figures["medians"]}
    names = list(dict.fromkeys(c for cmds in per.values() for c in cmds))
    rows = [
        "| command | " + " | ".join(NAMES[n] for n in per) + " |",
        "|---|" + "---:|" * len(per),
    ]
    for c in names:
        rows.append(f"| {c} | " + " | ".join(f"{per[n].get(c, 0.0):.3f}" for n in per) + " |")
    return rows


def _round_rows(figures: dict[str, Any]) -> list[str]:
    return [
        f"- round {i // len(figures['medians']) + 1}, {NAMES[r['topology']]}:"
        f" {r['packets_per_s']:,.0f} packets/s, API {r['api_cpu_us_per_packet']:.0f} µs/packet,"
        f" Redis {r['redis_cpu_us_per_packet']:.0f} µs/packet, errors {r['errors']},"
        f" statuses {r['statuses']}"
        for i, r in enumerate(figures["rounds"])
    ]


def _drain_rows(figures: dict[str, Any]) -> list[str]:
    if "drains" not in figures:
        return []
    plan = figures["plan"]
    rows = [
        "",
        "### Worker drain",
        "",
        f"bench/backhalf.py's drain: {plan['drain_calls']} calls of {plan['drain_packets']}"
        f" packets completed at once, instant AI, {plan['drain_workers']} worker(s) with the"
        " topology's REDIS_URL and QUEUE_REDIS_URL, alternated, "
        f"{plan['drain_rounds']} rounds; medians (per round: "
        + ", ".join(f"{d['topology']} {d['calls_per_s']:.0f}/s" for d in figures["drains"])
        + ").",
        "",
        "| Redis | calls/s | worker CPU ms per call |",
        "|---|---:|---:|",
    ]
    for name, m in figures["drain_medians"].items():
        rows.append(f"| {NAMES[name]} | {m['calls_per_s']:.0f} | {m['cpu_ms_per_call']:.2f} |")
    return rows


def section(figures: dict[str, Any], command: str) -> list[str]:
    plan = figures["plan"]
    med = figures["medians"]
    ratio = med["cluster"]["packets_per_s"] / med["single"]["packets_per_s"]
    cpu_ratio = med["cluster"]["api_cpu_us_per_packet"] / med["single"]["api_cpu_us_per_packet"]
    verdict = "**met**" if ratio >= TARGET else f"**missed** by {(TARGET - ratio) / TARGET:.0%}"
    return [
        HEADING,
        START,
        "",
        f"Command: `{command}` (part of `make bench`). Two API deployments as `make run` starts"
        f" one ({plan['api_processes']} uvicorn processes, WEB_CONCURRENCY, devstack/commands.py's"
        " flags), alike but for REDIS_URL: one embedded Redis, or an EmbeddedRedisCluster"
        f" (devstack/cluster.py) of {plan['masters']} masters and no replica"
        " (`redis+cluster://...`, QUEUE_REDIS_URL on the single Redis). No replica because the"
        " single Redis has none either, and a replica here would be one more process on the same"
        " cores. Every Redis with AOF everysec; PostgreSQL with fsync off."
        f" Single-packet ingestion (bench/load.py: {plan['calls']} concurrent calls,"
        f" {plan['connections']} keep-alive connections, closed loop, {plan['seconds']:g} s),"
        f" the two alternated for {plan['rounds']} rounds; medians. CPU from psutil on the API"
        " processes (the uvicorn parent and its workers) and the Redis servers; Redis counts from"
        " INFO commandstats and INFO stats (`total_reads_processed`), summed over the servers,"
        " our own INFO calls left out. Load average before the run"
        f" {figures['loadavg_start']}, after {figures['loadavg_end']} (2 cores shared with"
        " other engineers' work).",
        "",
        *_ingestion_rows(figures),
        "",
        f"- Target (issue #12): the cluster's packets/s at least {TARGET:.2f} x one Redis's:"
        f" {ratio:.2f}, {verdict}. API CPU per packet, cluster / one Redis: {cpu_ratio:.2f}.",
        "",
        "Redis commands per packet, by command (median of the rounds; at least 0.001):",
        "",
        *_command_rows(figures),
        "",
        "Every round:",
        "",
        *_round_rows(figures),
        *_drain_rows(figures),
        "",
        *READING,
        "",
        END,
    ]


# Written by hand from the figures of the run that wrote this section; re-read when they move.
READING: list[str] = []


def write(lines: list[str]) -> Path:
    """Replace this section (heading to end marker) in BENCHMARKS.md, or append it."""
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    body = "\n".join(lines).rstrip("\n") + "\n"
    start, end = text.find(HEADING + "\n" + START), text.find(END)
    if start >= 0 and end > start:
        rest = text[end + len(END) :].lstrip("\n")
        text = text[:start] + body + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    REPORT.write_text(text)
    return REPORT
