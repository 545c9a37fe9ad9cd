"""The command lines are defined once (devstack/commands.py); the files for humans that repeat
them (Procfile, docker-compose.yml) must not drift from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from devstack.commands import API_TARGET, UVICORN_FLAGS, WORKER_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_the_procfile_runs_the_same_api_and_worker():
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines())

    assert f"uvicorn {API_TARGET} " in lines["web"]
    assert " ".join(UVICORN_FLAGS) in lines["web"]
    assert lines["worker"] == f"arq {WORKER_SETTINGS}"


def test_docker_compose_runs_the_same_api_and_worker_with_secrets_from_the_environment():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = compose["services"]["web"]["command"]

    assert web[:2] == ["uvicorn", API_TARGET]
    assert " ".join(UVICORN_FLAGS) in " ".join(web)
    assert compose["services"]["worker"]["command"] == ["arq", WORKER_SETTINGS]
    assert compose["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: callstream" not in text  # no secret written in the file


def test_docker_compose_holds_the_app_back_until_redis_has_loaded_its_data():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redises = {"redis": compose["services"]["redis"], "node": compose["x-redis-node"]}

    for name, redis in redises.items():
        check = " ".join(redis["healthcheck"]["test"])
        # A Redis reading its AOF back answers PING with LOADING, which is not health.
        assert check.endswith("ping | grep -q PONG"), name
        assert redis["healthcheck"]["start_period"] == "5m", name
    services = compose["services"]
    assert services["migrate"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    for app in ("web", "worker"):
        assert services[app]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, app
