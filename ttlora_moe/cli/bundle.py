"""CLI commands of the mixture of experts: ``build-bundle``, ``evaluate``, ``predict``.

Importing this module registers them on the app. Contract as in :mod:`ttlora_moe.cli.app`: ``--json`` prints one
JSON object on stdout, progress goes to stderr, bad input exits 2 with one line.
(No ``from __future__ import annotations`` here: typer reads the commands' annotations at import.)
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ttlora_moe.cli.app import DeviceOption, JsonFlag, ProfileOption, app, emit, quiet_stdout
from ttlora_moe.errors import BadInput


def _read_inputs(texts: list[str], file: Path | None) -> list[dict[str, Any]]:
    from ttlora_moe.pipeline.requests import check_unicode

    for i, text in enumerate(texts, 1):
        check_unicode(text, f"argument {i}")
    rows: list[dict[str, Any]] = [{"text": t, "text_pair": None} for t in texts]
    ignored: set[str] = set()
    if file is not None:
        if not file.is_file():
            raise BadInput(f"{file} does not exist", "give a JSON-lines file with one {\"text\": ...} object per line")
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{file}:{n} is not valid JSON ({exc.msg})", 'write one {"text": ...} object per line') from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise BadInput(f"{file}:{n} has no non-empty \"text\"", 'write {"text": ..., "text_pair": ...} per line')
            pair = obj.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise BadInput(f"{file}:{n}: \"text_pair\" must be a string or null", "fix the line")
            for name in ("text", "text_pair"):
                check_unicode(obj.get(name) or "", f"{file}:{n}: \"{name}\"")
            rows.append({"text": obj["text"], "text_pair": pair or None})
            ignored.update(str(k) for k in obj if k not in ("text", "text_pair"))
    if ignored:  # an id or a label is fine to leave in the file; a misspelt "txt_pair" must not pass unseen
        print(f"note: {file} has fields that are not read: {', '.join(sorted(ignored))} "
              "(only \"text\" and \"text_pair\" are)", file=sys.stderr)
    if not rows:
        raise BadInput("no input given", "pass texts as arguments or --file F.jsonl")
    return rows


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


@app.command("build-bundle", context_settings={"allow_extra_args": True})
def build_bundle_cmd(
    ctx: typer.Context,
    experts: Annotated[list[Path], typer.Option("--experts", help="Expert directories, in router order: --experts A B C.")],
    output: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    router_kind: Annotated[str | None, typer.Option(help="linear or mlp (default from params.yaml).")] = None,
    device: DeviceOption = None,
    profile: ProfileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the router on cached base features and write a verifiable bundle of experts."""
    from ttlora_moe.devices import params_device
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.params import load_params, section

    extra = [a for a in ctx.args]
    if any(a.startswith("-") for a in extra):
        raise BadInput(f"unknown option(s) {[a for a in extra if a.startswith('-')]}", "see `ttlora-moe build-bundle --help`")
    params = load_params(profile=profile)
    params_device(params, device)  # an absent device is one line before anything loads
    router = section(params, "router")
    if router_kind:
        router["kind"] = router_kind
    with quiet_stdout(as_json):
        result = build_bundle(list(experts) + [Path(a) for a in extra], output, params=params, router=router, device=device)

    def render(r: dict[str, Any]) -> str:
        per = ", ".join(f"{t} {a:.3f}" for t, a in r["router_validation_per_task"].items())
        s = r["seconds"]
        return (f"bundle of {len(r['experts'])} experts written to {r['bundle']}\n"
                f"router ({r['router_kind']}): validation accuracy {r['router_validation_accuracy']:.4f} "
                f"(balanced {r['router_validation_balanced_accuracy']:.4f}; {per})\n"
                f"temperature {r['temperature']:.3f}, abstain below confidence {r['abstain_threshold']:.3f}\n"
                f"{s['total']:.1f} s in all: features {s['features']:.1f} s ({r['cache_hits']} rows from the "
                f"cache, {r['cache_misses']} computed), router {s['router']:.1f} s, base model {s['load_base']:.1f} s")

    emit(result, as_json, render)

