"""A small cluster on 127.0.0.1 whose workers share nothing but the services.

Services: a real ``prefect server`` (sqlite), an ``mlflow server`` (sqlite, artifacts proxied to S3),
S3 on moto (the DVC remote, MLflow's artifacts and Prefect's result storage) and a bare git
repository. The repository holds this project's working tree (no history), the tiny random BERT and
a toy params.yaml; three toy tasks are registered from clone A (data pushed to the DVC remote, the
task committed and pushed). Two process workers are started from clones A and B, each with its own
``PREFECT_HOME``, ``TTLORA_DATA_DIR`` and ``TTLORA_CACHE``; only A has a data mirror. Flow runs of
the ``remote`` deployments clone the code themselves, so a worker's own checkout only starts it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, S3_ENV, free_port, make_tiny_model
from tests.toys import write_toy_task

BIN = Path(sys.executable).parent
POOL = "distributed"
BUCKET = "ttlora-distributed"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}
TASKS = {"films": "the movie {i} was {w}", "queries": "what is the {i} question {w}", "pets": "the dog {i} sat on a mat {w}"}
PARAMS = {"tasks": [], "base_model": {"ref": "models/tiny-bert"}, "tt": {"rank": 2, "alpha": 4.0},
          "prepare": {"min_rows": 5, "validation_max_rows": 60},
          "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_train_samples": 64, "evals_per_epoch": 1},
          "router": {"max_epochs": 10}, "bundle": {"test_per_task": 40, "min_router_accuracy": 0.5}}
SEED_SKIP = ("data/tasks/", "data/raw/", "dvc.lock", "params.yaml")  # the project's own tasks stay out
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_IDENTITY}).stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any project, Prefect, MLflow or S3 setting, plus ``extra``."""
    drop = set(S3_ENV) | {"PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "PYTEST_CURRENT_TEST"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TTLORA_")}
    return {**env, **extra}


@dataclass
class Process:
    """A service or worker this fixture started, in its own session, logging to ``log``."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to this process, its group and every descendant (flow runs included); SIGKILL after 15 s."""
        import psutil

        try:
            family = [psutil.Process(self.popen.pid), *psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in family:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def start(name: str, args: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Process:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("w") as out:
        popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Process(name, popen, log)


def wait_healthy(process: Process, url: str, timeout: float = 180) -> None:
    """Until ``url`` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}")
        try:
            with opener.open(url, timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{process.name} not healthy at {url} after {timeout:.0f} s:\n{process.tail()}")


@dataclass
class Cluster:
    """What the test needs to drive and inspect the cluster."""

    root: Path
    origin: Path
    api_url: str
    mlflow_url: str
    s3_env: dict[str, str]
    mirror: Path
    workers: dict[str, Process] = field(default_factory=dict)
    registered: dict[str, dict] = field(default_factory=dict)

    def worker_dir(self, name: str) -> Path:
        return self.root / name


def seed_repository(seed: Path, origin: Path) -> None:
    """``origin``: a bare repository whose ``main`` holds this project's working tree (tracked and
    untracked files, no history), the tiny BERT under models/ and the toy params.yaml."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, listed):
        source = PROJECT_ROOT / rel
        if rel.startswith(SEED_SKIP) or not source.is_file():
            continue
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, seed / rel)
    (seed / "data" / "tasks").mkdir(parents=True, exist_ok=True)
    (seed / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (seed / "data" / "raw" / ".gitkeep").touch()
    (seed / "params.yaml").write_text("# toy params of the distributed test\n" + yaml.safe_dump(PARAMS, sort_keys=False))
    make_tiny_model(seed / "models" / "tiny-bert", "bert")
    git(seed.parent, "init", "-q", "--bare", "-b", "main", str(origin))
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "commit", "-qm", "ttlora-moe working tree for the distributed test")
    git(seed, "push", "-q", str(origin), "main")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_endpoint) -> Iterator[Cluster]:
    """Services up, three tasks registered from clone A, two workers polling pool ``distributed``."""
    import boto3

    root = tmp_path_factory.mktemp("cluster")
    logs = root / "logs"
    s3_env = {**S3_KEYS, "AWS_ENDPOINT_URL": moto_endpoint, "MLFLOW_S3_ENDPOINT_URL": moto_endpoint,
              "TTLORA_DVC_REMOTE": f"s3://{BUCKET}/dvc"}
    boto3.client("s3", endpoint_url=moto_endpoint, **{k.lower(): v for k, v in S3_KEYS.items() if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    prefect_port, mlflow_port = free_port(), free_port()
    api_url, mlflow_url = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    processes: list[Process] = []
    try:
        # Both servers boot while the repository is seeded; the deployment and the workers start while the
        # tasks are registered.
        processes.append(start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                  "--port", str(prefect_port), "--analytics-off"], root,
                               clean_env(PREFECT_HOME=str(root / "prefect-server")), logs))
        processes.append(start("mlflow-server", [str(BIN / "mlflow"), "server", "--backend-store-uri",
                                                 f"sqlite:///{root}/mlflow.db", "--artifacts-destination",
                                                 f"s3://{BUCKET}/mlflow", "--serve-artifacts", "--host", "127.0.0.1",
                                                 "--port", str(mlflow_port), "--workers", "1"], root,
                               clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **s3_env), logs))
        origin = root / "origin.git"
        (root / "seed").mkdir()
        seed_repository(root / "seed", origin)
        clus = Cluster(root, origin, api_url, mlflow_url, s3_env, root / "mirror")
        for name in ("worker-a", "worker-b"):
            git(root, "clone", "-q", origin.as_uri(), str(clus.worker_dir(name) / "checkout"))
        wait_healthy(processes[0], f"{api_url}/health")
        deployer = deploy(clus.worker_dir("worker-a") / "checkout", clus, logs)
        processes.append(deployer)
        for name, mirror in (("worker-a", clus.mirror), ("worker-b", None)):
            clus.workers[name] = start_worker(name, mirror, clus, logs)
            processes.append(clus.workers[name])
        clus.registered = register_tasks(clus.worker_dir("worker-a") / "checkout", clus)
        if deployer.popen.wait(timeout=600) != 0:
            raise RuntimeError(f"prefect deploy failed:\n{deployer.tail()}")
        wait_healthy(processes[1], f"{mlflow_url}/health")
        for worker in clus.workers.values():
            wait_polling(worker)
        yield clus
    finally:
        for process in reversed(processes):
            process.stop()


