"""BENCHMARKS.md's "Real-time capacity" section, rendered from bench/capacity.py's figures (and
those of a run against another tree just before it, when given)."""

from __future__ import annotations

from typing import Any

from bench.real_calls_report import ms

HEADING = "## Real-time capacity"
Figures = dict[str, Any]
GROUPS = ("api", "workers", "redis", "postgres")
STACK_TARGET_S = 0.30  # the stack's CPU per call-minute (issue 27)


def stack_s(step: Figures) -> float:
    """The stack's CPU seconds per call-minute (the client aside)."""
    cpu: dict[str, float] = step["cpu_ms_per_call_minute"]
    return sum(cpu[g] for g in GROUPS) / 1000


def over_client(step: Figures) -> float | None:
    """The stack's CPU over the bench client's: the client does the same work in every run of a
    step's size, so on a machine whose speed drifts between runs (10-25% here) this is the
    figure to compare runs by, where the seconds move with the machine."""
    client: float = step["cpu_ms_per_call_minute"]["client"]
    return stack_s(step) * 1000 / client if client else None


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} µs"


def one_line(step: Figures) -> str:
    cpu = step["cpu_ms_per_call_minute"]
    parts = ", ".join(f"{g} {cpu[g] / 1000:.3f}" for g in GROUPS)
    return (
        f"  {step['calls']} calls: stack {stack_s(step):.3f} s/call-min ({parts}; client "
        f"{cpu['client'] / 1000:.3f}; stack / client {_x(over_client(step))}), API "
        f"{_us(step['api_us_per_frame'])}/frame; status lag "
        f"p99 {ms(step['status_lag_p99_ms'])}, Redis lag p99 {ms(step['lag_p99_ms'])}; lost "
        f"{step['lost_frames']}; slip p99 {ms(step['pace_slip_p99_ms'])}: "
        + ("holds" if step["holds"] else "does not hold: " + "; ".join(step["why_not"]))
    )


def section(f: Figures, before: Figures | None, command: str) -> list[str]:
    m = f["meta"]
    plan = m["plan"]
    out = [
        HEADING,
        "",
        f"`{command}` on {m['started_at']}: {m['machine']}, load average {m['loadavg_start']} at "
        f"the start and {m.get('loadavg_end', '?')} at the end (the machine is shared). The tree "
        f"at `{m['commit']}` ({m['subject']}). Layout: {m['layout']}; mock AI made instant. "
        f"Each step: N two-track calls of {plan['ramp_s']:g} s of real speech ({m['speech']}) "
        f"at real-time pace over WS /v1/call/media (both tracks every 20 ms), their starts "
        f"spread over {plan['stagger_s']:g} s, from empty stores; the client (one process, "
        "uvloop) shares the cores with the stack.",
        "",
        "A step holds when every frame is counted by the final status and every call is "
        "ARCHIVED, the status lag p99 is at most 250 ms (a frame's age, from when the client "
        "handed it to its socket to when GET /v1/calls/{id} counting it answered; the Redis lag "
        "reads the count straight from Redis), and the client kept its schedule (slip p99 at "
        "most 100 ms: past that the client, short of CPU, no longer offers real-time load). CPU: "
        "user + system seconds of each group's processes over the step, children included "
        "(bench/cpu.py), per call-minute (a minute of one two-track call: 6,000 frames, 3,000 "
        "a track; 'API / frame' is the API's CPU over them). 'stack / client': the stack's CPU "
        "over the bench client's, which does the same work in every run of a step's size: "
        "where this machine's speed drifts between runs, the figure to compare them by.",
        "",
        *steps_table(f["steps"]),
        "",
        f"Most calls held: **{f['most_calls_held']}**.",
        "",
    ]
    if before is not None:
        out += comparison(f, before)
    return out


def steps_table(steps: list[Figures]) -> list[str]:
    lines = [
        "| calls | load avg | stack CPU / call-min | API | workers | Redis | PostgreSQL | client "
        "| stack / client | API / frame | status lag p50 / p99 | Redis lag p99 | lost "
        "| slip p99 | holds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in steps:
        cpu = st["cpu_ms_per_call_minute"]
        cells = " | ".join(_s(cpu[g] / 1000) for g in (*GROUPS, "client"))
        lines.append(
            f"| {st['calls']} | {st.get('loadavg', '')} | **{_s(stack_s(st))}** | {cells} | "
            f"{_x(over_client(st))} | {_us(st['api_us_per_frame'])} | "
            f"{ms(st['status_lag_p50_ms'])} / "
            f"{ms(st['status_lag_p99_ms'])} | {ms(st['lag_p99_ms'])} | "
            f"{st['lost_frames']:,} of {st['frames_sent']:,} | {ms(st['pace_slip_p99_ms'])} | "
            + ("yes" if st["holds"] else "no: " + "; ".join(st["why_not"]))
            + " |"
        )
    return lines


def comparison(after: Figures, before: Figures) -> list[str]:
    """This run's steps against the other tree's steps of the same size."""
    m = before["meta"]
    old = {st["calls"]: st for st in before["steps"]}
    lines = [
        f"Before: the same suite against `{m['commit']}` ({m['subject']}) at `{m['tree']}`, "
        f"started {m['started_at']}, load average {m['loadavg_start']}; most calls held "
        f"{before['most_calls_held']}.",
        "",
        *steps_table(before["steps"]),
        "",
        "After / before, steps of the same size (a step where either run lost frames or left "
        "calls unfinished did not do the same work: its CPU is not comparable, and is left out):",
        "",
        "| calls | stack CPU / call-min | API | workers | Redis | PostgreSQL | stack / client "
        "| API / frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in after["steps"]:
        was = old.get(st["calls"])
        if was is None:
            continue
        if not (_complete(st) and _complete(was)):
            lines.append(f"| {st['calls']} | not comparable | | | | | | |")
            continue
        now_cpu, was_cpu = st["cpu_ms_per_call_minute"], was["cpu_ms_per_call_minute"]
        cells = " | ".join(
            f"{now_cpu[g] / 1000:.3f} / {was_cpu[g] / 1000:.3f} s "
            f"({_ratio(now_cpu[g], was_cpu[g])})"
            for g in GROUPS
        )
        lines.append(
            f"| {st['calls']} | **{stack_s(st):.3f} / {stack_s(was):.3f} s "
            f"({_ratio(stack_s(st), stack_s(was))})** | {cells} | "
            f"{_x(over_client(st))} / {_x(over_client(was))} | "
            f"{_us(st['api_us_per_frame'])} / {_us(was['api_us_per_frame'])} |"
        )
    return [*lines, ""]


def _complete(step: Figures) -> bool:
    """Every frame stored and every call ARCHIVED: the step did all of its work."""
    return bool(step["lost_frames"] == 0 and step["states"] == {"ARCHIVED": step["calls"]})


def _ratio(now: float, was: float) -> str:
    return f"{now / was:.2f}x" if was else "n/a"
