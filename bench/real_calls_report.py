"""BENCHMARKS.md's "Real calls" section, rendered from bench/real_calls.py's figures."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bench.real_calls_load import flatness

HEADING = "## Real calls"
Figures = dict[str, Any]
GROUPS = ("api", "workers", "redis", "postgres", "client")
SERIES = ("redis_used_memory", "api_rss", "worker_rss")  # the soak's, over time


def kb(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} B" if abs(value) < 10_000 else f"{value / 1000:,.0f} KB"


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:,.1f} MB"


def s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f}%"


def x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def dig(f: Figures | None, *path: str | int) -> Any:
    """f[path[0]][path[1]]..., or None wherever a step is missing."""
    at: Any = f
    for key in path:
        if isinstance(at, dict):
            at = at.get(key)
        elif isinstance(at, list) and isinstance(key, int) and -len(at) <= key < len(at):
            at = at[key]
        else:
            return None
    return at


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def one_line(phase: str, f: Figures) -> str:
    """A phase's headline on the console."""
    if phase == "length":
        short, long = f["groups"]["short"], f["groups"]["long"]
        return (
            f"  Redis live max {kb(short['redis_live_max_bytes'])} (short) vs "
            f"{kb(long['redis_live_max_bytes'])} (long); after ARCHIVED "
            f"{kb(long['redis_after_bytes'])}, {long['redis_after_packet_entries']:.0f} entries; "
            f"PG {kb(f['pg_bytes_per_call_minute'])}/call-min ({x(f['pg_to_raw_audio'])} audio);"
            f" to ARCHIVED p50 {s(short['to_archived_p50_s'])} vs {s(long['to_archived_p50_s'])};"
            f" lost {short['lost_frames']}+{long['lost_frames']}"
        )
    if phase == "fast":
        return (
            f"  {f['frames_per_s']:.0f} frames/s, {x(f['speed_up_per_call'])} real time a call, "
            f"lost {f['lost_frames']}, to ARCHIVED p99 {s(f['to_archived_p99_s'])}"
        )
    if phase == "ramp":
        return "  " + "; ".join(
            f"{st['calls']} calls: lag p99 {ms(st['lag_p99_ms'])}, lost {st['lost_frames']}, "
            f"slip p99 {ms(st['pace_slip_p99_ms'])}: {'holds' if st['holds'] else 'does not hold'}"
            for st in f["steps"]
        )
    growth = {k: pct(dig(f, "flatness", k, "growth_pct")) for k in f.get("flatness", {})}
    return (
        f"  {f['calls']} calls, lost {f['lost_frames']}, lag p99 {ms(f['lag_p99_ms'])}; "
        f"growth after warm-up: {growth}"
    )


def section(f: Figures, command: str) -> list[str]:
    m = f["meta"]
    out = [
        HEADING,
        "",
        f"`{command}` on {m['started_at']}: {m['machine']}, load average {m['loadavg_start']} at "
        f"the start and {m.get('loadavg_end', '?')} at the end (the machine is shared; the client "
        f"shares its cores with the stack). The tree at `{m['commit']}`"
        + _uncommitted(m["uncommitted"])
        + f". Layout: {m['layout']}; mock AI made instant ({_env(m['ai'])}). Speech: "
        f"{m['speech']}, a {m['dialogue_s']:.0f} s dialogue of caller and agent taking turns, "
        "looped, 8 kHz μ-law in 20 ms frames (160 bytes, base64), both tracks over "
        "WS /v1/call/media.",
        "",
    ]
    out += definitions()
    out += targets(f)
    out += per_call_minute(f)
    out += ramp_table(f)
    out += soak_table(f)
    out += tables_where(f)
    return out


def _uncommitted(paths: list[str]) -> str:
    if not paths:
        return ""
    named = ", ".join(f"`{p}`" for p in paths[:6]) + (", …" if len(paths) > 6 else "")
    return f", with others' uncommitted changes in {len(paths)} files of the tree ({named})"


