"""Who counts as this machine for a keyless API (core/access.py): the peer's address and the Host
header, asked twice a request and cached, answer the same however often they are asked."""

from __future__ import annotations

import pytest

from core.access import host_is_loopback, is_loopback

PEERS = [
    (None, True),  # a Unix socket
    ("127.0.0.1", True),
    ("127.8.9.10", True),
    ("::1", True),
    ("localhost", True),
    ("10.0.0.1", False),
    ("::ffff:10.0.0.1", False),
    ("example.com", False),
    ("", False),
]
HOSTS = [
    ("localhost:8000", True),
    ("LOCALHOST", True),
    ("127.0.0.1:8000", True),
    ("[::1]:8000", True),
    ("[::1", False),
    ("evil.example:8000", False),
    ("10.0.0.1", False),
    (None, False),
    ("", False),
]


@pytest.mark.parametrize(("peer", "loopback"), PEERS)
def test_a_peer_is_this_machine_only_by_a_loopback_address(peer: str | None, loopback: bool):
    assert [is_loopback(peer) for _ in range(3)] == [loopback] * 3


@pytest.mark.parametrize(("host", "loopback"), HOSTS)
def test_a_host_names_this_machine_only_by_localhost_or_a_loopback_address(
    host: str | None, loopback: bool
):
    assert [host_is_loopback(host) for _ in range(3)] == [loopback] * 3
