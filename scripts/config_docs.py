"""Write docs/configuration.md from Settings: every setting as its environment variable, its
default and its meaning (the field's description), in the sections settings.py marks. `make docs`
runs it; tests/test_config_docs.py fails when the file is stale.

    python -m scripts.config_docs            # rewrite docs/configuration.md
    python -m scripts.config_docs --check    # exit 1 if it is stale
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from scripts.generated import write_or_check
from settings import Settings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """\
# Configuration

<!-- Written by `make docs` (python -m scripts.config_docs) from settings.py: change a setting's
description there, then run `make docs`; tests/test_config_docs.py fails while this is stale. -->

Every setting is an environment variable (or a line in `.env`), read once when a process starts
(`settings.py`); an invalid value stops the process, naming the variable.
"""

# Read where Settings is not: by `make run` (devstack/run.py), uvicorn and the metrics registry,
# and by the test suite. Their one home is this table: (variable, default, meaning).
OUTSIDE = (
    ("`HOST` / `PORT`", "`127.0.0.1` / `8000`", "where `make run` serves the API"),
    (
        "`WEB_CONCURRENCY`",
        "the cores (`make run`)",
        "API processes; uvicorn reads it (`--workers`). They share nothing but Redis and "
        "PostgreSQL",
    ),
    ("`WORKER_PROCESSES`", "the cores (`make run`)", "arq worker processes `make run` starts"),
    (
        "`REDIS_APPENDFSYNC`",
        "`everysec`",
        "`make run`'s embedded Redis: `always` for durability across a hard kill of the host "
        "([What a 2xx promises](operations.md#what-a-2xx-promises))",
    ),
    ("`CALLSTREAM_DATA_DIR`", "`.data/`", "where `make run` keeps its embedded servers' data"),
    (
        "`PROMETHEUS_MULTIPROC_DIR`",
        "set by `make run`",
        "the directory every API process and worker counts its metrics into; unset, `/metrics` "
        "shows only the process that answers",
    ),
    (
        "`TEST_DATABASE_URL` / `TEST_REDIS_URL`",
        "unset",
        "the tests run against these servers instead of starting their own (the suite empties "
        "them between tests)",
    ),
    (
        "`TEST_REDIS_CLUSTER_URL`",
        "unset",
        "a `redis+cluster://` URL for the cluster tests (FLUSHALL on every master between tests)",
    ),
)


def default_of(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value() or None
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, frozenset | set):  # no order of their own: sorted, to be stable
        return f"`{','.join(sorted(map(str, value)))}`" if value else "none"
    if isinstance(value, list | tuple):  # in their order, which may mean something (delays)
        return f"`{','.join(map(str, value))}`" if value else "none"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def sections() -> list[tuple[str, list[tuple[str, FieldInfo]]]]:
    """The settings in the order of settings.py, cut where a field marks a new group."""
    found: list[tuple[str, list[tuple[str, FieldInfo]]]] = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        group = extra.get("group") if isinstance(extra, dict) else None
        if group is not None:
            found.append((str(group), []))
        if not found:
            raise ValueError(f"settings.py: {name}, the first setting, must mark its group")
        if not field.description:
            raise ValueError(f"settings.py: {name} has no description (Field(description=...))")
        found[-1][1].append((name, field))
    return found


def table(title: str, rows: list[tuple[str, str, str]]) -> str:
    lines = [f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def render() -> str:
    parts = [HEADER]
    for title, fields in sections():
        rows = [(f"`{n.upper()}`", default_of(f), f.description or "") for n, f in fields]
        parts.append(table(title, rows))
    parts.append(table("Read outside Settings", list(OUTSIDE)))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(TARGET, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
