"""Logging for the API and the worker, set up one way: a readable console by default (warnings,
and at most one line per finished call); every job, cron run and retry with LOG_LEVEL=DEBUG.

LOG_FORMAT=json writes one JSON object per line (time, level, logger, message, and `call_id`
when the record carries one: our code passes it as `extra={"call_id": ...}`), for a collector
that indexes fields. Nothing is parsed out of messages, and no line holds a packet's data or a
transcript: messages never include them, and records carry no other extra fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Libraries whose INFO lines are per job or per request: detail, shown only at DEBUG (httpx's
# name the whole URL: a webhook endpoint's may hold a token).
CHATTY = ("arq", "uvicorn.access", "httpx")
# Libraries that bring handlers of their own (uvicorn's log config, arq's CLI): in JSON mode
# their lines go through the root's handler instead, so every line is JSON.
OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "arq")
# Where a record names its call: ours, and the audit trail's (core/audit.py).
CALL_ID_FIELDS = ("call_id", "audit_call_id")


def about(call_id: str) -> dict[str, str]:
    """The `extra` of a log line about one call: JSON lines carry it as the field `call_id`."""
    return {"call_id": call_id}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call_id = next((getattr(record, f) for f in CALL_ID_FIELDS if hasattr(record, f)), None)
        if call_id is not None:
            line["call_id"] = call_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"LOG_LEVEL {level!r} is not a logging level (DEBUG, INFO, WARNING...)")
    logging.basicConfig(level=numeric, format=FORMAT)
    root = logging.getLogger()
    root.setLevel(numeric)
    if log_format == "json":
        _all_json(root)
    for name in CHATTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


def _all_json(root: logging.Logger) -> None:
    formatter = JsonFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
    for name in OWN_HANDLERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
