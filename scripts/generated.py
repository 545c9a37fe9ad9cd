"""The one way a generated file is written or checked (docs/configuration.md, the dashboard's
contract.js): `--check` exits 1 while the file in the tree differs from what would be written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(
    target: Path, render: Callable[[], str], about: str, argv: list[str] | None
) -> int:
    parser = argparse.ArgumentParser(description=about)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not target.exists() or target.read_text() != text
        if stale:
            print(f"{target} is stale: run `make docs`", file=sys.stderr)
        return int(stale)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0
