"""What a packet is on its way in (NewPacket), what storing it found (PacketResult), and what the
flush reads back (StoredPacket)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class Outcome(IntEnum):
    """What the ingest script found about one packet (db/lua/ingest.lua returns these numbers)."""

    IN_ORDER = 0
    DUPLICATE = 1
    OUT_OF_ORDER = 2
    AFTER_GAP = 3


class PacketFields(Protocol):
    """What the ingest script reads of a packet: the API's validated models pass as they are."""

    @property
    def sequence(self) -> int: ...
    @property
    def timestamp(self) -> float: ...
    @property
    def data(self) -> str: ...


@dataclass(frozen=True, slots=True)
class NewPacket:
    sequence: int
    timestamp: float
    data: str


@dataclass(frozen=True, slots=True)
class PacketResult:
    sequence: int
    outcome: Outcome
    gap_from: int  # first missing sequence when outcome is AFTER_GAP

    @property
    def duplicate(self) -> bool:
        return self.outcome is Outcome.DUPLICATE


@dataclass(frozen=True, slots=True)
class StoredPacket:
    sequence: int
    timestamp: float
    data: str
    received_at: float  # epoch seconds, from the stream entry id
