"""service/dashboard/contract.js is generated from the server's rules (scripts/contract_js.py): it
must not drift, and the dashboard's script must read those rules from it rather than copy them."""

from __future__ import annotations

import re

from core.ingestion import CALL_ID_PATTERN
from db.feed_events import CALL_EVENT_TYPES
from db.states import CallState
from scripts.contract_js import TARGET, contract, render
from tests.dashboard.modules import page_modules


def test_the_dashboards_contract_is_the_one_the_servers_rules_generate():
    assert TARGET.read_text() == render(), "service/dashboard/contract.js is stale: run `make docs`"


def test_the_contract_names_every_state_every_event_type_and_the_call_id_rule():
    written = contract()
    assert written["states"] == [s.value for s in CallState]
    assert set(written["events"]) == {
        "state",
        "attempt",
        "progress",
        "segment",
        "utterance",
        "reset",
    }
    assert len(CALL_EVENT_TYPES) == len(written["events"]) - 1
    assert "live" in written["events"]["attempt"]
    assert written["callIdPattern"] == CALL_ID_PATTERN


def test_the_dashboard_scripts_copy_none_of_the_rules_they_read_from_the_contract():
    modules = [m for m in page_modules() if m != TARGET]
    assert len(modules) > 5
    for module in modules:
        script = module.read_text()
        for state in CallState:
            # A state may be named where the page acts on it, never listed as the set of states.
            assert f'["{state.value}", ' not in script, (module.name, state)
        assert "A-Za-z0-9" not in script, module.name  # the call-id pattern
        # the excerpt's length, the WAV header's
        assert not re.search(r"\b(140|44)\b", script), module.name
