"""The audit trail: who completed or replayed which call, one INFO line each on the logger
`callstream.audit`, for the API (an API key's identity) and the worker (e.g. the idle sweep) alike.

A line names the action, the call and the actor, and nothing else: never a packet's data or a
transcript, which are the callers' private data. The same three values go in the record's
`extra` (audit_action, audit_call_id, audit_actor) for handlers that keep fields apart.
"""

from __future__ import annotations

import logging

log = logging.getLogger("callstream.audit")

UNKNOWN_ACTOR = "-"  # no identity was given (e.g. before API keys)


def _escaped(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable() and not char.isspace():
        return char
    return char.encode("unicode_escape").decode() if char != " " else "\\x20"


def _printable(value: str) -> str:
    """One line, whatever a caller passed: control characters (a newline would forge a second
    audit line), spaces (they would split the key=value pairs) and backslashes are escaped."""
    return "".join(map(_escaped, value))


def audit(action: str, call_id: str, actor: str | None) -> None:
    """Log that `actor` did `action` ("complete", "replay") to the call."""
    who = _printable(actor) if actor else UNKNOWN_ACTOR
    log.info(
        "action=%s call_id=%s actor=%s",
        _printable(action),
        _printable(call_id),
        who,
        extra={"audit_action": action, "audit_call_id": call_id, "audit_actor": actor},
    )