def register_tasks(clone: Path, clus: Cluster) -> dict[str, dict]:
    """Register the three toy tasks from ``clone`` with the project's one registration path (in this process)."""
    from ttlora_moe.pipeline.registration import register_task
    from ttlora_moe.pipeline.task_validation import TaskSpec

    for name, template in TASKS.items():
        write_toy_task(clus.root, name, template, mirror=clus.mirror, cards=clus.root / "unused-cards")
    env = {"TTLORA_PROJECT_DIR": str(clone), **clus.s3_env}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DATA_MIRROR", "TTLORA_S3", *S3_ENV):
            mp.delenv(name, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        return {name: register_task(TaskSpec(name=name, source=str(clus.mirror / name), text="sentence", label="label"))
                for name in TASKS}


def service_env(clus: Cluster, home: Path, **extra: str) -> dict[str, str]:
    """What any process of the cluster gets: the Prefect API, MLflow, S3 and the DVC remote, its own PREFECT_HOME."""
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    return clean_env(PREFECT_API_URL=clus.api_url, PREFECT_HOME=str(home / "prefect"), MLFLOW_TRACKING_URI=clus.mlflow_url,
                     HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **clus.s3_env, **extra)


def deploy(clone: Path, clus: Cluster, logs: Path) -> Process:
    """The pool and a RemoteFileSystem block in S3 (here), then, started in the background from ``clone``:
    that block as the server's default result storage and ``prefect deploy --name remote`` of its prefect.yaml."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    with temporary_settings({PREFECT_API_URL: clus.api_url}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        RemoteFileSystem(basepath=f"s3://{BUCKET}/prefect-results").save("ttlora-results", overwrite=True)
    env = service_env(clus, clus.root / "deployer", TTLORA_REMOTE_POOL=POOL, TTLORA_GIT_REPO=clus.origin.as_uri(),
                      TTLORA_GIT_BRANCH="main")
    prefect = BIN / "prefect"
    return start("deploy", ["bash", "-c", f"'{prefect}' experimental result-storage set remote-file-system/ttlora-results"
                                          f" && '{prefect}' --no-prompt deploy --name remote"], clone, env, logs)


def start_worker(name: str, mirror: Path | None, clus: Cluster, logs: Path) -> Process:
    """A process worker started in ``<name>/checkout`` with a data folder, cache and Prefect home of its own."""
    home = clus.worker_dir(name)
    env = service_env(clus, home, TTLORA_WORKER_NAME=name, TTLORA_DATA_DIR=str(home / "data"),
                      TTLORA_CACHE=str(home / "cache"), PREFECT_WORKER_QUERY_SECONDS="1",
                      **({"TTLORA_DATA_MIRROR": str(mirror)} if mirror else {}))
    return start(name, [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
                        "--limit", "2"], home / "checkout", env, logs)


def wait_polling(worker: Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "started!" not in worker.log.read_text(errors="replace"):
        if worker.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name} did not start:\n{worker.tail()}")
        time.sleep(0.5)
