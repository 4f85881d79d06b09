"""The MLflow client every pipeline module shares, and the tracking URI with credentials stripped."""

from __future__ import annotations

import urllib.parse

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


def experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client().create_experiment(name)
    except Exception as exc:  # another worker created it between our two calls
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise exc
        return experiment.experiment_id
