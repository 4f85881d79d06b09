"""A registered bundle version as people read it: the evaluation table (per task: expert alone, in the
bundle, head-only baseline), out of scope, the champion comparison, and where to look next.

One composition for the flow's Prefect artifact, ``ttlora-moe bundle-show`` and ``make demo``.
"""

from __future__ import annotations

from typing import Any

from ttlora_moe.pipeline.champion import comparison_markdown
from ttlora_moe.pipeline.gates import check_gates, describe_failed_gates


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"


def evaluation_table(evaluation: dict[str, Any], gates: dict[str, Any], model: str, version: int | str,
                     experts: dict[str, Any]) -> str:
    """A markdown table of a bundle's evaluation, one row per task, then out of scope and the champion comparison."""
    verdict = "passed" if gates["passed"] else "FAILED: " + describe_failed_gates(gates)
    lines = [f"**{model} version {version}**: router accuracy {_fmt(evaluation.get('router_accuracy'))}, gates {verdict}",
             "", "| task | expert version | metric | router accuracy | expert alone | in bundle | head-only baseline |",
             "|---|---|---|---|---|---|---|"]
    for task, row in sorted((evaluation.get("per_task") or {}).items()):
        lines.append(f"| {task} | {experts.get(task, '')} | {row.get('metric', '')} | {_fmt(row.get('router_accuracy'))} | "
                     f"{_fmt(row.get('expert_metric'))} | {_fmt(row.get('bundle_metric'))} | {_fmt(row.get('baseline_metric'))} |")
    oos = evaluation.get("out_of_scope") or {}
    if oos.get("skipped"):
        lines += ["", f"Out of scope: not measured on {'; '.join(oos['skipped'])}"]
    if oos.get("task"):
        measured = (f"abstained {_fmt(oos.get('abstain_rate'))}, AUROC {_fmt(oos.get('auroc'))}" if oos.get("auroc") is not None
                    else f"not measured ({oos.get('error', 'no rows')})")
        lines += ["", f"Out of scope ({oos['task']}, {oos.get('rows', 0)} rows): {measured}; "
                      f"in-scope abstain rate {_fmt(evaluation.get('abstain_in_scope'))}"]
    champion = evaluation.get("champion")
    if champion:
        lines += ["", f"Against the champion (version {champion['version']}), on the same rows:", "",
                  comparison_markdown(champion["rows"], version, champion["version"])]
    return "\n".join(lines)


def version_report(summary: dict[str, Any], mlflow_ui: str | None = None) -> str:
    """:func:`ttlora_moe.pipeline.bundles.bundle_summary`'s version as text: its table, aliases and next steps."""
    gates = check_gates(summary["evaluation"])
    version = summary["version"]
    aliases = ", ".join(summary["aliases"]) or "none (gates failed: " + describe_failed_gates(gates) + ")"
    lines = [evaluation_table(summary["evaluation"], gates, summary["model"], version, summary["experts"]), "",
             f"{summary['model']} version {version}, aliases: {aliases}"]
    if mlflow_ui:
        lines.append(f"MLflow UI:  {mlflow_ui.rstrip('/')}/#/models/{summary['model']}/versions/{version}")
    promote = (f"ttlora-moe promote {version}   (or move alias 'champion' in the MLflow UI)" if gates["passed"] else
               f"ttlora-moe promote {version} --force   (its gates failed: only if you accept that)")
    lines += [f"Promote:    {promote}",
              f"Serve:      mlflow models serve -m models:/{summary['model']}@champion --env-manager local -p 5001"]
    return "\n".join(lines)
