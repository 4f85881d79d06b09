"""Serving under load: a real ``mlflow models serve`` of a registered bundle and of the base model alone.

For each model the benchmark starts ``mlflow models serve -m models:/... --env-manager local`` (the
command the README gives), waits for ``/ping``, warms it up, reads its idle resident memory (the
server's whole process tree), then sends

- a sequential phase: requests one at a time from one client, the two servers taking turns request
  by request (both are up; the idle one costs nothing), so a drift in the machine's speed falls on
  both alike and the ratio between them holds, and
- a concurrent phase: ``--requests`` requests of 1 to ``--max-rows`` mixed-task rows from
  ``--clients`` concurrent clients, one server at a time (two loaded servers would share the cores), in
  ten parts that the servers take in turns (A B, B A, ...),

and reports errors, samples/s, p50 and p99 latency and peak RSS. The base model alone is the limit:
a pyfunc that tokenises, runs the frozen base and pools, served the same way
(:class:`ttlora_moe.pipeline.pyfunc.BasePyfunc`). Goals (issue 10): 0 errors, peak RSS at most 1.5x
idle, the bundle at least 0.9x the base's samples/s, concurrent throughput at least the sequential.

Without ``--model-uri`` the bundle is built here from experts with random TT cores (speed does not
depend on training) and a router trained on ``--router-rows`` cached rows per task, with params.yaml's
tt, router (routing mode) and serve settings, and registered in a temporary sqlite MLflow store.
With ``--model-uri models:/ttlora-moe@champion`` (and ``MLFLOW_TRACKING_URI``) it loads that bundle.

    python -m benchmarks.serve_load [--quick] [--tasks ...] [--requests N] [--clients N] [--max-rows N]
        [--model-uri URI] [--base REF] [--device DEVICE] [--preload LIBRARY] [--results NAME]

``--preload`` starts both servers with that library in ``LD_PRELOAD``: another malloc, such as Debian's
``libtcmalloc-minimal4`` (``/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``), for what an operator who
starts the server process can choose (README "Memory stays bounded under load").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import markdown_table, run_benchmark, write_results
from benchmarks.moe_throughput import DEFAULT_TASKS, mixed_stream, random_expert
from ttlora_moe.devices import resolve_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, load_base_model
from ttlora_moe.params import load_params, section
from ttlora_moe.tt.config import TTLoRAConfig

COLUMNS = ["model", "phase", "clients", "requests", "rows", "errors", "samples_per_s", "p50_ms", "p99_ms",
           "idle_rss_mb", "peak_rss_mb", "peak_x_idle", "x_base"]
QUICK_TASKS = ["toy"]
CONCURRENT_ROUNDS = 10  # parts of the concurrent phase, the servers taking turns on each


# --- the models -----------------------------------------------------------------------------------

def register_models(root: Path, params: dict[str, Any], tasks: list[str], router_rows: int) -> dict[str, str]:
    """A bundle of random experts and the base-model pyfunc, registered in ``root/mlflow.db``; their model URIs."""
    import mlflow

    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.pipeline.mlflow_client import experiment_id
    from ttlora_moe.pipeline.pyfunc import BasePyfunc, BundlePyfunc, bundle_artifacts, log_pyfunc

    ref = section(params, "base_model").get("ref", DEFAULT_BASE_MODEL)
    pooling = section(params, "base_model").get("pooling")
    tt = TTLoRAConfig.from_dict(section(params, "tt"))
    max_length = int(section(params, "train").get("max_length", 128))
    dirs = [random_expert(root / "experts" / t, load_base_model(ref, pooling), t, tt, max_length, seed=i + 1)
            for i, t in enumerate(tasks)]
    router = {**section(params, "router"), "train_per_task": router_rows,
              "validation_per_task": max(20, router_rows // 5), "unlabelled_per_task": 0}
    build_bundle(dirs, root / "bundle", params=params, router=router, progress=False)
    base_spec = root / "base.json"
    base_spec.write_text(json.dumps({"ref": ref, "pooling": pooling, "max_length": max_length,
                                     "serve": section(params, "serve")}))
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment = experiment_id("serve-load")
    uris = {}
    for name, cls, artifacts in (("base", BasePyfunc, {"base": str(base_spec)}),
                                 ("bundle", BundlePyfunc, bundle_artifacts(root / "bundle"))):
        with mlflow.start_run(experiment_id=experiment, run_name=f"serve-load-{name}"):
            info = log_pyfunc(name, cls, artifacts)
        version = mlflow.register_model(info.model_uri, f"serve-load-{name}")
        uris[name] = f"models:/serve-load-{name}/{version.version}"
    mlflow.set_tracking_uri(None)
    return uris


# --- the server -----------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_uri: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``mlflow models serve`` in its own session (so the whole tree can be measured and stopped)."""
    bin_dir = Path(sys.executable).parent  # mlflow runs `uvicorn` from PATH
    env = {**env, "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")])}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /ping in {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class PeakRss:
    """Samples a process tree's RSS every ``interval`` seconds in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# --- the load -------------------------------------------------------------------------------------

def make_requests(rows: list[dict[str, Any]], count: int, max_rows: int, seed: int) -> list[list[dict[str, Any]]]:
    """``count`` requests of 1 to ``max_rows`` rows drawn from the mixed-task ``rows``."""
    rng = random.Random(seed)
    return [[{"text": r["text"], "text_pair": r["text_pair"]} for r in rng.sample(rows, rng.randint(1, max_rows))]
            for _ in range(count)]


def post(port: int, records: list[dict[str, Any]]) -> tuple[float, bool]:
    """(seconds, ok) of one request."""
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            ok = response.status == 200 and len(json.loads(response.read())["predictions"]) == len(records)
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        ok = False
    return time.perf_counter() - start, ok


def send(port: int, requests: list[list[dict[str, Any]]], clients: int) -> tuple[list[tuple[float, bool]], float]:
    """Send ``requests`` from ``clients`` threads: each one's (seconds, ok), and the seconds of them all."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda records: post(port, records), requests))
    return results, time.perf_counter() - start


def take_turns(servers: dict[str, Server], requests: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Sequential: each request to every server in turn (the first server alternating), one at a time;
    per server the :func:`summary`, its seconds the sum of its own requests' latencies."""
    names = list(servers)
    results: dict[str, list[tuple[float, bool]]] = {name: [] for name in names}
    with peaks_of(servers) as peaks:
        for i, records in enumerate(requests):
            for name in names if i % 2 == 0 else names[::-1]:
                results[name].append(post(servers[name].port, records))
    return {name: {**summary(requests, got, 1, sum(s for s, _ in got)), "peak_rss_mb": peaks[name].peak}
            for name, got in results.items()}


def in_rounds(servers: dict[str, Server], requests: list[list[dict[str, Any]]], clients: int,
              rounds: int = CONCURRENT_ROUNDS) -> dict[str, dict[str, Any]]:
    """Concurrent: one server at a time (two loaded servers would share the cores), the requests in
    ``rounds`` consecutive parts, each part sent to every server in turn, the first server alternating
    (A B, B A, A B, ...), so a drift in the machine's speed, even one that turns within minutes, falls on
    each alike; per server the :func:`summary` of all parts and the peak RSS."""
    names = list(servers)
    results: dict[str, list[tuple[float, bool]]] = {name: [] for name in names}
    seconds, peak = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    size = -(-len(requests) // max(1, rounds))
    for k, start in enumerate(range(0, len(requests), size)):
        part = requests[start : start + size]
        for name in (names if k % 2 == 0 else names[::-1]):
            with PeakRss(servers[name].proc.pid) as sampled:
                got, took = send(servers[name].port, part, clients)
            results[name] += got
            seconds[name] += took
            peak[name] = max(peak[name], sampled.peak)
    return {name: {**summary(requests, results[name], clients, seconds[name]), "peak_rss_mb": peak[name]} for name in names}


def summary(requests: list[list[dict[str, Any]]], results: list[tuple[float, bool]], clients: int,
            seconds: float) -> dict[str, Any]:
    """Errors, samples/s and latency percentiles of ``requests`` answered as ``results`` in ``seconds``."""
    latencies = sorted(s for s, _ in results)
    rows = sum(len(r) for r in requests)
    return {"clients": clients, "requests": len(requests), "rows": rows, "errors": sum(not ok for _, ok in results),
            "samples_per_s": rows / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "seconds": seconds}


@contextlib.contextmanager
def peaks_of(servers: dict[str, Server]) -> Iterator[dict[str, PeakRss]]:
    """Each server's process tree sampled for its peak RSS while the block runs."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(PeakRss(server.proc.pid)) for name, server in servers.items()}


@dataclass(frozen=True)
class Server:
    """One running ``mlflow models serve``."""

    proc: subprocess.Popen
    port: int


@contextlib.contextmanager
def serving(uris: dict[str, str], env: dict[str, str], logs: Path) -> Iterator[dict[str, Server]]:
    """Every model of ``uris`` served (started one after the other, each healthy before the next takes a
    port); all stopped at exit."""
    servers: dict[str, Server] = {}
    try:
        for name, uri in uris.items():
            port = free_port()
            servers[name] = Server(start_server(uri, port, env, logs / f"{name}.log"), port)
            wait_healthy(servers[name].proc, port, logs / f"{name}.log")
        yield servers
    finally:
        for server in servers.values():
            stop_server(server.proc)


def measure(uris: dict[str, str], env: dict[str, str], requests: dict[str, list], clients: int, logs: Path) -> list[dict]:
    """Serve every model, warm each up, then the sequential phase (the servers taking turns) and each
    server's concurrent phase; one row per model and phase."""
    with serving(uris, env, logs) as servers:
        for records in requests["warmup"]:
            for server in servers.values():
                post(server.port, records)
        time.sleep(1.0)
        idle = {name: tree_rss_mb(server.proc.pid) for name, server in servers.items()}
        phases = {"sequential": take_turns(servers, requests["sequential"]),
                  "concurrent": in_rounds(servers, requests["concurrent"], clients)}
    rows = []
    for name in uris:
        for phase, results in phases.items():
            row = {"model": name, "phase": phase, **results[name], "idle_rss_mb": idle[name]}
            rows.append({**row, "peak_x_idle": row["peak_rss_mb"] / idle[name] if idle[name] else None})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def serve_goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Issue 10's goals for the served bundle; the base-only pyfunc (the same micro-batching queue and
    length-sorted batches) is the reference its throughput is measured against, and only its errors count."""
    bundle = {r["phase"]: r for r in rows if r["model"] == "bundle"}
    return {"zero_errors": all(r["errors"] == 0 for r in rows),
            "peak_rss_at_most_1_5x_idle": all(r["peak_x_idle"] <= 1.5 for r in bundle.values()),
            "bundle_at_least_0_9x_base": min(r["x_base"] for r in bundle.values()) >= 0.9,
            "concurrent_at_least_sequential":
                bundle["concurrent"]["samples_per_s"] >= bundle["sequential"]["samples_per_s"]}


def env_device(device: str | None) -> str:
    """The device the servers ran on, as resolved here."""
    return str(resolve_device(device or os.environ.get("TTLORA_DEVICE")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one toy-size run: few requests, few clients")
    parser.add_argument("--tasks", nargs="*", default=None, help=f"default {' '.join(DEFAULT_TASKS)}")
    parser.add_argument("--requests", type=int, default=None, help="concurrent-phase requests (default 1000; quick 60)")
    parser.add_argument("--sequential", type=int, default=None, help="sequential-phase requests (default 200; quick 20)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 8; quick 4)")
    parser.add_argument("--max-rows", type=int, default=32, help="rows per request: 1 to this")
    parser.add_argument("--router-rows", type=int, default=None, help="router training rows per task (default 300)")
    parser.add_argument("--model-uri", default=None, help="serve this registered bundle (MLFLOW_TRACKING_URI) instead")
    parser.add_argument("--device", default=None, help="the servers' TTLORA_DEVICE: auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--base", default=None, help="base model reference of both models (default: params.yaml's)")
    parser.add_argument("--preload", type=Path, default=None,
                        help="a shared library both servers start with in LD_PRELOAD, e.g. another malloc")
    parser.add_argument("--results", default="serve_load", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    if args.preload and not args.preload.is_file():
        raise BadInput(f"--preload {args.preload} is not a file",
                       "name a shared library, e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 "
                       "(apt-get install libtcmalloc-minimal4)")
    quick = args.quick
    tasks = args.tasks or (QUICK_TASKS if quick else DEFAULT_TASKS)
    counts = {"concurrent": args.requests or (60 if quick else 1000), "sequential": args.sequential or (20 if quick else 200)}
    clients = args.clients or (4 if quick else 8)
    params = load_params(overrides={"base_model": {"ref": args.base}} if args.base else None)
    stream, _ = mixed_stream(tasks, 2000, params)
    requests = {phase: make_requests(stream, n, args.max_rows, seed) for seed, (phase, n) in enumerate(counts.items())}
    requests["warmup"] = make_requests(stream, 10, args.max_rows, seed=9)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uris = register_models(root, params, tasks, args.router_rows or (40 if quick else 300))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
        if args.preload:
            env["LD_PRELOAD"] = " ".join(filter(None, [str(args.preload.resolve()), env.get("LD_PRELOAD")]))
        if args.device:
            env["TTLORA_DEVICE"] = str(resolve_device(args.device))
        if args.model_uri:
            uris["bundle"] = args.model_uri
            env["MLFLOW_TRACKING_URI"] = os.environ.get("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        rows = measure({name: uris[name] for name in ("base", "bundle")}, env, requests, clients, root)
    base_rate = {r["phase"]: r["samples_per_s"] for r in rows if r["model"] == "base"}
    for row in rows:
        row["x_base"] = row["samples_per_s"] / base_rate[row["phase"]]
    goals = serve_goals(rows)
    seconds = round(time.perf_counter() - start, 1)
    preloaded = f"servers started with LD_PRELOAD={args.preload}; " if args.preload else ""
    table = markdown_table(rows, COLUMNS) + (
        f"\n\nTasks {', '.join(tasks)}; requests of 1 to {args.max_rows} mixed rows; {preloaded}"
        f"goals: {', '.join(f'{k} {v}' for k, v in goals.items())}; run took {seconds:.0f} s.")
    write_results(args.results, {"rows": rows, "goals": goals, "tasks": tasks, "clients": clients,
                                 "device": env_device(args.device), "preload": str(args.preload or ""),
                                 "max_rows": args.max_rows, "seconds": seconds}, table)
    return {"rows": rows, "goals": goals}


if __name__ == "__main__":
    run_benchmark(main)
