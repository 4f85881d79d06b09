"""Mixture-of-experts inference, the bundle artifact, its evaluation and its CLI, on tiny random models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ttlora_moe.data.batching import tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import load_expert, save_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.classifier import SequenceClassifier
from ttlora_moe.files import read_json, sha256_file, write_json
from ttlora_moe.moe.features import FeatureSpec, feature_dim
from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
from ttlora_moe.moe.router import Router
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora

ROUTER = {"kind": "mlp", "hidden": 16, "lr": 0.01, "max_epochs": 15, "patience": 4, "train_per_task": 60,
          "validation_per_task": 20, "false_abstain_rate": 0.05,
          "features": {"layers": "all", "pooling": ["mean", "max"], "segment_layers": "all"}}
BUNDLE = {"test_per_task": 16, "out_of_scope_rows": 12, "batch_size": 8}

# name: (labels, pair?, metric, text maker)
TASKS = {
    "senti": (["neg", "pos"], False, "accuracy",
              lambda i: ({"sentence": f"the {['movie', 'film', 'plot'][i % 3]} {i} was {['good', 'bad', 'great', 'awful'][i % 4]}"},
                         int(i % 4 in (0, 2)))),
    "nli": (["entail", "neutral", "contra"], True, "accuracy",
            lambda i: ({"premise": f"premise the {['cat', 'dog'][i % 2]} {i} sat on the mat",
                        "hypothesis": f"hypothesis the {['cat', 'dog'][i % 2]} is {['happy', 'sad', 'red'][i % 3]}"}, i % 3)),
    "quest": (["no", "yes"], False, "mcc",
              lambda i: ({"sentence": f"{['what', 'why', 'who', 'where'][i % 4]} is the {i} {['answer', 'question'][i % 2]}"},
                         i % 2)),
    "extra": (["no", "yes"], True, "f1",
              lambda i: ({"premise": f"question {['what', 'who'][i % 2]} is {i} it", "hypothesis": f"answer {['yes', 'no'][i % 2]} it is"},
                         i % 2)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _card(name: str) -> dict:
    labels, pair, metric, _ = TASKS[name]
    card = {"source": name, "files": {"train": "train.parquet", "test": "validation.parquet"},
            "text": "premise" if pair else "sentence", "label": "label", "label_names": labels,
            "label_values": list(range(len(labels))), "metric": metric}
    if pair:
        card["text_pair"] = "hypothesis"
    return card


def make_expert(directory: Path, ref: str, task: str, seed: int) -> Path:
    """An expert with random (non-zero) cores and head: enough to test routing and stacking exactly."""
    base = load_base_model(ref)
    tt = TTLoRAConfig(rank=2, alpha=4.0)
    attach_tt_lora(base.model, tt, seed=seed)
    labels, _, metric, _ = TASKS[task]
    classifier = SequenceClassifier(base.model, len(labels), base.pooling, "trainable", seed)
    with torch.no_grad():
        classifier.head.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    meta = {"task": task, "kind": "ttlora", "label_names": labels, "metric": metric,
            "base_model": {"ref": ref, "fingerprint": base.fingerprint, "model_type": base.model_type,
                           "hidden_size": base.hidden_size},
            "tt": tt.to_dict(), "max_length": 32, "metrics": {"test": {"accuracy": 0.5}}}
    return save_expert(directory, classifier, meta)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bert):
    """Four toy tasks in a mirror, params, and a random expert per task on the tiny BERT."""
    root = tmp_path_factory.mktemp("moe")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    for name, (_, _, _, make) in TASKS.items():
        folder = root / "mirror" / name
        folder.mkdir(parents=True)
        for file, n, offset in (("train.parquet", 120, 0), ("validation.parquet", 30, 7)):
            pd.DataFrame([{**make(i + offset)[0], "label": make(i + offset)[1]} for i in range(n)]).to_parquet(folder / file)
        (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(_card(name)))
    params = {"base_model": {"ref": tiny_bert}, "prepare": {"min_rows": 5, "validation_max_rows": 30},
              "router": ROUTER, "bundle": BUNDLE}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"TTLORA_DATA_MIRROR": str(root / "mirror"), "TTLORA_TASKS_DIR": str(tasks_dir),
           "TTLORA_DATA_DIR": str(root / "data"), "TTLORA_PARAMS": str(root / "params.yaml"),
           "TTLORA_CACHE": str(root / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        experts = {name: make_expert(root / "experts" / name, tiny_bert, name, seed=i + 1)
                   for i, name in enumerate(TASKS)}
        yield {"root": root, "experts": experts, "params": params, "ref": tiny_bert}


def router_rows(env, *tasks: str) -> int:
    """Rows of router training + validation features for ``tasks`` (the capped prepared splits)."""
    from ttlora_moe.data.prepared import load_split

    prepared = env["root"] / "data" / "prepared"
    return sum(min(ROUTER["train_per_task"], len(load_split(prepared / t, "train")))
               + min(ROUTER["validation_per_task"], len(load_split(prepared / t, "validation"))) for t in tasks)


def rows_of(task: str, n: int, offset: int = 100) -> list[dict]:
    labels, pair, _, make = TASKS[task]
    out = []
    for i in range(offset, offset + n):
        fields, label = make(i)
        if pair:
            out.append({"text": fields["premise"], "text_pair": fields["hypothesis"], "label": label})
        else:
            out.append({"text": fields["sentence"], "text_pair": None, "label": label})
    return out


# --- MoE inference --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_mixed_batch_equals_each_sample_alone_through_its_expert(kind, tiny_bert, tiny_llama, tmp_path):
    ref = tiny_bert if kind == "bert" else tiny_llama
    names = ["senti", "nli", "quest"]  # 2, 3 and 2 labels
    dirs = [make_expert(tmp_path / n, ref, n, seed=i + 1) for i, n in enumerate(names)]
    base = load_base_model(ref)
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    metas = [read_expert_meta(d) for d in dirs]
    spec = FeatureSpec()
    router = Router(feature_dim(spec, base), len(names), "linear")
    infos = [ExpertInfo(n, "7", n, TASKS[n][0], TASKS[n][2]) for n in names]
    moe = MixtureOfExperts(base, infos, [load_tensors(d / "adapter.safetensors") for d in dirs], metas, router, spec, 32)

    rows = rows_of("senti", 3) + rows_of("nli", 3) + rows_of("quest", 2) + rows_of("nli", 1, 7)
    experts = [0, 1, 0, 1, 2, 1, 2, 0, 1]  # mixed, and some samples through another task's expert
    batch = tokenize(base.tokenizer, rows, 32)
    logits = moe.expert_logits(batch["input_ids"], batch["attention_mask"], torch.tensor(experts))
    assert logits.shape == (len(rows), 3)
    assert torch.isinf(logits[torch.tensor(experts) != 1, 2]).all()  # padded class of 2-label heads

    answers = moe.predict(rows, batch_size=4, force_expert=experts)
    alone = [load_expert(d, load_base_model(ref)) for d in dirs]
    for i, (row, e) in enumerate(zip(rows, experts)):
        single = tokenize(base.tokenizer, [row], 32)
        with torch.no_grad():
            ref_probs = torch.softmax(alone[e].model(single["input_ids"], single["attention_mask"]), -1)[0]
        c = len(TASKS[names[e]][0])
        assert torch.allclose(torch.softmax(logits[i, :c], -1), ref_probs, atol=1e-5)
        got = torch.tensor(list(answers[i]["probabilities"].values()))
        assert list(answers[i]["probabilities"]) == TASKS[names[e]][0]  # the task's own labels only
        assert torch.allclose(got, ref_probs, atol=1e-5)
        assert answers[i]["expert"] == {"name": names[e], "version": "7"} and answers[i]["task"] == names[e]
    # the experts really differ, so the equality above is not trivial
    p0 = torch.softmax(alone[0].model(batch["input_ids"][:1], batch["attention_mask"][:1]), -1)
    p2 = torch.softmax(alone[2].model(batch["input_ids"][:1], batch["attention_mask"][:1]), -1)
    assert not torch.allclose(p0, p2, atol=1e-3)
    # the routing pass sees the plain base model: identical to the un-adapted model's states
    with moe.routing(None):
        plain = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    fresh = load_base_model(ref).model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.allclose(plain, fresh.last_hidden_state, atol=1e-6)
    assert moe.state.expert_index is None


def test_moe_refuses_router_of_other_size(tiny_bert, tmp_path):
    d = make_expert(tmp_path / "senti", tiny_bert, "senti", 1)
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    base = load_base_model(tiny_bert)
    with pytest.raises(BadInput, match="routes to 3 experts"):
        MixtureOfExperts(base, [ExpertInfo("senti", None, "senti", ["neg", "pos"], "accuracy")],
                         [load_tensors(d / "adapter.safetensors")], [read_expert_meta(d)], Router(10, 3, "linear"),
                         FeatureSpec(), 32)


# --- bundle ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(env, tmp_path_factory):
    """A bundle of senti, nli and quest, built once."""
    from ttlora_moe.moe.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "b3"
    e = env["experts"]
    summary = build_bundle([e["senti"], e["nli"], e["quest"]], out, params=env["params"],
                           versions={"senti": "3"}, progress=False)
    return out, summary


def test_build_bundle_writes_a_complete_manifest(env, built):
    from ttlora_moe.moe.bundle import load_bundle

    out, summary = built
    manifest = read_json(out / "manifest.json")
    assert manifest["format"] == "ttlora-moe/bundle@1"
    assert [e["name"] for e in manifest["experts"]] == ["senti", "nli", "quest"]  # router index order
    assert manifest["experts"][0]["version"] == "3" and manifest["experts"][1]["version"] is None
    assert set(manifest["files"]) == {"router.safetensors", "router.json"} | {
        f"experts/{t}/{f}" for t in ("senti", "nli", "quest") for f in ("expert.json", "adapter.safetensors")}
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest
    for t in ("senti", "nli", "quest"):  # byte-identical copies of the experts
        for f in ("expert.json", "adapter.safetensors"):
            assert sha256_file(out / "experts" / t / f) == sha256_file(env["experts"][t] / f)
    assert manifest["base_model"]["fingerprint"] == load_base_model(env["ref"]).fingerprint
    assert manifest["router"]["kind"] == "mlp" and manifest["router"]["features"]["segment_layers"] == "all"
    assert "router_validation_accuracy" in manifest["gates"]
    assert summary["router_validation_balanced_accuracy"] > 0.9  # toy tasks are easy to tell apart
    assert summary["cache_misses"] == router_rows(env, "senti", "nli", "quest") and summary["seconds"]["total"] > 0
    assert load_bundle(out).tasks == ["senti", "nli", "quest"]


def test_bundle_predicts_routes_and_abstains(built):
    from ttlora_moe.moe.bundle import load_moe

    moe = load_moe(built[0])
    rows = rows_of("senti", 2) + rows_of("nli", 2) + rows_of("quest", 2)
    answers = moe.predict(rows)
    assert [a["task"] for a in answers] == ["senti"] * 2 + ["nli"] * 2 + ["quest"] * 2
    for a in answers:
        assert set(a["probabilities"]) == set(TASKS[a["task"]][0])
        assert abs(sum(a["probabilities"].values()) - 1) < 1e-5 and a["label"] in a["probabilities"]
        assert 0 < a["router_confidence"] <= 1 and not a["abstained"]
    assert answers == moe.predict(rows)  # deterministic
    moe.router.threshold.fill_(1.01)  # nothing is confident enough: every input abstains
    for a in moe.predict(rows[:3]):
        assert a["abstained"] and a["task"] is None and a["label"] is None and a["probabilities"] is None
        assert set(a["router_probabilities"]) == {"senti", "nli", "quest"}


def test_adding_an_expert_reuses_cached_features_and_artifacts(env, built, tmp_path):
    from ttlora_moe.moe.build import build_bundle

    before = {t: {f: sha256_file(d / f) for f in ("expert.json", "adapter.safetensors")}
              for t, d in env["experts"].items()}
    e = env["experts"]
    summary = build_bundle([e["senti"], e["nli"], e["quest"], e["extra"]], tmp_path / "b4", params=env["params"],
                           progress=False)
    # only the new task's rows are computed
    assert summary["cache_hits"] == router_rows(env, "senti", "nli", "quest")
    assert summary["cache_misses"] == router_rows(env, "extra")
    after = {t: {f: sha256_file(d / f) for f in ("expert.json", "adapter.safetensors")}
             for t, d in env["experts"].items()}
    assert before == after
    old, new = read_json(built[0] / "manifest.json"), read_json(tmp_path / "b4" / "manifest.json")
    for t in ("senti", "nli", "quest"):
        for f in ("expert.json", "adapter.safetensors"):
            assert old["files"][f"experts/{t}/{f}"] == new["files"][f"experts/{t}/{f}"]


def test_features_cached_ahead_make_the_build_router_only(env, built, tmp_path):
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.router_data import cache_task_features

    params = {**env["params"], "train": {"max_length": 32}}  # the experts' max_length
    ahead = cache_task_features("extra", params=params, progress=False)
    assert ahead["cache_hits"] + ahead["cache_misses"] == router_rows(env, "extra")
    summary = build_bundle([env["experts"]["senti"], env["experts"]["extra"]], tmp_path / "b", params=params,
                           progress=False)
    assert summary["cache_misses"] == 0 and summary["cache_hits"] == router_rows(env, "senti", "extra")


def _copy(built, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(built[0], target)
    return target


def test_load_bundle_refuses_a_tampered_file(built, tmp_path):
    from ttlora_moe.moe.bundle import load_bundle

    b = _copy(built, tmp_path)
    path = b / "experts" / "nli" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"experts/nli/adapter.safetensors does not match its sha256") as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_load_bundle_refuses_a_missing_expert(built, tmp_path):
    from ttlora_moe.moe.bundle import load_bundle

    b = _copy(built, tmp_path)
    shutil.rmtree(b / "experts" / "quest")
    with pytest.raises(BadInput, match=r"experts/quest/.* is missing"):
        load_bundle(b)
    with pytest.raises(BadInput, match="manifest.json does not exist"):
        load_bundle(tmp_path)


def test_foreign_base_expert_is_refused(env, built, tiny_llama, tmp_path):
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import load_bundle

    foreign = make_expert(tmp_path / "foreign" / "extra", tiny_llama, "extra", 5)
    with pytest.raises(BadInput, match=r"foreign/extra/expert.json was trained on base model"):
        build_bundle([env["experts"]["senti"], foreign], tmp_path / "never", params=env["params"], progress=False)
    assert not (tmp_path / "never").exists()
    # a hand-assembled bundle whose checksums were updated is still refused
    b = _copy(built, tmp_path)
    meta_path = b / "experts" / "senti" / "expert.json"
    meta = read_json(meta_path)
    meta["base_model"]["fingerprint"] = "f" * 64
    write_json(meta_path, meta)
    manifest = read_json(b / "manifest.json")
    manifest["files"]["experts/senti/expert.json"] = sha256_file(meta_path)
    write_json(b / "manifest.json", manifest)
    with pytest.raises(BadInput, match=r"experts/senti/expert.json was trained on base model ffffffffffff"):
        load_bundle(b)


def test_unlabelled_inputs_join_the_router_training_mix(env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared
    from ttlora_moe.moe.build import build_bundle

    prepared = ensure_prepared(load_task_card("quest"), env["params"])
    experts = [env["experts"]["senti"], env["experts"]["quest"]]
    build_bundle(experts, tmp_path / "a", params=env["params"], progress=False)  # labelled rows now cached
    rows = rows_of("quest", 30, offset=500)
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "text_pair": [None] * 30}), prepared / "unlabelled.parquet")
    try:
        router = {**ROUTER, "unlabelled_per_task": 25}
        summary = build_bundle(experts, tmp_path / "b", params=env["params"], router=router, progress=False)
    finally:
        (prepared / "unlabelled.parquet").unlink()
    assert summary["cache_misses"] == 25
    from ttlora_moe.data.prepared import load_split

    labelled = sum(min(ROUTER["train_per_task"], len(load_split(prepared.parent / t, "train"))) for t in ("senti", "quest"))
    assert read_json(tmp_path / "b" / "router.json")["validation"]["train_rows"] == labelled + 25
    assert "quest/unlabelled" in read_json(tmp_path / "b" / "manifest.json")["data_md5"]


def test_bundle_refuses_two_experts_for_one_task(env, tmp_path):
    from ttlora_moe.moe.build import build_bundle

    twin = shutil.copytree(env["experts"]["senti"], tmp_path / "twin")
    with pytest.raises(BadInput, match="task 'senti' is already served"):
        build_bundle([env["experts"]["senti"], twin], tmp_path / "b", params=env["params"], progress=False)


# --- evaluation and CLI -----------------------------------------------------------------------------

def test_out_of_scope_task_choice(env):
    from ttlora_moe.moe.evaluate import _out_of_scope_task

    assert _out_of_scope_task(["a", "b"], "c", preferred="d") == "c"
    assert _out_of_scope_task(["a", "b"], None, preferred="d") == "d"
    with pytest.raises(BadInput, match="out-of-scope task 'a' is in the bundle"):
        _out_of_scope_task(["a", "b"], "a")
    # params.yaml's preference is only a preference: a bundle that serves it gets another task
    assert _out_of_scope_task(["senti", "nli", "quest"], None, preferred="nli") == "extra"


def test_evaluate_bundle_reports_routing_retention_and_abstain(env, built, tmp_path):
    from ttlora_moe.moe.evaluate import evaluate_bundle

    b = _copy(built, tmp_path)
    report = evaluate_bundle(b, params=env["params"], out_of_scope_task="extra", progress=False)
    assert report["rows"] == 3 * 16 and report["tasks"] == ["senti", "nli", "quest"]
    assert report["router_accuracy"] > 0.9
    for task, v in report["per_task"].items():
        assert {"router_accuracy", "bundle_metric", "expert_metric", "abstain_rate"} <= set(v)
        assert v["routed_agreement"] == 1.0 and v["routed_max_probability_diff"] < 1e-4  # same math as alone
        assert v["routed_bundle_metric"] == pytest.approx(v["routed_expert_metric"])
    counts = report["confusion"]["counts"]
    assert [sum(r) for r in counts] == [16, 16, 16] and len(counts[0]) == 4
    assert report["out_of_scope"]["task"] == "extra" and report["out_of_scope"]["rows"] == 12
    assert 0 <= report["abstain_out_of_scope"] <= 1 and 0 <= report["abstain_in_scope"] <= 1
    assert report["gates"]["retention_on_routed_rows"]["passed"]
    for png in ("confusion.png", "per_task.png"):
        assert (b / "evaluation" / png).read_bytes()[:4] == b"\x89PNG"
    assert read_json(b / "evaluation" / "evaluation.json")["mixed_accuracy"] == report["mixed_accuracy"]
    manifest = read_json(b / "manifest.json")
    assert manifest["metrics"]["test"]["router_accuracy"] == report["router_accuracy"]
    assert "router_test_accuracy" in manifest["gates"]
    from ttlora_moe.moe.bundle import load_bundle

    load_bundle(b)  # the report and the recorded metrics do not break verification


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from ttlora_moe.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_build_evaluate_predict(env, tmp_path, capsys, monkeypatch):
    e = env["experts"]
    out = tmp_path / "cli-bundle"
    code, stdout, _ = run_cli(capsys, "build-bundle", "--experts", e["senti"], e["quest"], "--output", out, "--json")
    assert code == 0 and stdout.count("\n") == 1
    result = json.loads(stdout)
    assert result["experts"] == ["senti", "quest"]
    assert result["cache_hits"] + result["cache_misses"] == router_rows(env, "senti", "quest")

    code, stdout, _ = run_cli(capsys, "evaluate", "--bundle", out, "--test-per-task", 8, "--json")
    assert code == 0 and stdout.count("\n") == 1
    report = json.loads(stdout)
    assert {"router_accuracy", "per_task", "mixed_accuracy", "abstain_in_scope", "abstain_out_of_scope"} <= set(report)
    assert {"router_accuracy", "bundle_metric", "expert_metric"} <= set(report["per_task"]["quest"])

    inputs = tmp_path / "in.jsonl"
    rows = rows_of("quest", 1) + rows_of("senti", 1)
    inputs.write_text(json.dumps({"text": rows[0]["text"]}) + "\n\n"
                      + json.dumps({"text": rows[1]["text"], "text_pair": None}) + "\n")
    first = rows_of("senti", 1, 7)[0]["text"]
    code, stdout, _ = run_cli(capsys, "predict", "--bundle", out, first, "--file", inputs, "--json")
    assert code == 0 and stdout.count("\n") == 1
    predictions = json.loads(stdout)["predictions"]
    from ttlora_moe.moe.bundle import load_moe

    expected = load_moe(out).predict([{"text": first, "text_pair": None}] + rows)
    assert [p["text"] for p in predictions] == [first, rows[0]["text"], rows[1]["text"]]
    assert [{k: v for k, v in p.items() if k not in ("text", "text_pair")} for p in predictions] == json.loads(
        json.dumps(expected))
    assert {p["task"] for p in predictions} <= {"senti", "quest", None}
    code, stdout, _ = run_cli(capsys, "predict", "--bundle", out, first)
    assert code == 0 and stdout.startswith(("senti: ", "quest: ", "no expert fits")) and stdout.count("\n") == 1

    (out / "router.json").write_text((out / "router.json").read_text().replace('"kind"', '"kind" ', 1))
    code, stdout, err = run_cli(capsys, "predict", "--bundle", out, "the film was awful", "--json")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and stdout == "" and len(errors) == 1 and "router.json does not match its sha256" in errors[0]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_pair": "x"}\n')
    code, _, err = run_cli(capsys, "predict", "--bundle", out, "--file", bad)
    assert code == 2 and "bad.jsonl:1" in err
    code, _, err = run_cli(capsys, "build-bundle", "--experts", tmp_path / "nope", "--output", tmp_path / "x")
    assert code == 2 and "expert.json does not exist" in err
