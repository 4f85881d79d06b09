"""Pipeline commands of ``ttlora-moe``: ``tasks add`` and ``promote``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ttlora_moe.cli.app import JsonFlag, app, emit, quiet_stdout, tasks_app


@tasks_app.command("add")
def tasks_add(
    name: Annotated[str, typer.Argument(help="New task name: a lowercase identifier (names the card, data and expert).")],
    source: Annotated[str, typer.Option("--source", help="A CSV/Parquet/JSONL file, a folder of them, or a hub id owner/name[:config].")],
    text: Annotated[str, typer.Option("--text", help="Input text column.")],
    label: Annotated[str, typer.Option("--label", help="Label column.")],
    text_pair: Annotated[str | None, typer.Option("--text-pair", help="Second input column of a pair task.")] = None,
    label_names: Annotated[list[str] | None, typer.Option(
        "--label-names", help="Class names, repeated or comma-separated (index = class id when the labels are 0..k-1). "
                              "Default: the distinct label values.")] = None,
    unlabelled_values: Annotated[list[str] | None, typer.Option(
        "--unlabelled-values", help="Label values that mean 'no label' (their rows are dropped), repeated or "
                                    "comma-separated; an empty value ('' or a trailing comma) is a blank cell. "
                                    "Default: none; every other value is a class.")] = None,
    choices: Annotated[list[str] | None, typer.Option(
        "--choices", help="Multiple choice: the option columns, repeated or comma-separated (answerA,answerB,answerC), "
                          "or one column holding each row's list of options (column, or column.field of a struct "
                          "column). --text is then a template of columns ('{context} {question}') or one column; the "
                          "classes are the options A, B, ...")] = None,
    choice_labels: Annotated[list[str] | None, typer.Option(
        "--choice-labels", help="Multiple choice: the label value that marks each option, in order, repeated or "
                                "comma-separated. Default: the letters A, B, ... or positions 0..C-1 or 1..C, as the "
                                "labels are.")] = None,
    metric: Annotated[str, typer.Option(help="Headline metric: accuracy, f1 (binary) or mcc.")] = "accuracy",
    description: Annotated[str, typer.Option(help="One line for `tasks list` and the model card.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Replace an already registered task's data.")] = False,
    git_branch: Annotated[str | None, typer.Option(
        "--git-branch", help="Git branch to commit the task's card, DVC pointer, params.yaml and dvc.lock to (pushed "
                             "when the repository has a remote, so any worker can clone and train it). Default: the "
                             "checked-out branch.")] = None,
    train: Annotated[bool, typer.Option("--train", help="Then train its expert and register a new bundle (Prefect deployments + MLflow).")] = False,
    bundle: Annotated[bool, typer.Option("--bundle/--no-bundle", help="With --train: also build a new bundle.")] = True,
    deployment: Annotated[str, typer.Option(help="With --train: the deployments' name (train-expert/NAME, build-moe-bundle/NAME; see prefect.yaml).")] = "local",
    profile: Annotated[str | None, typer.Option(help="params.yaml profile for --train, e.g. demo.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a new task: validate the dataset, write its card, track its raw data with DVC, prepare it."""
    from ttlora_moe.pipeline.dvc_remote import check_remote_credentials
    from ttlora_moe.pipeline.registration import register_task
    from ttlora_moe.pipeline.task_validation import TaskSpec

    names = [n.strip() for item in (label_names or []) for n in item.split(",") if n.strip()] or None
    unlabelled = _listed(unlabelled_values) or []
    spec = TaskSpec(name=name, source=source, text=text, label=label, text_pair=text_pair, label_names=names,
                    unlabelled_values=unlabelled, metric=metric, description=description,
                    choices=_listed(choices), choice_labels=_listed(choice_labels))
    check_remote_credentials()
    flows = [f"train-expert/{deployment}"] + ([f"build-moe-bundle/{deployment}"] if bundle else [])
    if train:  # fail before anything is written when what --train needs is missing
        _check_training_services(deployment, flows)
    with quiet_stdout(as_json):
        result: dict[str, Any] = {"registered": register_task(spec, replace=replace, git_branch=git_branch)}
        if train:
            print(f"task {name} registered; training its expert ({flows[0]})", file=sys.stderr)
            result["expert"] = _run_deployment(flows[0], {"task": name, "profile": profile})
            if bundle:
                result["bundle"] = _run_deployment(flows[1], {"versions": {name: result["expert"]["version"]},
                                                              "profile": profile})

    def render(r: dict[str, Any]) -> str:
        reg = r["registered"]
        rows = ", ".join(f"{k} {v}" for k, v in (reg.get("rows") or {}).items())
        git = reg.get("git") or {}
        committed = (f"committed to branch {git['branch']} ({git['commit'][:12]})" if git.get("commit")
                     else f"unchanged on branch {git['branch']}" if git else "not in a git repository: commit it yourself")
        pushed = f", pushed to {git['pushed_to']}" if git.get("pushed_to") else ""
        lines = [f"task {reg['task']} {'replaced' if reg['replaced'] else 'registered'}: labels {', '.join(reg['labels'])}; {rows}",
                 f"card {reg['card']}; raw data tracked by {reg['pointer']}; {committed}{pushed}"]
        lines += [f"note: {note}" for note in reg["notes"]]
        if "expert" in r:
            lines.append(f"expert {r['expert']['model_uri']}: test accuracy {r['expert']['test_accuracy']:.4f}")
        if "bundle" in r:
            b = r["bundle"]
            lines.append(f"bundle {b['model_uri']}: gates {'passed (alias candidate)' if b['gates_passed'] else 'failed'}")
        return "\n".join(lines)

    emit(result, as_json, render)


