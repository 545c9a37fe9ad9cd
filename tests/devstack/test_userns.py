"""As root, PostgreSQL runs in a user namespace; where none can be made, the error says what is
missing instead of falling back to anything that touches permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import userns


def test_as_non_root_the_command_runs_as_it_is(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert userns.as_unprivileged(["postgres", "-D", "x"]) == ["postgres", "-D", "x"]


def test_as_root_the_command_runs_in_a_user_namespace_as_nobody(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    command = userns.as_unprivileged(["postgres"])
    assert command[:2] == ["unshare", "--user"]
    assert command[-2:] == ["--", "postgres"]
    assert "--map-user=0" not in command


def test_a_machine_without_user_namespaces_is_told_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    refusing = tmp_path / "unshare"
    refusing.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\n"
                        "exit 1\n")  # fmt: skip
    refusing.chmod(0o700)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(userns, "user_namespace_prefix", lambda: [str(refusing), "--"])
    with pytest.raises(userns.UserNamespaceUnavailable) as refused:
        userns.as_unprivileged(["postgres"])
    assert "does not allow creating one" in str(refused.value)
    assert "Operation not permitted" in str(refused.value)
    assert "DATABASE_URL" in str(refused.value)


def test_a_machine_without_unshare_is_told_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(userns, "user_namespace_prefix", lambda: [str(tmp_path / "none"), "--"])
    with pytest.raises(userns.UserNamespaceUnavailable, match="util-linux"):
        userns.as_unprivileged(["postgres"])
