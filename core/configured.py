"""The settings whose rule belongs to another module, checked at start by both composition roots
(service/resources.py, jobs/resources.py): settings.py imports nothing of ours, so a value only
that module can parse (an object store's URL, a webhook secret, event or PII entity names, a
Redis Cluster's scheme) is parsed here, once, by the module that uses it, and a wrong one stops
the process at start saying what is wrong, never a call later."""

from __future__ import annotations

from core.redaction import parse_entities
from core.webhooks import secret_key
from db.object_store import StoreAddress
from db.outbox import event_types
from db.redis_client import is_cluster_url
from settings import Settings


def check_settings(settings: Settings) -> Settings:
    """`settings`, once every value another module parses is one it accepts; ValueError (or a
    subclass) naming the setting otherwise."""
    if settings.audio_store_url:
        StoreAddress.parse(settings.audio_store_url)
    secret = settings.webhook_secret.get_secret_value()
    if secret:
        secret_key(secret)
    event_types(settings.webhook_events)
    parse_entities(settings.redact_pii_entities)
    if is_cluster_url(settings.queue_url):
        raise ValueError(
            "REDIS_URL is a Redis Cluster: set QUEUE_REDIS_URL to a single Redis for the job "
            "queue (arq does not support Redis Cluster)"
            if settings.queue_redis_url is None
            else "QUEUE_REDIS_URL must be a single Redis (redis:// or rediss://)"
        )
    return settings
