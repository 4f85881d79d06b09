"""Building a bundle: a complete manifest, cached features reused, foreign or duplicate experts refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.toys import (
    MOE_ROUTER,
    make_moe_expert,
    moe_rows,
    router_rows,
)
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.files import read_json, sha256_file, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def test_build_bundle_writes_a_complete_manifest(moe_env, moe_bundle):
    from ttlora_moe.moe.bundle import load_bundle

    out, summary = moe_bundle
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
            assert sha256_file(out / "experts" / t / f) == sha256_file(moe_env["experts"][t] / f)
    assert manifest["base_model"]["fingerprint"] == load_base_model(moe_env["ref"]).fingerprint
    assert manifest["router"]["kind"] == "mlp" and manifest["router"]["features"]["segment_layers"] == "all"
    assert "router_validation_accuracy" in manifest["gates"]
    assert summary["router_validation_balanced_accuracy"] > 0.9  # toy tasks are easy to tell apart
    assert summary["cache_misses"] == router_rows(moe_env, "senti", "nli", "quest") and summary["seconds"]["total"] > 0
    assert load_bundle(out).tasks == ["senti", "nli", "quest"]


def test_adding_an_expert_reuses_cached_features_and_artifacts(moe_env, moe_bundle, tmp_path):
    from ttlora_moe.moe.build import build_bundle

    before = {t: {f: sha256_file(d / f) for f in ("expert.json", "adapter.safetensors")}
              for t, d in moe_env["experts"].items()}
    e = moe_env["experts"]
    summary = build_bundle([e["senti"], e["nli"], e["quest"], e["extra"]], tmp_path / "b4", params=moe_env["params"],
                           progress=False)
    # only the new task's rows are computed
    assert summary["cache_hits"] == router_rows(moe_env, "senti", "nli", "quest")
    assert summary["cache_misses"] == router_rows(moe_env, "extra")
    after = {t: {f: sha256_file(d / f) for f in ("expert.json", "adapter.safetensors")}
             for t, d in moe_env["experts"].items()}
    assert before == after
    old, new = read_json(moe_bundle[0] / "manifest.json"), read_json(tmp_path / "b4" / "manifest.json")
    for t in ("senti", "nli", "quest"):
        for f in ("expert.json", "adapter.safetensors"):
            assert old["files"][f"experts/{t}/{f}"] == new["files"][f"experts/{t}/{f}"]


def test_features_cached_ahead_make_the_build_router_only(moe_env, moe_bundle, tmp_path):
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.router_data import cache_task_features

    params = {**moe_env["params"], "train": {"max_length": 32}}  # the experts' max_length
    ahead = cache_task_features("extra", params=params, progress=False)
    assert ahead["cache_hits"] + ahead["cache_misses"] == router_rows(moe_env, "extra")
    summary = build_bundle([moe_env["experts"]["senti"], moe_env["experts"]["extra"]], tmp_path / "b", params=params,
                           progress=False)
    assert summary["cache_misses"] == 0 and summary["cache_hits"] == router_rows(moe_env, "senti", "extra")


def _copy(moe_bundle, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(moe_bundle[0], target)
    return target


def test_foreign_base_expert_is_refused(moe_env, moe_bundle, tiny_llama, tmp_path):
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import load_bundle

    foreign = make_moe_expert(tmp_path / "foreign" / "extra", tiny_llama, "extra", 5)
    with pytest.raises(BadInput, match=r"foreign/extra/expert.json was trained on base model"):
        build_bundle([moe_env["experts"]["senti"], foreign], tmp_path / "never", params=moe_env["params"], progress=False)
    assert not (tmp_path / "never").exists()
    # a hand-assembled bundle whose checksums were updated is still refused
    b = _copy(moe_bundle, tmp_path)
    meta_path = b / "experts" / "senti" / "expert.json"
    meta = read_json(meta_path)
    meta["base_model"]["fingerprint"] = "f" * 64
    write_json(meta_path, meta)
    manifest = read_json(b / "manifest.json")
    manifest["files"]["experts/senti/expert.json"] = sha256_file(meta_path)
    write_json(b / "manifest.json", manifest)
    with pytest.raises(BadInput, match=r"experts/senti/expert.json was trained on base model ffffffffffff"):
        load_bundle(b)


def test_unlabelled_inputs_join_the_router_training_mix(moe_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared
    from ttlora_moe.moe.build import build_bundle

    prepared = ensure_prepared(load_task_card("quest"), moe_env["params"])
    experts = [moe_env["experts"]["senti"], moe_env["experts"]["quest"]]
    build_bundle(experts, tmp_path / "a", params=moe_env["params"], progress=False)  # labelled rows now cached
    rows = moe_rows("quest", 30, offset=500)
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "text_pair": [None] * 30}), prepared / "unlabelled.parquet")
    try:
        router = {**MOE_ROUTER, "unlabelled_per_task": 25}
        summary = build_bundle(experts, tmp_path / "b", params=moe_env["params"], router=router, progress=False)
    finally:
        (prepared / "unlabelled.parquet").unlink()
    assert summary["cache_misses"] == 25
    from ttlora_moe.data.prepared import load_split

    labelled = sum(min(MOE_ROUTER["train_per_task"], len(load_split(prepared.parent / t, "train"))) for t in ("senti", "quest"))
    assert read_json(tmp_path / "b" / "router.json")["validation"]["train_rows"] == labelled + 25
    assert "quest/unlabelled" in read_json(tmp_path / "b" / "manifest.json")["data_md5"]


def test_bundle_refuses_two_experts_for_one_task(moe_env, tmp_path):
    from ttlora_moe.moe.build import build_bundle

    twin = shutil.copytree(moe_env["experts"]["senti"], tmp_path / "twin")
    with pytest.raises(BadInput, match="task 'senti' is already served"):
        build_bundle([moe_env["experts"]["senti"], twin], tmp_path / "b", params=moe_env["params"], progress=False)
