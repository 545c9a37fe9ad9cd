"""Callstream's configuration: every knob is an environment variable with a laptop default."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from db.redis_client import is_cluster_url

# Embedded defaults used by `make run`; `make run` exports the real URLs of the servers it starts.
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/callstream"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """Read once per process by a composition root (the API lifespan, the worker startup)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    # The call keys: a single Redis (redis://, rediss://) or a Redis Cluster
    # (redis+cluster://host:port[,host:port...], rediss+cluster:// for TLS; password as for
    # redis://). arq's queue needs a single Redis: QUEUE_REDIS_URL, by default REDIS_URL when
    # that is one (a cluster needs it set).
    redis_url: str = DEFAULT_REDIS_URL
    queue_redis_url: str | None = None

    # Access (core/access.py): comma-separated API keys per role, or files of them (secrets).
    # With none at all, the API is open but serves loopback clients only.
    ingest_api_keys: SecretStr = SecretStr("")
    supervisor_api_keys: SecretStr = SecretStr("")
    admin_api_keys: SecretStr = SecretStr("")
    ingest_api_keys_file: Path | None = None
    supervisor_api_keys_file: Path | None = None
    admin_api_keys_file: Path | None = None
    # INFO: warnings and one line per finished call; DEBUG adds every job, cron run and retry.
    log_level: str = "INFO"
    # text: a readable console; json: one JSON object per line (time, level, logger, message,
    # call_id when the line is about a call) for a log collector.
    log_format: Literal["text", "json"] = "text"

    # Ingestion
    max_packet_data_bytes: int = Field(64 * 1024, gt=0)
    max_batch_packets: int = Field(500, gt=0)
    # The largest request body, refused by its Content-Length before a byte is read (413).
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Requests a second per API key (0: no limit). Reads are limited; ingestion is not by
    # default: a PBX that is throttled loses audio, and a call's size is capped anyway.
    read_rate_limit: int = Field(50, ge=0)
    ingest_rate_limit: int = Field(0, ge=0)
    redis_pool_size: int = Field(64, gt=0)
    redis_timeout_s: float = Field(1.0, gt=0)
    ingest_fast_path: bool = True
    # The media WebSocket: a stream with no frame for this long is closed (its packets kept);
    # browsers (which send an Origin) may connect only from these origins (comma-separated).
    ws_idle_timeout_s: float = Field(60.0, gt=0)
    ws_allowed_origins: Annotated[frozenset[str], NoDecode] = frozenset()
    redis_pipelining: bool = True
    # The durability of an acknowledgement (README, Reliability): with N > 0, a packet or a
    # completion is answered only once N replicas of the node holding the call have it (WAIT),
    # else 503 not_replicated after REDIS_WAIT_TIMEOUT_MS. 0: as soon as the master has it.
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout_ms: int = Field(100, gt=0)

    # Backpressure: past this many completed calls waiting for the worker, new calls get 503
    # (packets of live calls never do). 0: no limit.
    backlog_limit: int = Field(20_000, ge=0)

    # Completion
    call_idle_timeout_s: float = Field(30.0, gt=0)
    sweep_interval_s: int = Field(5, ge=1, le=60)
    key_retention_s: int = Field(3600, ge=1)
    completed_marker_retention_s: int = Field(7 * 24 * 3600, ge=1)
    missing_list_cap: int = Field(1000, ge=0)

    # Per-call limits (abuse resistance)
    # What one call may hold: a request whose new packets would pass either cap is refused whole
    # (413 call_too_large). A 4-hour call at 50 packets/s of 216-byte payloads (720,000 packets,
    # 156 MB of data) fits. db/intake.py's CallLimits has the same defaults.
    max_call_packets: int = Field(1_000_000, ge=1)
    max_call_bytes: int = Field(256 * 1024 * 1024, ge=1)

    # The live event feed (GET /v1/events, WS /ws/supervisor): how many events Redis keeps (a
    # reader can resume within them; about 200 bytes each), and how often a live call reports
    # its counters (0: only state changes and AI attempts). db/events.py's FeedLimits has the
    # same defaults.
    events_max_len: int = Field(100_000, ge=100)
    events_progress_interval_s: float = Field(1.0, ge=0)
    # A quiet feed connection gets a comment this often, so that proxies keep it open.
    events_heartbeat_s: float = Field(15.0, gt=0)

    # The AI provider: mock (the shipped flaky mock, the default), local (pocketsphinx and
    # vaderSentiment in a process pool, offline), openai (any OpenAI-compatible service).
    ai_provider: Literal["mock", "local", "openai"] = "mock"
    ai_failure_rate: float = Field(0.25, ge=0.0, le=1.0)
    ai_latency_min_s: float = Field(1.0, ge=0.0)
    ai_latency_max_s: float = Field(3.0, ge=0.0)
    ai_seed: int | None = None
    # Mock outage bursts (chaos testing): down for the first DURATION s of every PERIOD s.
    ai_outage_period_s: float | None = Field(None, gt=0)
    ai_outage_duration_s: float = Field(0.0, ge=0)
    ai_max_attempts: int = Field(5, ge=1)
    ai_attempt_timeout_s: float = Field(10.0, gt=0)
    ai_backoff_base_s: float = Field(0.5, ge=0.0)
    ai_backoff_max_s: float = Field(10.0, ge=0.0)
    ai_call_budget_s: float = Field(300.0, gt=0)
    ai_breaker_threshold: int = Field(10, ge=1)
    ai_breaker_cooldown_s: float = Field(10.0, gt=0)
    # Requests to the provider at once, across every worker: set it to the provider's limit.
    # The mock has no limit of its own, so the default lets a large burst run at once.
    ai_max_concurrency: int = Field(1000, ge=1)
    # AI_PROVIDER=openai: POST {AI_BASE_URL}/v1/audio/transcriptions with AI_TRANSCRIPTION_MODEL;
    # sentiment by chat completions with AI_SENTIMENT_MODEL, or VADER here (AI_SENTIMENT=local).
    ai_base_url: str | None = None
    ai_api_key: SecretStr = SecretStr("")
    ai_transcription_model: str | None = None
    ai_sentiment_model: str | None = None
    ai_sentiment: Literal["provider", "local"] = "provider"
    # The provider's largest upload (OpenAI: 25 MB); a longer call's WAV is sent in parts.
    ai_max_upload_bytes: int = Field(25_000_000, ge=64 * 1024)
    # Extra seconds a transcription attempt (and the call's AI budget) gets per second of audio,
    # within JOB_TIMEOUT_S. Unset: the provider's own (mock 0, local 1.5, openai 0.5).
    ai_timeout_per_audio_s: float | None = Field(None, ge=0)
    # What HTTP packets' data is (a media stream says its own, in start.mediaFormat).
    packet_audio_encoding: str = "audio/x-mulaw;rate=8000"

    # The worker
    # Calls in flight per worker: jobs wait on I/O (the AI, the stores), so hundreds are cheap;
    # what bounds the AI work is AI_MAX_CONCURRENCY.
    worker_max_jobs: int = Field(1000, ge=1)
    job_timeout_s: int = Field(600, ge=1)
    # CPU priority of the worker below the API's (os.nice increment; 0 leaves it as it is).
    worker_nice: int = Field(10, ge=0, le=19)
    lease_ttl_s: float = Field(10.0, gt=0)
    reaper_interval_s: int = Field(2, ge=1, le=60)
    shutdown_grace_s: int = Field(20, ge=0)
    db_retry_max_s: float = Field(30.0, gt=0)

    @field_validator("ws_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

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
