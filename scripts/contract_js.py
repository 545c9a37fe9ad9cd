"""Write service/dashboard/contract.js: what the dashboard must know of the server's rules, from
their one home each (the call states: db/states.py; the call-id rule: core/ingestion.py; the feed's
event types, their fields and bounds: db/feed_events.py; the WAV header: core/audio.py), so that
the page copies none of them. `make docs` runs it; tests/test_contract_js.py fails when the file
is stale.

    python -m scripts.contract_js            # rewrite service/dashboard/contract.js
    python -m scripts.contract_js --check    # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.audio import WAV_HEADER_BYTES
from core.ingestion import CALL_ID_PATTERN
from db.feed_events import (
    CALL_EVENT_TYPES,
    EXCERPT_CHARS,
    MAX_EVENT_BYTES,
    UTTERANCE_MAX_CHARS,
    ResetEvent,
)
from db.states import TERMINAL_STATES, CallState
from scripts.generated import write_or_check

TARGET = Path(__file__).resolve().parent.parent / "service" / "dashboard" / "contract.js"

HEADER = """\
// Written by `make docs` (python -m scripts.contract_js) from the server's own rules: the call
// states (db/states.py), the call-id rule (core/ingestion.py), the live feed's events and bounds
// (db/feed_events.py) and the WAV header (core/audio.py). Do not edit: change the rule there,
// then run `make docs`; tests/test_contract_js.py fails while this file is stale.
//
// An ES module: the dashboard's modules `import { CONTRACT } from "./contract.js"`.
"""


def _type_of(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def contract() -> dict[str, Any]:
    models: tuple[type[BaseModel], ...] = (*CALL_EVENT_TYPES, ResetEvent)
    events = {_type_of(m): list(m.model_fields) for m in models}
    return {
        # In the order a call goes through them (the board sorts its State column so).
        "states": [s.value for s in CallState],
        "liveStates": [s.value for s in CallState if s not in TERMINAL_STATES],
        "finalStates": [s.value for s in CallState if s in TERMINAL_STATES],
        "callIdPattern": CALL_ID_PATTERN,
        "excerptChars": EXCERPT_CHARS,
        "utteranceMaxChars": UTTERANCE_MAX_CHARS,
        "maxEventBytes": MAX_EVENT_BYTES,
        "wavHeaderBytes": WAV_HEADER_BYTES,
        # Each feed event type and its fields (`reset` is the API's own: no call, no id).
        "events": events,
    }


def render() -> str:
    body = json.dumps(contract(), indent=2)
    return f"{HEADER}export const CONTRACT = Object.freeze({body});\n"


def main(argv: list[str] | None = None) -> int:
    return write_or_check(TARGET, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
