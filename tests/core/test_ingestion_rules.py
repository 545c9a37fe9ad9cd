"""The ingestion rules every transport applies (pure logic: no servers)."""

from __future__ import annotations

import pytest

from core.errors import MetadataTooLarge, PayloadTooLarge
from core.ingestion import (
    check_batch_size,
    check_data_size,
    check_metadata_size,
    is_call_id,
)
from db.packets import NewPacket


@pytest.mark.parametrize(
    "call_id", ["a", "call-42", "CA.1_2:3-4", "x" * 128, ".a", "a.", "..a", "." * 127 + "a"]
)
def test_call_ids_of_the_allowed_characters_and_length_are_accepted(call_id: str):
    assert is_call_id(call_id)


@pytest.mark.parametrize("call_id", ["", "x" * 129, "abc\n", "a b", "é", "a/b", None, 7])
def test_other_call_ids_are_refused_even_with_a_trailing_newline(call_id: object):
    assert not is_call_id(call_id)


@pytest.mark.parametrize("call_id", [".", "..", "...", "." * 128, "..\n"])
def test_call_ids_made_only_of_dots_are_refused(call_id: str):
    # `.` and `..` are path segments to every URL and filesystem (an object key's), not names.
    assert not is_call_id(call_id)


def test_data_size_is_counted_in_utf8_bytes_not_characters():
    check_data_size(NewPacket(1, 0.0, "é" * 5), limit=10)  # 10 bytes: exactly the limit
    with pytest.raises(PayloadTooLarge, match="packet 1"):
        check_data_size(NewPacket(1, 0.0, "é" * 6), limit=10)


def test_batches_and_start_messages_have_their_limits():
    check_batch_size(500, limit=500)
    with pytest.raises(PayloadTooLarge, match="MAX_BATCH_PACKETS"):
        check_batch_size(501, limit=500)
    with pytest.raises(MetadataTooLarge):
        check_metadata_size({"blob": "x" * 20_000})
