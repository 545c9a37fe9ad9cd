"""`callstream simulate --transport audiosocket|asterisk|freeswitch|audiohook` against a real API
(its AudioSocket listeners included) and a real worker: two-party calls of real speech over each
PBX feed end ARCHIVED, with exactly the frames sent counted on both tracks."""

from __future__ import annotations

import asyncio

import pytest

from devstack.servers import free_port
from settings import Settings
from simulate import cli
from tests.feeds.calls import callstream

FAST = ["--pace", "fast", "--timeout-s", "60", "--seed", "5"]


@pytest.mark.parametrize("transport", ["audiosocket", "asterisk", "freeswitch", "audiohook"])
async def test_two_party_calls_over_each_pbx_feed_end_archived(
    settings: Settings, capsys: pytest.CaptureFixture[str], transport: str
):
    caller, agent = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    pbx = settings.model_copy(
        update={"audiosocket_addr": caller, "audiosocket_outbound_addr": agent}
    )
    async with callstream(pbx) as (address, _):
        code = await asyncio.to_thread(
            cli.main,
            ["simulate", "--url", f"http://{address}", "--calls", "2", "--transport", transport,
             "--audiosocket", f"{caller},{agent}", *FAST],
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 calls: 2 ARCHIVED" in out
    assert "server counted exactly the losses, reorders and duplicates sent: 2 of 2" in out
    assert f" {transport} " in out


def test_a_remote_audiosocket_needs_allow_remote(capsys: pytest.CaptureFixture[str]):
    code = cli.main(["simulate", "--transport", "audiosocket",
                     "--audiosocket", "10.1.2.3:9092,10.1.2.3:9093"])  # fmt: skip
    assert code != 0
    assert "--audiosocket 10.1.2.3:9092 is not on this machine" in capsys.readouterr().err
