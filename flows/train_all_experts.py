"""Flow ``train-all-experts``: one ``train-expert`` per task, in parallel, then ``build-moe-bundle``.

At most ``concurrency`` experts train at once. With ``use_deployments`` each expert is its own flow
run of the ``train-expert/local`` deployment (``run_deployment``), so it runs wherever that
deployment's work pool has workers: more workers, more parallel experts. Otherwise each runs as a
subflow in a thread of this flow run. A failing expert is retried with exponential backoff (bad
input is not retried); one that still fails is reported and the others go on. The bundle is then
built from every registered expert, pinned to the versions this run produced.

    prefect deployment run train-all-experts/local --param profile=demo
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows import check_services
from flows.build_bundle import build_moe_bundle_flow
from flows.train_expert import train_expert_flow
from ttlora_moe.errors import BadInput
from ttlora_moe.params import load_params

TRAIN_EXPERT_DEPLOYMENT = "train-expert/local"


def _worth_retrying(task, task_run, state) -> bool:
    """Retry anything but bad input (a retry cannot fix a wrong task name or a broken card)."""
    try:
        state.result()
    except BadInput:
        return False
    except Exception:
        return True
    return True


@task(cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying, task_run_name="expert-{task_name}")
def train_one(task_name: str, profile: str | None, use_deployments: bool, deployment: str,
              threads: int | None = None) -> dict[str, Any]:
    """Train one expert: as a flow run of the deployment, or as a subflow in this process."""
    if not use_deployments:
        return train_expert_flow(task=task_name, profile=profile, threads=threads)
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(deployment, parameters={"task": task_name, "profile": profile, "threads": threads},
                             timeout=None, flow_run_name=f"train-expert-{task_name}")
    except ObjectNotFound:
        raise BadInput(f"deployment {deployment} does not exist on the Prefect server",
                       "deploy the flows (prefect --no-prompt deploy --name local, or --name remote)") from None
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"flow run {run.name} of {deployment} ended {state}: {run.state.message if run.state else ''}")
    return run.state.result()


@flow(name="train-all-experts", persist_result=True, result_serializer="json")
def train_all_experts_flow(
    tasks: list[str] | None = None,
    concurrency: int = 2,
    retries: int = 1,
    retry_backoff_s: float = 30.0,
    use_deployments: bool = False,
    deployment: str = TRAIN_EXPERT_DEPLOYMENT,
    profile: str | None = None,
    build_bundle: bool = True,
    threads_per_expert: int | None = None,
) -> dict[str, Any]:
    """Train every task's expert (default: ``tasks`` in params.yaml) and bundle what exists.

    ``threads_per_expert`` caps each expert's torch threads: on one machine running ``concurrency``
    experts at once, cores // concurrency avoids oversubscribing the CPU (None: torch's default).
    """
    logger = get_run_logger()
    params = load_params(profile=profile)
    tasks = list(tasks or params.get("tasks") or [])
    if not tasks:
        raise BadInput("no tasks to train", "pass tasks or list them under `tasks` in params.yaml")
    if concurrency < 1:
        raise BadInput(f"concurrency must be at least 1, got {concurrency}", "pass concurrency=1 or more")
    check_services()
    one = train_one.with_options(retries=retries, retry_delay_seconds=exponential_backoff(retry_backoff_s))
    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
        futures = {t: runner.submit(one, parameters={"task_name": t, "profile": profile,
                                                     "use_deployments": use_deployments, "deployment": deployment,
                                                     "threads": threads_per_expert})
                   for t in tasks}
        states = {t: f.wait() or f.state for t, f in futures.items()}
    trained, failed = {}, {}
    for t, state in states.items():
        if state.is_completed():
            trained[t] = state.result()
        else:
            failed[t] = _failure_line(state)
            logger.error("expert %s failed (bad input is not retried, anything else %d time(s)): %s", t, retries, failed[t])
    summary: dict[str, Any] = {"trained": {t: {"version": r["version"], "test_accuracy": r["test_accuracy"],
                                               "model_uri": r["model_uri"]} for t, r in trained.items()},
                               "failed": failed}
    if build_bundle and trained:
        summary["bundle"] = build_moe_bundle_flow(versions={t: r["version"] for t, r in trained.items()},
                                                  profile=profile)
    create_markdown_artifact(key="train-all-experts", markdown=_report(summary),
                             description="Experts trained, failed, and the bundle built from them")
    if not trained:
        raise RuntimeError(f"every expert failed: {failed}")
    return summary


def _failure_line(state) -> str:
    try:
        state.result()
    except BadInput as exc:  # already says what is wrong
        return str(exc).splitlines()[0]
    except Exception as exc:  # the task's own exception; one without a message (or "None") by its type
        message = (str(exc).splitlines() or [""])[0]
        return message if message and message != "None" else type(exc).__name__
    return state.message or state.name


def _report(summary: dict[str, Any]) -> str:
    lines = ["| task | expert version | test accuracy |", "|---|---|---|"]
    lines += [f"| {t} | {r['version']} | {r['test_accuracy']:.4f} |" for t, r in sorted(summary["trained"].items())]
    lines += [f"| {t} | **failed** | {why} |" for t, why in sorted(summary["failed"].items())]
    bundle = summary.get("bundle")
    if bundle:
        lines += ["", f"Bundle: `{bundle['model_uri']}`, gates {'passed' if bundle['gates_passed'] else 'FAILED'}"
                      + (" (alias candidate)" if bundle["gates_passed"] else "")]
    return "\n".join(lines)
