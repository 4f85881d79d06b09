"""The Kubernetes job a flow run of the GPU pool becomes, rendered from infra/k8s/base-job-template.json by
prefect-kubernetes' own job configuration code (what its worker does before it calls the cluster; no
cluster needed): image, GPU request, environment and secrets."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT

pytest.importorskip("prefect_kubernetes", reason="the k8s extra (make setup installs it)")

TEMPLATE = PROJECT_ROOT / "infra" / "k8s" / "base-job-template.json"
API_URL = "http://prefect-server.ttlora.svc.cluster.local:4200/api"


def render(job_variables: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The job manifest of a ``train-expert`` flow run with these deployment/run job variables, and the run."""
    from prefect.client.schemas.objects import Flow, FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    flow = Flow(id=uuid.uuid4(), name="train-expert")
    run = FlowRun(id=uuid.uuid4(), name="train-expert-films", flow_id=flow.id, parameters={"task": "films"})
    with temporary_settings({PREFECT_API_URL: API_URL}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
            json.loads(TEMPLATE.read_text()), job_variables))
        config.prepare_for_flow_run(run, flow=flow, worker_name="gpu-worker")
    return config.job_manifest, run


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the ``valueFrom`` of a variable read from a secret or the pod."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


def test_a_flow_run_pod_requests_a_gpu_runs_the_image_and_reads_s3_keys_from_the_secret():
    manifest, run = render({"image": "registry.example.com/ttlora-moe-worker:gpu-1",
                            "mlflow_tracking_uri": "http://mlflow.ttlora:5000", "s3_secret_name": "ttlora-s3-keys"})
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "ttlora"
    pod = manifest["spec"]["template"]["spec"]
    box = container(manifest)
    assert box["image"] == "registry.example.com/ttlora-moe-worker:gpu-1"
    assert box["resources"]["limits"]["nvidia.com/gpu"] == 1 and box["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert box["resources"]["requests"]["memory"] == "8Gi" and "cpu" not in box["resources"]["limits"]  # unset: no limit
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = env_of(manifest)
    assert env["PREFECT_API_URL"] == API_URL and env["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ttlora:5000"
    assert env["TTLORA_S3"] == "1" and env["TTLORA_S3_BUCKET"] == "ttlora-moe"
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.ttlora.svc.cluster.local:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # from the Secret, never a value in the manifest
        assert env[key] == {"secretKeyRef": {"name": "ttlora-s3-keys", "key": key}}
    assert env["TTLORA_WORKER_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}  # MLflow tag ttlora.worker
    assert box["args"] == ["prefect", "flow-run", "execute"]


def test_job_variables_choose_the_gpus_and_the_nodes():
    manifest, _ = render({"gpu_count": 2, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                          "namespace": "ml", "env": {"TTLORA_GIT_BRANCH": "tasks/reviews"}})
    box = container(manifest)
    assert box["resources"]["limits"]["nvidia.com/gpu"] == 2 == box["resources"]["requests"]["nvidia.com/gpu"]
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert manifest["metadata"]["namespace"] == "ml"
    assert env_of(manifest)["TTLORA_GIT_BRANCH"] == "tasks/reviews"  # extra env merged with the template's
    assert "AWS_SECRET_ACCESS_KEY" in env_of(manifest)
