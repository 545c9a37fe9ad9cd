"""The call state machine, in one place: who may move where."""

from enum import StrEnum


class CallState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    PROCESSING_AI = "PROCESSING_AI"
    ARCHIVED = "ARCHIVED"
    FAILED = "FAILED"


# The only edges a call may take. FAILED -> COMPLETED is the dead-letter replay.
ALLOWED_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.IN_PROGRESS: frozenset({CallState.COMPLETED}),
    CallState.COMPLETED: frozenset({CallState.PROCESSING_AI}),
    CallState.PROCESSING_AI: frozenset({CallState.ARCHIVED, CallState.FAILED}),
    CallState.ARCHIVED: frozenset(),
    CallState.FAILED: frozenset({CallState.COMPLETED}),
}

TERMINAL_STATES = frozenset({CallState.ARCHIVED, CallState.FAILED})
# States in which the worker owns a call: the claim takes calls only from these.
WORKER_STATES = frozenset({CallState.COMPLETED, CallState.PROCESSING_AI})


def can_transition(source: CallState | None, target: CallState) -> bool:
    if source is None:
        return target is CallState.IN_PROGRESS
    return target in ALLOWED_TRANSITIONS[source]


def sources_of(target: CallState) -> frozenset[CallState]:
    """The states a call may move to `target` from: what a guarded UPDATE's WHERE allows."""
    return frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets)
