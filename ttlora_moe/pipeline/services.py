"""Quick reachability checks for the MLflow and Prefect servers, run before any real work.

Each check makes one short HTTP request to the server's health endpoint and turns "nothing there"
into one :class:`BadInput` line, instead of a long retry loop and a stack trace minutes later.
A local store (``sqlite:``, ``file:``, a path) or Prefect's ephemeral mode needs no server and
passes without a request.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

from ttlora_moe.errors import BadInput

DEFAULT_TIMEOUT_S = 3.0
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _redact(url: str) -> str:
    """``url`` without any user:password part, fit for a message."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


def _get(url: str, timeout: float) -> tuple[int, str]:
    """GET ``url``: (status, first bytes of the body). Loopback addresses never go through a proxy."""
    handlers = [urllib.request.ProxyHandler({})] if urllib.parse.urlsplit(url).hostname in _LOOPBACK else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "*/*"}), timeout=timeout) as response:
            return response.status, response.read(256).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # it answered, just not with 2xx
        return exc.code, ""


def _check(name: str, base: str, health_path: str, fix: str, timeout: float) -> str:
    url = base.rstrip("/") + health_path
    try:
        status, _ = _get(url, timeout)
    except (urllib.error.URLError, OSError, ValueError):  # refused, timed out, unresolvable, malformed
        raise BadInput(f"{name} server at {_redact(base)} is unreachable", fix) from None
    if status != 200:
        raise BadInput(f"{_redact(base)} does not answer like a {name} server (GET {health_path}: HTTP {status})", fix)
    return base


def check_mlflow(uri: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Check the MLflow tracking server at ``uri`` (default ``MLFLOW_TRACKING_URI``) answers.

    Returns the URI checked, or None when the tracking URI is a local store that needs no server.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return None
    return _check("MLflow", uri, "/health", "start it with `make up` or set MLFLOW_TRACKING_URI", timeout)


def _prefect_profile_api_url() -> str | None:
    """The API URL of the active Prefect profile (only consulted when PREFECT_API_URL is unset)."""
    try:
        from prefect.settings import get_current_settings
    except ImportError:
        return None
    return get_current_settings().api.url


def check_prefect(api_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Check the Prefect API at ``api_url`` (default ``PREFECT_API_URL``, ending in ``/api``) answers.

    Returns the URL checked, or None when no API URL is set (Prefect then runs an ephemeral server).
    """
    api_url = api_url or os.environ.get("PREFECT_API_URL") or _prefect_profile_api_url()
    if not api_url:
        return None
    return _check("Prefect", api_url, "/health", "start it with `make up` or set PREFECT_API_URL", timeout)
