// Written by `make docs` (python -m scripts.contract_js) from the server's own rules: the call
// states (db/states.py), the call-id rule (core/ingestion.py), the live feed's events and bounds
// (db/feed_events.py) and the WAV header (core/audio.py). Do not edit: change the rule there,
// then run `make docs`; tests/test_contract_js.py fails while this file is stale.
//
// An ES module: the dashboard's modules `import { CONTRACT } from "./contract.js"`.
export const CONTRACT = Object.freeze({
  "states": [
    "IN_PROGRESS",
    "COMPLETED",
    "PROCESSING_AI",
    "ARCHIVED",
    "FAILED"
  ],
  "liveStates": [
    "IN_PROGRESS",
    "COMPLETED",
    "PROCESSING_AI"
  ],
  "finalStates": [
    "ARCHIVED",
    "FAILED"
  ],
  "callIdPattern": "^\\.*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$",
  "excerptChars": 140,
  "utteranceMaxChars": 1000,
  "maxEventBytes": 16384,
  "wavHeaderBytes": 44,
  "events": {
    "state": [
      "id",
      "call_id",
      "state",
      "at",
      "type",
      "reason",
      "sentiment",
      "transcript_excerpt"
    ],
    "attempt": [
      "id",
      "call_id",
      "state",
      "at",
      "type",
      "step",
      "attempt",
      "outcome",
      "error",
      "duration_ms",
      "live",
      "window"
    ],
    "progress": [
      "id",
      "call_id",
      "state",
      "at",
      "type",
      "received",
      "duplicates",
      "out_of_order",
      "missing",
      "data_bytes",
      "last_packet_at"
    ],
    "segment": [
      "id",
      "call_id",
      "state",
      "at",
      "type",
      "segment",
      "packets",
      "seconds"
    ],
    "utterance": [
      "speaker",
      "track",
      "start_s",
      "end_s",
      "text",
      "sentiment",
      "id",
      "call_id",
      "state",
      "at",
      "type"
    ],
    "reset": [
      "type",
      "reason"
    ]
  }
});
