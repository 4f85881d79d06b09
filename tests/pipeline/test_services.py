"""Reachability checks of the MLflow and Prefect servers."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from ttlora_moe.errors import BadInput


def test_service_checks_on_a_closed_port():
    from ttlora_moe.pipeline.services import check_mlflow, check_prefect

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BadInput, match=r"MLflow server at .* is unreachable") as info:
        check_mlflow(url, timeout=1)
    assert "make up" in str(info.value)
    with pytest.raises(BadInput, match=r"Prefect server at .* is unreachable"):
        check_prefect(url + "/api", timeout=1)


@pytest.fixture
def health_server():
    """A stand-in server on 127.0.0.1 that answers 200 on /health and /api/health, 404 elsewhere."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path in ("/health", "/api/health")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_service_checks_pass_on_a_healthy_server(health_server):
    from ttlora_moe.pipeline.services import check_mlflow, check_prefect

    assert check_mlflow(health_server) == health_server
    assert check_prefect(health_server + "/api") == health_server + "/api"


def test_something_else_on_the_port_is_bad_input(moto_endpoint):
    from ttlora_moe.pipeline.services import check_mlflow

    # moto answers 404 on /health: something listens, but it is not MLflow.
    with pytest.raises(BadInput, match="does not answer like a MLflow server"):
        check_mlflow(moto_endpoint, timeout=2)


def test_local_store_needs_no_server(monkeypatch):
    from ttlora_moe.pipeline.services import check_mlflow

    assert check_mlflow("sqlite:///tmp/x.db") is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert check_mlflow() is None


def test_credentials_are_redacted_in_messages():
    from ttlora_moe.pipeline.services import check_mlflow

    with pytest.raises(BadInput) as info:
        check_mlflow(f"http://user:hunter2@127.0.0.1:{free_port()}", timeout=1)
    assert "hunter2" not in str(info.value)
