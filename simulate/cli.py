"""The `callstream` console script (being built: see issue 9)."""

import sys


def main() -> int:
    print("callstream simulate: not built yet", file=sys.stderr)  # noqa: T201
    return 2
