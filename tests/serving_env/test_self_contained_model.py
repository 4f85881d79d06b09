"""A registered bundle served from a fresh virtualenv that has MLflow but not this project: MLflow's default
environment manager (virtualenv) builds the model's own environment from its requirements, the code
travels with the model, the base model's files too. `make test-serving-env` runs it (minutes: it installs
torch and transformers into a new environment); `make test` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.serving_env


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_registered_bundle_serves_from_a_fresh_virtualenv(moe_env, moe_bundle, tmp_path):
    import mlflow

    from tests.conftest import free_port
    from ttlora_moe.pipeline.mlflow_client import experiment_id
    from ttlora_moe.pipeline.pyfunc import BundlePyfunc, bundle_artifacts, log_pyfunc

    bundle_dir, _ = moe_bundle
    store = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(store)
    try:
        with mlflow.start_run(experiment_id=experiment_id("serving-env")):
            info = log_pyfunc("bundle", BundlePyfunc, bundle_artifacts(bundle_dir))
        registered = mlflow.register_model(info.model_uri, "ttlora-moe")
    finally:
        mlflow.set_tracking_uri(None)
    uri = f"models:/ttlora-moe/{registered.version}"

    client = tmp_path / "client"  # MLflow only: no torch, no transformers, no ttlora_moe
    _run([sys.executable, "-m", "venv", str(client)], dict(os.environ), 120)
    pyenv = shutil.which("pyenv") or str(Path.home() / ".pyenv" / "bin" / "pyenv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TTLORA_PROJECT_DIR")}
    env.update(PATH=os.pathsep.join([str(client / "bin"), str(Path(pyenv).parent), env.get("PATH", "")]),
               MLFLOW_TRACKING_URI=store, MLFLOW_ENV_ROOT=str(tmp_path / "envs"), HOME=str(tmp_path / "home"))
    _run([str(client / "bin" / "pip"), "install", "-q", f"mlflow=={version('mlflow')}"], env, 900)
    probe = _run([str(client / "bin" / "python"), "-c", "import importlib.util as u; "
                  "print([m for m in ('torch', 'transformers', 'ttlora_moe') if u.find_spec(m)])"], env, 60, tmp_path)
    assert probe.strip() == "[]"

    dockerfile = tmp_path / "docker"
    _run([str(client / "bin" / "mlflow"), "models", "generate-dockerfile", "-m", uri, "-d", str(dockerfile)], env, 600, tmp_path)
    text = (dockerfile / "Dockerfile").read_text()
    assert "mlflow" in text and (dockerfile / "model_dir").is_dir()
    requirements = next((dockerfile / "model_dir").rglob("requirements.txt")).read_text()
    assert f"torch=={version('torch')}" in requirements and "ttlora" not in requirements
    assert next((dockerfile / "model_dir").rglob("ttlora_moe/moe/mixture.py"))  # the code travels with the model

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(client / "bin" / "mlflow"), "models", "serve", "-m", uri, "-h", "127.0.0.1",
                               "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              cwd=tmp_path)
    try:
        deadline = time.monotonic() + 1800  # the first serve builds the model's environment
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(2)
        body = json.dumps({"dataframe_records": [{"text": "the movie 3 was good"},
                                                 {"text": "premise the cat 4 sat on the mat",
                                                  "text_pair": "hypothesis the cat is happy"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2 and all("router_confidence" in p for p in predictions)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