def _env(env: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items())


def definitions() -> list[str]:
    return [
        "How it is measured:",
        "",
        "- A call-minute is one minute of a two-track call; its raw audio is 2 x 8,000 bytes/s, "
        "960 KB a minute.",
        "- Redis bytes of a call: MEMORY USAGE (SAMPLES 0) summed over its keys (SCAN MATCH "
        "`*:call:<id>:*`), every 2 s while it is live, just before its `stop`, and once every call "
        "of the phase is ARCHIVED; its packet entries are the XLEN of its `:packets` key (0 if "
        "gone).",
        "- PostgreSQL bytes: the change of `pg_total_relation_size` (heap, TOAST, indexes) summed "
        "over the public schema's tables across a phase, from empty tables.",
        "- Completion -> ARCHIVED: from sending `stop` to a status long poll (GET "
        "/v1/calls/{id}?wait=5 with If-None-Match) answering ARCHIVED.",
        "- CPU: user + system time (psutil, /proc) of each group's processes over the phase.",
        "- Frame-to-stored lag (the WebSocket acknowledges nothing per frame): every 100 ms the "
        "harness reads every live call's stored-packet count straight from Redis, in one "
        "pipeline that starts with TIME. The count is the hash field `db/record.py` names for "
        "`packets_received` (both tracks' total); a call sends in order on one socket, so a count "
        "of c means its first c frames. A read's lag is the age, at Redis' TIME, of the oldest "
        "frame handed to the socket that the count leaves out (0 when it includes every frame "
        "sent by then). Beside it, the status' view: GET /v1/calls/{id}, at most 64 a second "
        "round-robin, aged to when its answer arrived (so it includes the API's own read).",
        "- A ramp step holds when the final status counts every frame (`packets_received` per "
        "track equal to the frames sent), every call is ARCHIVED, the lag p99 is under 100 ms, "
        "and the client kept real-time pace (its frames left at most 100 ms behind schedule at "
        "p99; the lag is aged from when a frame actually left).",
        "",
    ]


