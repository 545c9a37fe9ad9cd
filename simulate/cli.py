"""The `callstream` console script: `callstream simulate [options]`.

Exit codes: 0 when every call reached ARCHIVED or FAILED, 1 otherwise (the server down, a key
refused, a call that never got there), 2 for bad usage. Errors are one plain sentence, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from rich.console import Console

from simulate import speech
from simulate.plan import MAX_SHARE, PBX_TRANSPORTS, Faults
from simulate.report import exit_code, n_calls, summary_table, totals
from simulate.run import Options, ServerProblem, simulate
from simulate.transports import Pace

MAX_CALLS = 1000
MAX_CONCURRENCY = 200
MAX_BATCH = 500  # the server's MAX_BATCH_PACKETS default
MAX_TIMEOUT_S = 3600.0
MAX_JITTER_MS = 1000.0
MAX_SPEED = 1000.0
KEY_ENV = "CALLSTREAM_API_KEY"
READ_KEY_ENV = "CALLSTREAM_READ_KEY"
WIDE = 160
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_pace(value: str) -> Pace:
    """realtime (1x), fast (no pauses), or a speed-up such as 4x."""
    if value == "realtime":
        return Pace(1.0)
    if value == "fast":
        return Pace(None)
    try:
        speed = float(value.removesuffix("x")) if value.endswith("x") else None
    except ValueError:
        speed = None
    if speed is None or not 1 <= speed <= MAX_SPEED:
        raise argparse.ArgumentTypeError(
            f"{value!r}: use realtime, fast, or a speed-up from 1x to {MAX_SPEED:g}x (e.g. 4x)"
        )
    return Pace(speed)


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low:g} and {high:g}")
        return number

    return parse


def _listeners(value: str) -> tuple[tuple[str, int], tuple[str, int]]:
    parsed = []
    for address in value.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{address!r} is not host:port")
        parsed.append((host.strip("[]"), int(port)))
    if len(parsed) != 2:
        raise argparse.ArgumentTypeError("two listeners: the caller's, then the agent's")
    return parsed[0], parsed[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream",
        description="Callstream's tools; also `callstream erase --replay-ledger` (see its --help).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    sim = commands.add_parser(
        "simulate",
        help="replay realistic calls (real speech, a lossy network) against a Callstream",
        description="Replays calls of real speech (espeak-ng, or the recordings shipped) as "
        "20 ms μ-law frames over HTTP packets or the Twilio media WebSocket, through a network "
        "that loses, reorders and duplicates frames; follows every call to ARCHIVED or FAILED "
        "and prints a summary. Exit code 0 when every call ended ARCHIVED or FAILED.",
    )
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the API (loopback only)")
    sim.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    sim.add_argument(
        "--calls",
        type=_bounded(int, 1, MAX_CALLS),
        default=5,
        help=f"how many calls (1-{MAX_CALLS}; default 5)",
    )
    sim.add_argument(
        "--transport",
        choices=("http", "ws", "mixed", *PBX_TRANSPORTS),
        default="mixed",
        help="HTTP packets, the media WebSocket, or both in turn (default); or a PBX feed, "
        "two parties a call: Asterisk AudioSocket or chan_websocket, FreeSWITCH "
        "mod_audio_stream, Genesys AudioHook (no network faults: a PBX streams over TCP)",
    )
    sim.add_argument(
        "--audiosocket",
        type=_listeners,
        default=(("127.0.0.1", 9092), ("127.0.0.1", 9093)),
        metavar="CALLER_HOST:PORT,AGENT_HOST:PORT",
        help="AudioSocket's two listeners (default make run's: 127.0.0.1:9092,127.0.0.1:9093)",
    )
    sim.add_argument(
        "--pace",
        type=parse_pace,
        default=Pace(1.0),
        metavar="realtime|fast|Nx",
        help="real time (default), no pauses at all, or N times real time",
    )
    sim.add_argument(
        "--batch",
        type=_bounded(int, 1, MAX_BATCH),
        default=1,
        help="HTTP: frames per request (default 1)",
    )
    share = _bounded(float, 0, MAX_SHARE)
    sim.add_argument("--loss", type=share, default=0.02, help="share of frames lost (0.02)")
    sim.add_argument("--reorder", type=share, default=0.02, help="share sent late (0.02)")
    sim.add_argument("--duplicate", type=share, default=0.01, help="share sent twice (0.01)")
    sim.add_argument(
        "--jitter-ms",
        type=_bounded(float, 0, MAX_JITTER_MS),
        default=10.0,
        help="each frame sent up to this late (default 10)",
    )
    sim.add_argument(
        "--concurrency",
        type=_bounded(int, 1, MAX_CONCURRENCY),
        default=10,
        help="calls sending at once (default 10)",
    )
    sim.add_argument(
        "--timeout-s",
        type=_bounded(float, 1, MAX_TIMEOUT_S),
        default=120.0,
        help="wait this long at most, after the last call, for final states",
    )
    sim.add_argument("--seed", type=int, default=None, help="replay the same calls and faults")
    sim.add_argument(
        "--api-key",
        default=os.environ.get(KEY_ENV),
        help=f"API key (default ${KEY_ENV}): admin, or ingest with --read-key",
    )
    sim.add_argument(
        "--read-key",
        default=os.environ.get(READ_KEY_ENV),
        help=f"key for reads, if --api-key may not read (${READ_KEY_ENV})",
    )
    return parser


def check_url(url: str, allow_remote: bool) -> str | None:
    """Why `url` may not be used, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--url {url!r} is not an http:// or https:// URL"
    if parts.path.strip("/") or parts.query:
        return f"--url {url!r}: give the API's root, without a path"
    if allow_remote or _is_loopback(parts.hostname):
        return None
    return (
        f"--url {url!r} is not on this machine; simulated calls go to loopback only "
        "unless --allow-remote is given"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: we do not resolve it (it may point anywhere tomorrow)


def say(console: Console, text: str) -> None:
    """One plain message, unwrapped (it may hold a URL or a key's name)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        url=args.url.rstrip("/"),
        calls=args.calls,
        transport=args.transport,
        pace=args.pace,
        faults=Faults(args.loss, args.reorder, args.duplicate, args.jitter_ms),
        concurrency=args.concurrency,
        batch=args.batch,
        timeout_s=args.timeout_s,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(2**31),
        api_key=args.api_key or None,
        read_key=args.read_key or None,
        audiosocket=args.audiosocket,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exited:  # argparse has printed the usage and why
        return exited.code if isinstance(exited.code, int) else EXIT_USAGE
    problem = check_url(args.url, args.allow_remote)
    remote = [f"{h}:{p}" for h, p in args.audiosocket if not _is_loopback(h)]
    if not problem and args.transport == "audiosocket" and remote and not args.allow_remote:
        problem = f"--audiosocket {remote[0]} is not on this machine (give --allow-remote)"
    err = Console(stderr=True)
    if problem:
        say(err, f"callstream simulate: error: {problem}")
        return EXIT_USAGE
    if not speech.speakable():
        say(
            err,
            "callstream simulate: error: no speech: espeak-ng is not installed "
            f"({speech.INSTALL_HINT}) and the shipped recordings are missing",
        )
        return 1
    return _simulate(options_from(args), err)


def _simulate(options: Options, err: Console) -> int:
    out = Console()
    if not out.is_terminal:  # a log or a pipe: wide enough for the table, not a terminal's 80
        out = Console(width=max(out.width, WIDE))
    voice = "espeak-ng" if speech.speech_available() else "the shipped recordings (no espeak-ng)"
    say(
        err,
        f"{n_calls(options.calls)} to {options.url} over {options.transport}, seed {options.seed}, "
        f"speech from {voice}",
    )
    try:
        result = asyncio.run(simulate(options, err))
    except ServerProblem as problem:
        say(err, f"callstream simulate: {problem}")
        return 1
    except KeyboardInterrupt:
        say(err, "callstream simulate: interrupted")
        return EXIT_INTERRUPTED
    out.print(summary_table(result))
    for line in totals(result):
        say(out, line)
    return exit_code(result)
