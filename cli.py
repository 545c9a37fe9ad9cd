"""`callstream`, the command line: `callstream simulate` (a client of the API: simulate/) and
`callstream erase --replay-ledger` (an operator's tool on the stores: jobs/ledger_replay.py).
Each command is imported only when asked for, so the client needs nothing of the server."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["erase"]:
        from jobs.ledger_replay import main as erase_main

        return erase_main(args[1:])
    from simulate.cli import main as simulate_main

    return simulate_main(args)


if __name__ == "__main__":
    sys.exit(main())
