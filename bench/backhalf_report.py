"""The back half's section of BENCHMARKS.md: targets, figures measured in one run, verdicts."""

from __future__ import annotations

from typing import Any

from bench.sections import machine
from bench.suite import command

HEADING = "## The back half: worker, drain, burst, open loop while draining"
# "Today" in the issue that set the targets (#8), measured before Redis 8.2 and PostgreSQL 18.
ISSUE_CPU_MS, ISSUE_RATE = 40.0, 20.0


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _drain(figures: dict[str, Any], workers: int) -> dict[str, Any] | None:
    return next((d for d in figures.get("drain", []) if d["workers"] == workers), None)


def section(figures: dict[str, Any]) -> list[str]:
    new1, new2 = _drain(figures, 1), _drain(figures, 2)
    lines = [
        HEADING,
        "",
        f"Command: `{command('backhalf')}` (part of `make bench`). One run on {machine()},",
        "shared by the load generator, the API, the workers, Redis and PostgreSQL with fsync off.",
        "Instant AI: latency 0, no failures. Until issue 23 this section also measured the worker",
        "of before issue 8 (commit `7f4a9cd`) as a baseline; that code needs the `packet` table,",
        "which migration 0003 dropped, so its figures are only in the earlier runs' (folded below",
        "when this section was last rewritten, and in git history).",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    if new1:
        lines.append(
            f"| worker CPU per call (10 packets, instant AI) <= 4 ms | "
            f"{new1['cpu_ms_per_call']:.2f} ms | {_verdict(new1['cpu_ms_per_call'] <= 4)} |"
        )
    if new2:
        lines.append(
            f"| drain with an instant AI >= 200 calls/s with make run's layout (2 API processes,"
            f" 2 workers here) | {new2['calls_per_s']:.0f} calls/s | "
            f"{_verdict(new2['calls_per_s'] >= 200)} |"
        )
    for burst in figures.get("burst", []):
        lines.append(
            f"| {burst['calls']} calls completed at once, default mock (1-3 s, 25% "
            f"failures), all final within 1.5x the slowest call's own AI time | "
            f"{burst['finished']}/{burst['calls']} in {burst['seconds']:.1f} s; slowest own AI "
            f"time {burst['slowest_own_ai_s']:.1f} s (x{burst['ratio_to_slowest']:.2f}) | "
            f"{_verdict(not burst['capped'] and burst['ratio_to_slowest'] <= 1.5)} |"
        )
    ol = figures.get("open_loop", {})
    if "api_draining" in ol:
        d = ol["api_draining"]
        lines.append(
            f"| open-loop ingestion p99 < 10 ms at 1,000 requests/s, 500 live calls, workers "
            f"draining them | p99 {d['p99_ms']:.2f} ms (p50 {d['p50_ms']:.2f}) | "
            f"{_verdict(d['p99_ms'] < 10)} |"
        )
    lines += [
        "",
        "What bounds the worker (py-spy of one worker during the drain, as profiled for issue 8):",
        "a call now costs the worker three",
        "PostgreSQL statements (the flush with its claim, the transcript, the final state), four",
        "Redis round trips of ours and arq's own per job (its run and its finish; the claim is one",
        "script per poll), and about a fifth of its samples are the event loop itself; the rest is",
        "spread over asyncpg's execute, redis-py's command packing and parsing, and arq's run_job,",
        "with no single piece of our code above 3%. Next steps: batch the final statements of",
        "calls that finish together; a queue cheaper than arq's round trips per job. Against the",
        f"figures issue 8 was filed with ({ISSUE_CPU_MS:.0f} ms of CPU per call,"
        f" {ISSUE_RATE:.0f} calls/s)"
        + (
            f": against those, {ISSUE_CPU_MS / new1['cpu_ms_per_call']:.0f}x less CPU and "
            f"{new2['calls_per_s'] / ISSUE_RATE:.0f}x the drain."
            if new1 and new2
            else "."
        ),
        "",
        "Every drain (completion to ARCHIVED or FAILED; the stages are wall time summed over the",
        "calls in flight, waiting included, so they show shares, not CPU):",
        "",
    ]
    lines += [
        "| run | calls/s | CPU per call | completion -> final p50 / p99 | time by stage |",
        "|---|---:|---:|---:|---|",
    ]
    for d in figures.get("drain", []):
        who = "Callstream"
        stages = ", ".join(f"{k} {v:.0%}" for k, v in d["stage_share"].items()) or "(not logged)"
        lines.append(
            f"| {who}, {d['workers']} worker(s) | {d['calls_per_s']:.0f} | "
            f"{d['cpu_ms_per_call']:.2f} ms | {d['completion_to_final_p50_s']:.2f} s / "
            f"{d['completion_to_final_p99_s']:.2f} s | {stages} |"
        )
    if ol:
        lines += ["", "Open loop, 1,000 requests/s over 500 live calls (one connection each):", ""]
        lines += ["| server | p50 | p99 | max |", "|---|---:|---:|---:|"]
        for name, r in ol.items():
            lines.append(
                f"| {name.replace('_', ' ')} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                f"{r['max_ms']:.1f} ms |"
            )
    if sc := figures.get("scale"):
        lines += [
            "",
            f"From 1 to 2 processes: single-packet ingestion {sc['api_x1']['rate']:.0f} -> "
            f"{sc['api_x2']['rate']:.0f} packets/s (x{sc['ratio']:.2f}); the drain "
            + (
                f"{new1['calls_per_s']:.0f} -> {new2['calls_per_s']:.0f} calls/s "
                f"(x{new2['calls_per_s'] / new1['calls_per_s']:.2f})"
                if new1 and new2
                else "(not measured)"
            )
            + ". Two cores are shared by everything here, so a second process of each adds less"
            " than a second machine would.",
        ]
    return [*lines, ""]
