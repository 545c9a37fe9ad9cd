"""The ingestion answers as plain JSON-ready dicts: built once per packet, serialised once.

The FastAPI routes return them through their response models (which document and check them);
the fast path serialises them directly with orjson. One builder, so both answer alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from db.streams import Outcome, PacketResult


def _warning(kind: str, message: str, first: int | None = None, last: int | None = None) -> Any:
    return {"type": kind, "message": message, "missing_from": first, "missing_to": last}


def warnings_of(result: PacketResult) -> list[dict[str, Any]]:
    seq = result.sequence
    if result.outcome is Outcome.IN_ORDER:
        return []
    if result.outcome is Outcome.DUPLICATE:
        return [_warning("duplicate", f"sequence {seq} was already received")]
    if result.outcome is Outcome.OUT_OF_ORDER:
        return [_warning("out_of_order", f"sequence {seq} arrived after a higher sequence")]
    first, last = result.gap_from, seq - 1
    return [_warning("gap", f"sequences {first}..{last} are missing so far", first, last)]


def packet_answer(call_id: str, result: PacketResult) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "sequence": result.sequence,
        "duplicate": result.duplicate,
        "warnings": warnings_of(result),
    }


def batch_answer(call_id: str, results: Sequence[PacketResult]) -> dict[str, Any]:
    duplicates = sum(r.duplicate for r in results)
    return {
        "call_id": call_id,
        "accepted": len(results) - duplicates,
        "duplicates": duplicates,
        "results": [packet_answer(call_id, r) for r in results],
    }