def targets(f: Figures) -> list[str]:
    def cell(fmt: Callable[[Any], str], *paths: tuple[str | int, ...]) -> str:
        return " / ".join(fmt(dig(f, *path)) for path in paths)

    def per(of: Callable[[Figures], Any], fmt: Callable[[Any], str]) -> str:
        return fmt(of(f))

    short, long = ("length", "groups", "short"), ("length", "groups", "long")
    minutes = _long_minutes(f)
    soak = f.get("soak") or {}
    held = dig(f, "ramp", "most_calls_held")
    audio = audio_counts(f)
    rows = [
        ("Redis per live 1-minute call, max / at its end", "bounded by a segment",
         cell(kb, (*short, "redis_live_max_bytes"), (*short, "redis_live_end_bytes")), ""),
        (f"Redis per live long call ({minutes}), max / at its end", "must not grow with length",
         cell(kb, (*long, "redis_live_max_bytes"), (*long, "redis_live_end_bytes")), ""),
        ("Redis, long call / 1-minute call, max / at the end", "1x",
         per(lambda g: _over(g, "redis_live_max_bytes"), x) + " / "
         + per(lambda g: _over(g, "redis_live_end_bytes"), x),
         met(_at_most(_over(f, "redis_live_max_bytes"), 1.25))),
        ("Redis per call after ARCHIVED: bytes / packet entries", "packets: 0",
         cell(kb, (*long, "redis_after_bytes")) + " / "
         + cell(_n, (*long, "redis_after_packet_entries")),
         met(_at_most(dig(f, *long, "redis_after_packet_entries"), 0))),
        ("PostgreSQL per call-minute, indexes included (/ raw audio)", "<= 1.25x (1,200 KB)",
         cell(kb, ("length", "pg_bytes_per_call_minute")) + " ("
         + cell(x, ("length", "pg_to_raw_audio")) + ")",
         met(_at_most(dig(f, "length", "pg_to_raw_audio"), 1.25))),
        ("Completion -> ARCHIVED p50 / p99, 1-minute calls", "",
         cell(s, (*short, "to_archived_p50_s"), (*short, "to_archived_p99_s")), ""),
        ("Completion -> ARCHIVED p50 / p99, long calls", "<= 1.5x the 1-minute ones",
         cell(s, (*long, "to_archived_p50_s"), (*long, "to_archived_p99_s")), ""),
        ("long / 1-minute calls, p50 / p99", "<= 1.5x",
         per(lambda g: _over(g, "to_archived_p50_s"), x) + " / "
         + per(lambda g: _over(g, "to_archived_p99_s"), x),
         met(_at_most(_over(f, "to_archived_p99_s"), 1.5))),
        ("Worker CPU per call-minute (the length phase)", "",
         cell(ms, ("length", "cpu_ms_per_call_minute", "workers")), ""),
        ("CPU per call-minute of the stack (API, workers, Redis, PostgreSQL) / with the client; "
         "the calls at real-time pace that would use every core of an idle machine", "",
         per(lambda g: _cpu_s(g, GROUPS[:4]), s) + " / " + per(lambda g: _cpu_s(g, GROUPS), s)
         + "; " + per(cpu_ceiling, _n), ""),
        ("Frames lost (every phase)", "0", per(lost_everywhere, _n),
         met(_at_most(lost_everywhere(f), 0))),
        ("Recordings whose length and both channels match what was sent", "all",
         per(audio_everywhere, str), met(audio[1] == audio[0] if audio[0] else None)),
        ("Most concurrent two-track calls at real-time pace, lag p99 < 100 ms, all stored", "",
         cell(str, ("ramp", "most_calls_held")), ""),
        (f"Soak at {soak.get('calls_at_once', 'n/a')} calls (half of {held}), after its warm-up "
         "(the first quarter): Redis used_memory / API RSS / worker RSS, the mean of the second "
         "half against the first", "flat (within 10%)",
         " / ".join(per(_growth(k), pct) for k in SERIES), met(_flat(f))),
        ("Fast pass: frames/s, x real time a call", "",
         cell(_n, ("fast", "frames_per_s")) + ", " + cell(x, ("fast", "speed_up_per_call")), ""),
    ]  # fmt: skip
    lines = ["| on real calls | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {what} | {target} | {value} | {ok} |" for what, target, value, ok in rows]
    return [*lines, ""]


def _cpu_s(f: Figures, groups: tuple[str, ...]) -> float | None:
    cpu = dig(f, "length", "cpu_ms_per_call_minute")
    return sum(cpu.get(g, 0.0) for g in groups) / 1000 if cpu else None


def cpu_ceiling(f: Figures) -> float | None:
    """Concurrent calls whose CPU (the stack's and the client's, at the length phase's cost per
    call-minute) would fill every core: the ramp's limit on a machine that is all ours."""
    found = re.search(r"(\d+) cores", str(dig(f, "meta", "machine")))
    per_call = _cpu_s(f, GROUPS)
    return 60 * int(found.group(1)) / per_call if found and per_call else None


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _growth(series: str) -> Callable[[Figures], Any]:
    return lambda f: dig(soak_flatness(f), series, "growth_pct")


def soak_flatness(f: Figures) -> dict[str, Any]:
    """The soak's series' flatness (bench/real_calls_load.py), from its samples."""
    series = dig(f, "soak", "series")
    return {k: flatness(series, k) for k in SERIES} if series else {}


def _flat(f: Figures, limit_pct: float = 10.0) -> bool | None:
    """Each of the soak's series' second half within `limit_pct` of its first (after warm-up)."""
    growth = [dig(soak_flatness(f), k, "growth_pct") for k in SERIES]
    if any(g is None for g in growth):
        return None
    return all(abs(g) <= limit_pct for g in growth)


