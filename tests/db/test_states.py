"""The state machine's edges."""

import pytest

from db.states import CallState, can_transition

S = CallState


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (None, S.IN_PROGRESS),
        (S.IN_PROGRESS, S.COMPLETED),
        (S.COMPLETED, S.PROCESSING_AI),
        (S.PROCESSING_AI, S.ARCHIVED),
        (S.PROCESSING_AI, S.FAILED),
        (S.FAILED, S.COMPLETED),
    ],
)
def test_allowed_moves(source, target):
    assert can_transition(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.ARCHIVED, S.PROCESSING_AI),
        (S.PROCESSING_AI, S.COMPLETED),
        (S.IN_PROGRESS, S.ARCHIVED),
        (S.COMPLETED, S.ARCHIVED),
        (S.ARCHIVED, S.FAILED),
        (None, S.COMPLETED),
    ],
)
def test_refused_moves(source, target):
    assert not can_transition(source, target)
