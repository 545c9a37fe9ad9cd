"""Logging for the API and the worker, set up one way: a readable console by default (warnings,
and at most one line per finished call); every job, cron run and retry with LOG_LEVEL=DEBUG."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Libraries whose INFO lines are per job or per request: detail, shown only at DEBUG.
CHATTY = ("arq", "uvicorn.access")


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"LOG_LEVEL {level!r} is not a logging level (DEBUG, INFO, WARNING...)")
    logging.basicConfig(level=numeric, format=FORMAT)
    logging.getLogger().setLevel(numeric)
    for name in CHATTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