def _long_minutes(f: Figures | None) -> str:
    return f"{(dig(f, 'meta', 'plan', 'long_s') or 0) / 60:g} min"


def _over(f: Figures, key: str) -> float | None:
    """A long call's figure over a 1-minute call's."""
    return ratio(dig(f, "length", "groups", "long", key), dig(f, "length", "groups", "short", key))


def _n(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def phases_of(f: Figures) -> list[tuple[str, Figures]]:
    out: list[tuple[str, Figures]] = []
    if "length" in f:
        out.append(("length (real time)", f["length"]))
    if "fast" in f:
        out.append(("fast pass", f["fast"]))
    out += [(f"ramp, {st['calls']} calls", st) for st in dig(f, "ramp", "steps") or []]
    if "soak" in f:
        out.append((f"soak, {f['soak']['calls_at_once']} calls", f["soak"]))
    return out


def lost_everywhere(f: Figures) -> int | None:
    counted = [p.get("lost_frames") for _, p in phases_of(f)]
    counted += [dig(f, "length", "groups", g, "lost_frames") for g in ("short", "long")]
    known = [c for c in counted if c is not None]
    return sum(known) if known else None


def audio_checks(f: Figures) -> list[Figures]:
    checks = [dig(f, "length", "groups", g, "audio") for g in ("short", "long")]
    checks += [dig(f, p, "audio") for p in ("fast", "soak")]
    return [c for c in checks if c]


def audio_counts(f: Figures) -> tuple[int, int]:
    """Recordings checked, and those whose length and both channels matched."""
    found = audio_checks(f)
    checked = sum(c["checked"] for c in found)
    return checked, sum(min(c["length_ok"], c["tracks_match"]) for c in found)


def audio_everywhere(f: Figures) -> str:
    found = audio_checks(f)
    if not found:
        return "n/a"
    checked, ok = audio_counts(f)
    if not any(c["served"] for c in found):
        statuses = sorted({k for c in found for k in c["statuses"]})
        return f"0 of {checked} (GET …/audio answers {', '.join(statuses)})"
    return f"{ok} of {checked}"


def per_call_minute(f: Figures) -> list[str]:
    lines = [
        "CPU and bytes per call-minute, by phase (CPU in ms of one core per call-minute):",
        "",
        "| phase | call-minutes | "
        + " | ".join(f"{g} CPU" for g in GROUPS)
        + " | PostgreSQL bytes (÷ audio) | to ARCHIVED p50 / p99 |",
        "|---|---|" + "---|" * len(GROUPS) + "---|---|",
    ]
    for name, p in phases_of(f):
        cpu = p.get("cpu_ms_per_call_minute", {})
        lines.append(
            f"| {name} | {p['call_minutes']:.1f} | "
            + " | ".join(_n(cpu.get(g)) for g in GROUPS)
            + f" | {kb(p['pg_bytes_per_call_minute'])} ({x(p['pg_to_raw_audio'])}) | "
            f"{s(_final(p, 'p50'))} / {s(_final(p, 'p99'))} |"
        )
    return [*lines, ""]


def _final(p: Figures, q: str) -> Any:
    if "groups" in p:  # the length phase: its long calls'
        return dig(p, "groups", "long", f"to_archived_{q}_s")
    return p.get(f"to_archived_{q}_s")


def ramp_table(f: Figures) -> list[str]:
    lines = [
        "The ramp, each step from empty stores, calls of "
        f"{dig(f, 'meta', 'plan', 'ramp_s') or 0:g} s starting within "
        f"{dig(f, 'meta', 'plan', 'stagger_s') or 0:g} s:",
        "",
        "| calls at once | load avg | lag p50 / p99 / max | status' lag p99 (its read p99) | "
        "client slip p99 | frames lost | to ARCHIVED p99 | API + worker CPU / call-min | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in dig(f, "ramp", "steps") or []:
        cpu = st["cpu_ms_per_call_minute"]
        lines.append(
            f"| {st['calls']} | {st.get('loadavg', '')} | {ms(st['lag_p50_ms'])} / "
            f"{ms(st['lag_p99_ms'])} / {ms(st['lag_max_ms'])} | {ms(st['status_lag_p99_ms'])} "
            f"({ms(st['status_read_p99_ms'])}) | {ms(st['pace_slip_p99_ms'])} | "
            f"{st['lost_frames']:,} of {st['frames_sent']:,} | {s(st['to_archived_p99_s'])} | "
            f"{_n(cpu['api'] + cpu['workers'])} ms | {'yes' if st['holds'] else 'no'} |"
        )
    return [*lines, "", *what_bounds(f), ""]


def what_bounds(f: Figures) -> list[str]:
    """What the figures say of the ramp's limit, from this run's own numbers."""
    steps = dig(f, "ramp", "steps") or []
    failed = next((st for st in steps if not st["holds"]), None)
    live = dig(f, "length", "cpu_ms_per_call_minute", "api")
    fast = dig(f, "fast", "cpu_ms_per_call_minute", "api")
    out = []
    if failed is not None:
        out.append(
            f"At {failed['calls']} calls the client itself fell {ms(failed['pace_slip_p99_ms'])} "
            "behind its schedule at p99 and the lag's pipeline of HGETs took "
            f"{ms(failed['redis_read_p99_ms'])} at p99 (load average "
            f"{failed.get('loadavg', '?')}): when these rise with the lag, the machine's cores "
            "are short, for the stack and the client alike, and the step measures "
            f"the machine's other load as much as the layout; {_n(cpu_ceiling(f))} "
            "calls would fill the cores of an idle machine at this run's CPU per call-minute."
        )
    if live and fast:
        out.append(
            f"At real-time pace the API spends {_n(live)} ms of CPU per call-minute against "
            f"{_n(fast)} ms in the fast pass: the media socket stores what is waiting when its "
            "reader finds no next frame, which at real-time pace is a tick's one or two frames "
            "per Redis round trip, where the fast pass fills batches of up to 50."
        )
    return [" ".join(out)] if out else []


def soak_table(f: Figures) -> list[str]:
    soak = f.get("soak")
    if not soak or not soak["series"]:
        return []
    series = soak["series"]
    step = max(1, len(series) // 8)
    picked = [*series[::step], soak["after_all_archived"]]
    lines = [
        f"The soak: {soak['calls_at_once']} calls at once for {soak['wall_s']:.0f} s, "
        f"{soak['calls']} calls in all, each replaced as it ends; lag p99 "
        f"{ms(soak['lag_p99_ms'])}, frames lost {soak['lost_frames']:,} of "
        f"{soak['frames_sent']:,}. The last row is after every call was ARCHIVED.",
        "",
        "| t | live calls | Redis used_memory | Redis keys | API RSS | worker RSS |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['t_s']:.0f} s | {p['live_calls']} | {mb(p['redis_used_memory'])} | "
        f"{p['redis_keys']:,} | {mb(p['api_rss'])} | {mb(p['worker_rss'])} |"
        for p in picked
    ]
    return [*lines, ""]


def tables_where(f: Figures) -> list[str]:
    lines = ["Where the length phase's PostgreSQL bytes went (per call-minute):", ""]
    minutes = dig(f, "length", "call_minutes")
    tables = dig(f, "length", "pg_delta_bytes")
    if minutes and tables:
        shares = sorted(tables.items(), key=lambda kv: -kv[1])
        lines.append("- " + ", ".join(f"`{t}` {kb(b / minutes)}" for t, b in shares if b > 0))
    if keys := dig(f, "length", "groups", "long", "redis_after_keys"):
        lines.append(
            "- a long call's Redis keys after ARCHIVED: "
            + ", ".join(f"`{k}` {kb(v['bytes'])} (TTL {v['ttl_s']} s)" for k, v in keys.items())
        )
    return [*lines, ""]