@app.command("evaluate")
def evaluate_cmd(
    bundle: Annotated[Path, typer.Option(help="Bundle directory.")],
    test_per_task: Annotated[int | None, typer.Option(help="Test rows per task (default from params.yaml).")] = None,
    out_of_scope: Annotated[str | None, typer.Option(help="A task not in the bundle, for the abstain rate.")] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder (default: BUNDLE/evaluation).")] = None,
    device: DeviceOption = None,
    profile: ProfileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Router accuracy, confusion, task metrics inside the bundle vs each expert alone, abstain rates."""
    from ttlora_moe.devices import params_device
    from ttlora_moe.moe.evaluate import evaluate_bundle
    from ttlora_moe.params import load_params

    params = load_params(profile=profile)
    params_device(params, device)
    if test_per_task is not None and test_per_task < 1:
        raise BadInput(f"--test-per-task must be positive, got {test_per_task}", "give a positive number")
    with quiet_stdout(as_json):
        result = evaluate_bundle(bundle, params=params, test_per_task=test_per_task, out_of_scope_task=out_of_scope,
                                 output=output, device=device)

    def render(r: dict[str, Any]) -> str:
        lines = [f"{'task':<8} {'metric':<8} {'router':>7} {'bundle':>7} {'alone':>7} {'head-only':>9} {'abstain':>8}"]
        for t, v in r["per_task"].items():
            lines.append(f"{t:<8} {v['metric']:<8} {v['router_accuracy']:>7.4f} {v['bundle_metric']:>7.4f} "
                         f"{_num(v.get('expert_metric')):>7} {_num(v.get('baseline_metric')):>9} {v['abstain_rate']:>8.4f}")
        oos = r["out_of_scope"]
        lines.append(f"router accuracy {r['router_accuracy']:.4f} (balanced {r['router_balanced_accuracy']:.4f}), "
                     f"mixed accuracy {r['mixed_accuracy']:.4f}")
        lines.append(f"abstain: in scope {r['abstain_in_scope']:.4f}; out of scope "
                     + (f"({oos['task']}) {_num(oos['abstain_rate'])}, AUROC {_num(oos['auroc'])}" if oos["task"]
                        else "n/a (no other task)"))
        failed = [f"{name} {g['value']}" for name, g in r["gates"].items() if not g["passed"]]
        lines.append(f"gates {'passed' if r['gates_passed'] else 'FAILED: ' + ', '.join(failed)}; report in {r['output']}")
        return "\n".join(lines)

    emit(result, as_json, render)

@app.command("predict")
def predict_cmd(
    bundle: Annotated[Path, typer.Option(help="Bundle directory.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify (single-text inputs).")] = None,
    file: Annotated[Path | None, typer.Option(help='JSON lines: {"text": ..., "text_pair": ...} per input.')] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Route every input to its expert and answer with task, label and probabilities."""
    from ttlora_moe.devices import resolve_device
    from ttlora_moe.moe.bundle import load_moe

    rows = _read_inputs(list(texts or []), file)
    target = resolve_device(device)
    with quiet_stdout(as_json):
        moe = load_moe(Path(bundle), device=target)
        answers = moe.predict(rows)
    result = {"bundle": str(Path(bundle).resolve()),
              "predictions": [{"text": r["text"], "text_pair": r["text_pair"], **a} for r, a in zip(rows, answers)]}

    def render(r: dict[str, Any]) -> str:
        lines = []
        for p in r["predictions"]:
            text = p["text"] if len(p["text"]) <= 60 else p["text"][:57] + "..."
            if p["abstained"]:
                lines.append(f"no expert fits ({p['abstain_reason']}; router confidence {p['router_confidence']:.2f})  {text}")
            else:
                lines.append(f"{p['task']}: {p['label']} ({p['probabilities'][p['label']]:.2f}; "
                             f"router {p['router_confidence']:.2f})  {text}")
        return "\n".join(lines)

    emit(result, as_json, render)
