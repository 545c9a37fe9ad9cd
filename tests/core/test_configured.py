"""settings.py is a leaf, and what it no longer checks itself is still refused at start: the
values whose syntax is another module's rule, parsed by that module (core/configured.py) when
either process builds what it holds, naming the setting. import-linter cannot hold a root that
is a single module (settings.py), so a fresh interpreter shows what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.configured import check_settings
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
OURS = {"db", "core", "service", "jobs", "simulate", "devstack", "bench", "scripts", "cli"}
STORE_CLIENTS = {"aiobotocore", "botocore", "redis", "sqlalchemy", "asyncpg", "arq"}


def test_importing_the_settings_loads_nothing_of_ours_nor_any_stores_client():
    code = "import json, sys, settings; print(json.dumps(sorted(sys.modules)))"
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(ran.stdout)}

    assert loaded & OURS == set()
    assert loaded & STORE_CLIENTS == set()


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"audio_store_url": "http://bucket/x"}, "AUDIO_STORE_URL must be s3://"),
        ({"webhook_secret": "not-whsec"}, "WEBHOOK_SECRET must be whsec_"),
        ({"webhook_secret": "whsec_c2hvcnQ="}, "24 to 64 bytes"),
        ({"webhook_events": "call.archived,call.exploded"}, r"WEBHOOK_EVENTS.*call\.exploded"),
        ({"redact_pii_entities": "email,shoe_size"}, "unknown PII entities.*shoe_size"),
        ({"queue_redis_url": "redis+cluster://127.0.0.1:7000"}, "QUEUE_REDIS_URL must be a single"),
    ],
)
def test_a_value_another_module_parses_is_refused_at_start_naming_the_setting(
    setting: dict[str, str], says: str
):
    settings = make_settings("postgresql://x", "redis://x", **setting)

    with pytest.raises(ValueError, match=says):
        check_settings(settings)


def test_a_redis_cluster_for_the_calls_needs_a_single_redis_for_the_queue():
    with pytest.raises(ValueError, match="set QUEUE_REDIS_URL"):
        check_settings(make_settings("postgresql://x", "redis+cluster://127.0.0.1:7000"))
    good = make_settings(
        "postgresql://x", "redis+cluster://127.0.0.1:7000", queue_redis_url="redis://127.0.0.1"
    )
    assert check_settings(good) is good


def test_the_defaults_pass():
    settings = make_settings("postgresql://x", "redis://x")
    assert check_settings(settings) is settings
