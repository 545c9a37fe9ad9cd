"""Peer clients of the PBX feeds, each written from its protocol's own definition (not from
Callstream's code), byte for byte as the PBX sends it: the tests and `callstream simulate
--transport audiosocket|asterisk|freeswitch|audiohook` both use them, so anyone can see a feed
work without a PBX.

- AudioSocket: Asterisk's include/asterisk/res_audiosocket.h (kinds) and res/res_audiosocket.c
  (ast_audiosocket_init: kind 0x01, length 16, the UUID's bytes; ast_audiosocket_send_frame:
  kind, htons(length), payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

# AudioSocket message kinds (enum ast_audiosocket_msg_kind).
AS_HANGUP = 0x00
AS_UUID = 0x01
AS_DTMF = 0x03
AS_AUDIO = 0x10  # slin 8 kHz from the dialplan application; the channel's codec otherwise
AS_SLIN_KINDS = {12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14, 44100: 0x15, 48000: 0x16,
                 96000: 0x17, 192000: 0x18}  # fmt: skip
AS_ERROR = 0xFF
ANSWER_TIMEOUT_S = 10.0


def audiosocket_message(kind: int, payload: bytes = b"") -> bytes:
    """kind, then the payload's length as 16 bits in network order, then the payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocketPeer:
    """Asterisk's side of one AudioSocket connection (one party of a call)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> AudioSocketPeer:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_uuid(self, call: uuid.UUID) -> None:
        await self.send(audiosocket_message(AS_UUID, call.bytes))

    async def send_audio(self, audio: bytes, frame_bytes: int, kind: int = AS_AUDIO) -> None:
        """`audio` as messages of `frame_bytes` (320: 20 ms of 8 kHz slin), the last shorter."""
        for at in range(0, len(audio), frame_bytes):
            await self.send(audiosocket_message(kind, audio[at : at + frame_bytes]))

    async def hangup(self) -> None:
        await self.send(audiosocket_message(AS_HANGUP))

    async def answer(self) -> bytes:
        """Everything the server sends until it closes the connection (or resets it: a server
        closing with our bytes unread)."""
        received = b""
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                while chunk := await self.reader.read(4096):
                    received += chunk
        return received

    def drop(self) -> None:
        """The connection lost mid-call (a reset, no goodbye)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
