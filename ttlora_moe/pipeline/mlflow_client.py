"""The MLflow client every pipeline module shares, and the tracking URI with credentials stripped."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def client() -> MlflowClient:
    """An MLflow client on the current tracking URI (``MLFLOW_TRACKING_URI``)."""
    return MlflowClient()


def tracking_uri() -> str:
    """The tracking URI in use, without any user:password part (it goes into cache keys and logs)."""
    uri = str(mlflow.get_tracking_uri())
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "RESOURCE_DOES_NOT_EXIST" in str(exc)


def artifact_location(name: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database for a local sqlite store (MLflow's
    default would be ``./mlruns`` under whatever directory the process runs in), else the server's choice."""
    uri = str(mlflow.get_tracking_uri())
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / name).as_uri()


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created when missing (safe when several workers race to create it)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client().create_experiment(name, artifact_location=artifact_location(name))
    except Exception as exc:  # another worker created it between our two calls
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise exc
        return experiment.experiment_id