def _listed(values: list[str] | None) -> list[str] | None:
    """A repeated, comma-separated option as one list (None when not given)."""
    return None if values is None else [v.strip() for item in values for v in item.split(",")]


def _check_training_services(deployment: str, deployments: list[str]) -> None:
    """MLflow and Prefect answer and the deployments exist: one BadInput line otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from ttlora_moe.errors import BadInput
    from ttlora_moe.pipeline.services import check_mlflow, check_prefect

    if not deployment.strip() or "/" in deployment:
        raise BadInput(f"--deployment {deployment!r} is not a deployment name",
                       "give the name after the flow's in prefect.yaml, e.g. local (train-expert/local)")
    check_mlflow()
    check_prefect()
    with get_client(sync_client=True) as client:
        for name in deployments:
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise BadInput(f"deployment {name} does not exist on the Prefect server",
                               "deploy the flows (prefect --no-prompt deploy --name local, or --name remote; see prefect.yaml) or pass --deployment") from None


def _run_deployment(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run deployment ``name`` and wait for it; its result, or one `error:` line and exit code 1."""
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=None)
    if not run.state or not run.state.is_completed():
        state = f"{run.state.name}: {run.state.message}" if run.state else "in an unknown state"
        print(f"error: flow run {run.name} of {name} ended {state}", file=sys.stderr)
        raise typer.Exit(1)
    return run.state.result()


@app.command("bundle-show")
def bundle_show(
    version: Annotated[str | None, typer.Argument(help="ttlora-moe model version (default: the latest).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """A registered bundle version: its evaluation table, gates, out of scope, champion comparison, aliases."""
    import os

    from ttlora_moe.errors import BadInput
    from ttlora_moe.pipeline.services import check_mlflow

    if version is not None and not version.isdigit():
        raise BadInput(f"version {version!r} is not a version number", "give the number shown in the MLflow UI, e.g. 3")
    check_mlflow()
    with quiet_stdout(as_json):
        from ttlora_moe.pipeline.bundle_report import version_report
        from ttlora_moe.pipeline.bundles import bundle_summary

        summary = bundle_summary(int(version) if version else None)
    ui = os.environ.get("MLFLOW_TRACKING_URI", "")
    emit(summary, as_json, lambda s: version_report(s, ui if ui.startswith("http") else None))


@app.command("promote")
def promote(
    version: Annotated[str, typer.Argument(help="ttlora-moe model version to serve.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even though its gates failed.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Move alias `champion` of the registered model ttlora-moe to VERSION (what serving loads)."""
    from ttlora_moe.errors import BadInput
    from ttlora_moe.pipeline.services import check_mlflow

    if not version.isdigit():
        raise BadInput(f"version {version!r} is not a version number", "give the number shown in the MLflow UI, e.g. 3")
    check_mlflow()
    with quiet_stdout(as_json):
        from ttlora_moe.pipeline.bundles import promote as promote_version
        from ttlora_moe.pipeline.champion import comparison_markdown

        result = promote_version(int(version), force=force)

    def render(r: dict[str, Any]) -> str:
        was = f" (was version {r['previous']})" if r["previous"] else ""
        forced = "; gates had FAILED, promoted with --force" if r["forced"] else ""
        table = comparison_markdown(r["comparison"], r["version"], r["previous"])
        return (f"{r['model']}@{r['alias']} -> version {r['version']}{was}{forced}\n" + (table + "\n" if table else "")
                + f"serve it: mlflow models serve -m {r['model_uri']} --env-manager local")

    emit(result, as_json, render)
