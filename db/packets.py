"""What a packet is on its way in (NewPacket), what storing it found (PacketResult), and what the
flush reads back (StoredPacket)."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import NamedTuple, Protocol


class Track(StrEnum):
    """Whose audio a packet carries: each track is its own timeline (sequences, gaps, dedup).
    Twilio's names: `inbound` is what the caller says (the PBX receives it), `outbound` what the
    agent (or the application) says back. HTTP packets that name none are inbound."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"

    @property
    def number(self) -> int:
        """Its number in Redis and PostgreSQL (0, 1), and its channel in a stereo recording."""
        return TRACKS.index(self)


TRACKS = (Track.INBOUND, Track.OUTBOUND)


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
    @property
    def track(self) -> Track: ...


class NewPacket(NamedTuple):
    """A NamedTuple, not a frozen dataclass: built once for every media frame, where a frozen
    dataclass' __init__ (one object.__setattr__ a field) cost five times as much."""

    sequence: int
    timestamp: float
    data: str
    track: Track = Track.INBOUND


class PacketResult(NamedTuple):
    """A NamedTuple too: one for every packet stored (see NewPacket)."""

    sequence: int
    outcome: Outcome
    gap_from: int  # first missing sequence when outcome is AFTER_GAP

    @property
    def duplicate(self) -> bool:
        return self.outcome is Outcome.DUPLICATE


class StoredPacket(NamedTuple):
    """A packet as the call's stream holds it until its segment is flushed. A NamedTuple: a
    flush builds one for every entry it reads (3,000 a live segment of a two-track call), and
    the frozen dataclass it was cost ~5 µs each, a third of the flush's CPU."""

    sequence: int
    timestamp: float
    data: str
    received_at: float  # epoch seconds, from the stream entry id
    track: int = 0  # Track.number
    entry: tuple[int, int] = (0, 0)  # its stream entry id (ms, n): the segments' order
