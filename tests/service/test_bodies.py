"""The HTTP body rules every HTTP transport applies (pure logic: no servers)."""

from __future__ import annotations

import pytest

from service.bodies import is_json


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "Application/JSON; charset=utf-8", "application/vnd.x+json"],
)
def test_undeclared_and_json_bodies_are_json(content_type: str | None):
    assert is_json(content_type)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", "text/json", "json"],
)
def test_other_declared_types_are_not_json(content_type: str):
    assert not is_json(content_type)
