"""Recordings in an S3-compatible object store (AUDIO_STORE_URL), for deployments whose audio
outgrows one database: a segment row's bytes go to an object, and PostgreSQL keeps the row's
heads and the object's key (db/segments.py). aiobotocore speaks S3 to AWS, MinIO, Ceph, R2 and
the like; credentials come the way botocore finds them (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role), never in the URL.

The URL: `s3://bucket[/prefix][?endpoint_url=http://host:port&region=us-east-1]`. The bucket
must exist: creating buckets is the deployment's business, not a worker's.

An object is written before the transaction that inserts the row naming it even begins (a slow
store must hold neither a connection nor the call's lock), so a committed row's object is always
there; an object whose row was never committed (another flusher stored the segment first, or
the worker died between the PUT and the commit) is left behind, unnamed, and costs its bytes
only: it lies under the call's prefix (`call_prefix`), where an erasure, on request or by
retention, deletes every object of the call, named or not (`delete_call`). Keys hold the
segment's last stream id, so two flushers never write one key with different bytes (two that
planned the same segment write the same object). Each part of a key is percent-encoded
(`key_part`), so that no part is `.` or `..` or holds a `/`: a filesystem-backed store refuses
dot segments for good, and a refusal for good must not be made of a call's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

# A store that does not answer is an outage to report (the API's 503, the worker's retry of the
# job), soon: botocore's defaults (a 60 s connect timeout, retried) would hold a request for
# minutes. Two tries of an attempt; a segment is a few hundred KB, so 30 s reads are ample.
CLIENT_CONFIG = AioConfig(
    connect_timeout=2, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"}
)


_KEY_SAFE = frozenset((string.ascii_letters + string.digits + "-_").encode())


def key_part(text: str) -> str:
    """`text` as one part of an object key: every byte but A-Z a-z 0-9 - _ percent-encoded
    (the dot included, so no part is a dot segment)."""
    return "".join(chr(b) if b in _KEY_SAFE else f"%{b:02X}" for b in text.encode())


class NoObjectStore(LookupError):
    """A segment's bytes are in an object store, and this process has none (AUDIO_STORE_URL
    unset, or set after the call on a process that was not restarted)."""


class ObjectsNotDeleted(RuntimeError):
    """The store answered a deletion but kept some objects (its per-key errors)."""


class BadStoreUrl(ValueError):
    """AUDIO_STORE_URL is not an s3:// URL this module can use."""


@dataclass(frozen=True, slots=True)
class StoreAddress:
    bucket: str
    prefix: str  # "" or ending with "/"
    endpoint_url: str | None
    region: str | None

    @classmethod
    def parse(cls, url: str) -> StoreAddress:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BadStoreUrl(f"AUDIO_STORE_URL must be s3://bucket[/prefix], not {url!r}")
        if parts.username or parts.password:
            raise BadStoreUrl("AUDIO_STORE_URL must not hold credentials: set AWS_* instead")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise BadStoreUrl(f"AUDIO_STORE_URL: unknown parameters {sorted(unknown)}")
        prefix = parts.path.strip("/")
        return cls(
            bucket=parts.netloc,
            prefix=f"{prefix}/" if prefix else "",
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
        )


class ObjectStore:
    """One S3 client for a process, opened at first use, closed with the process's resources."""

    def __init__(self, url: str) -> None:
        self.address = StoreAddress.parse(url)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()

    def key(self, call_id: str, segment: int, track: int, through: tuple[int, int]) -> str:
        """A new object's key: the segment, track and last entry, and a token of this PUT's
        own. Two flushers that plan the same segment never share a key, so the one that loses
        the race cannot write over what the winner stored (after audio redaction silenced it,
        say); the loser deletes its own object (delete_keys)."""
        token = secrets.token_hex(6)
        name = f"{segment:06d}.{track}.{through[0]}-{through[1]}.{token}"  # nothing to encode
        return f"{self.call_prefix(call_id)}{name}"

    async def put(self, key: str, data: bytes) -> None:
        client = await self._opened()
        await client.put_object(Bucket=self.address.bucket, Key=key, Body=data)

    async def get(self, key: str) -> bytes:
        client = await self._opened()
        answer = await client.get_object(Bucket=self.address.bucket, Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of an object (fewer at its end): a ranged GET."""
        if length <= 0:
            return b""
        client = await self._opened()
        wanted = f"bytes={start}-{start + length - 1}"
        try:
            answer = await client.get_object(Bucket=self.address.bucket, Key=key, Range=wanted)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # past the object's end
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data

    def call_prefix(self, call_id: str) -> str:
        """What every object of the call starts with, those no row names included."""
        return f"{self.address.prefix}{key_part(call_id)}/"

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete these objects (a lost race's own: no row names them)."""
        if not keys:
            return
        client = await self._opened()
        answer = await client.delete_objects(
            Bucket=self.address.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise ObjectsNotDeleted(
                f"the object store kept {len(answer['Errors'])} objects: "
                f"{first.get('Code')} {first.get('Message')}"
            )

    async def delete_call(self, call_id: str) -> int:
        """Delete every object of the call, the unnamed ones a lost race left included: found by
        their prefix, not by the rows naming them, so a re-run after a crash finds what is left.
        Returns how many went."""
        client = await self._opened()
        gone = 0
        while True:  # a page of up to 1,000 keys, deleted in one request, until none is left
            listed = await client.list_objects_v2(
                Bucket=self.address.bucket, Prefix=self.call_prefix(call_id), MaxKeys=1000
            )
            keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
            if not keys:
                return gone
            answer = await client.delete_objects(
                Bucket=self.address.bucket, Delete={"Objects": keys, "Quiet": True}
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise ObjectsNotDeleted(
                    f"the object store kept {len(answer['Errors'])} objects of call {call_id}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )
            gone += len(keys)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _opened(self) -> Any:
        async with self._opening:
            if self._client is None:
                session = get_session()
                self._client = await self._stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=self.address.endpoint_url,
                        region_name=self.address.region,
                        config=CLIENT_CONFIG,
                    )
                )
        return self._client
