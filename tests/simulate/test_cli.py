"""`callstream simulate`'s arguments: bad usage exits 2 with the reason, before anything is sent."""

from __future__ import annotations

import pytest

from simulate import cli
from simulate.transports import Pace


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--calls", "0"], "--calls: 0 is not between 1 and 1000"),
        (["--calls", "1001"], "--calls: 1001 is not between 1 and 1000"),
        (["--calls", "many"], "--calls: 'many' is not a number"),
        (["--loss", "0.7"], "--loss: 0.7 is not between 0 and 0.5"),
        (["--reorder", "-0.1"], "--reorder: -0.1 is not between 0 and 0.5"),
        (["--pace", "slow"], "--pace: 'slow': use realtime, fast, or a speed-up"),
        (["--pace", "0.5x"], "--pace: '0.5x': use realtime, fast, or a speed-up"),
        (["--transport", "carrier-pigeon"], "--transport: invalid choice"),
        (["--timeout-s", "0"], "--timeout-s: 0 is not between 1 and 3600"),
        (["--concurrency", "201"], "--concurrency: 201 is not between 1 and 200"),
        (["--url", "http://10.0.0.8:8000"], "is not on this machine"),
        (["--url", "http://callstream.example.com"], "unless --allow-remote is given"),
        (["--url", "ftp://127.0.0.1"], "is not an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:8000/v1"], "give the API's root, without a path"),
    ],
)
def test_bad_usage_exits_2_and_says_why(args, reason, capsys):
    assert cli.main(["simulate", *args]) == 2
    assert reason in capsys.readouterr().err


def test_no_command_is_bad_usage(capsys):
    assert cli.main([]) == 2
    assert "required: command" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["simulate", "--help"]) == 0
    assert (
        "--transport {http,ws,mixed,audiosocket,asterisk,freeswitch,audiohook}"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://127.8.9.10", True),
        ("https://10.1.2.3", False),
        ("http://callstream.internal", False),  # a name is not resolved: it may point anywhere
    ],
)
def test_only_loopback_urls_unless_remote_is_allowed(url, allowed):
    assert (cli.check_url(url, allow_remote=False) is None) is allowed
    assert cli.check_url(url, allow_remote=True) is None


def test_pace_is_real_time_fast_or_a_speed_up():
    assert cli.parse_pace("realtime") == Pace(1.0)
    assert cli.parse_pace("fast") == Pace(None)
    assert cli.parse_pace("4x") == Pace(4.0)
    assert cli.parse_pace("2.5x") == Pace(2.5)


def test_the_key_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("CALLSTREAM_API_KEY", "from-env")
    parsed = cli.build_parser().parse_args(["simulate"])
    assert cli.options_from(parsed).api_key == "from-env"
    parsed = cli.build_parser().parse_args(["simulate", "--api-key", "given"])
    assert cli.options_from(parsed).api_key == "given"
