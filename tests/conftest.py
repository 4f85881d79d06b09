"""Shared fixtures and helpers: tiny random BERT and LLaMA models saved as local folders, toy projects, the CLI
runner, S3 on moto, DVC repositories. Toy data builders live in :mod:`tests.toys`.

The suite writes nothing outside temporary folders: every cache and config that defaults to a place under
``$HOME`` is moved into one folder of this session (removed at its end) before anything is imported, and an
audit hook records any write this process still makes into a hidden folder of the real ``$HOME``
(``~/.cache/ttlora-moe``, ``~/.cache/matplotlib``, ...): one such write fails the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

REAL_HOME = Path.home().resolve()
HOME_CACHE = REAL_HOME / ".cache" / "ttlora-moe"  # the library's default cache_dir()
_HOME_CACHE_EXISTED = HOME_CACHE.exists()
STRAY_MLRUNS = Path.cwd() / "mlruns"  # where MLflow puts artifacts of a sqlite store that names no artifact root
_STRAY_MLRUNS_EXISTED = STRAY_MLRUNS.exists()
SESSION_HOME = Path(tempfile.mkdtemp(prefix="ttlora-moe-tests-home-"))
HOME_CACHES = {  # variable -> its folder in SESSION_HOME; each replaces a default under $HOME
    "TTLORA_CACHE": "ttlora-moe", "HF_HOME": "huggingface", "MPLCONFIGDIR": "matplotlib", "TORCH_HOME": "torch",
    "PREFECT_HOME": "prefect", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data",
}
for _name, _folder in HOME_CACHES.items():
    os.environ[_name] = str(SESSION_HOME / _folder)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WRITES = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.symlink",
           "os.link", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move"}
_COPIES = {"shutil.copyfile", "shutil.copytree", "os.symlink", "os.link"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
HOME_WRITES: list[str] = []


def home_write(event: str, args: tuple) -> str | None:
    """The path in a hidden folder of the real $HOME that audit ``event`` writes to, or None."""
    if event not in _WRITES:
        return None
    if event == "open":
        mode, flags = args[1], args[2] or 0
        if not (isinstance(mode, str) and any(c in mode for c in "wax+")) and not flags & _WRITE_FLAGS:
            return None
        args = args[:1]
    elif event in _COPIES:
        args = args[1:2]  # only the destination is written
    for arg in args:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = Path(os.path.abspath(os.fsdecode(arg)))
            if path.is_relative_to(REAL_HOME) and path != REAL_HOME and path.relative_to(REAL_HOME).parts[0][0] == ".":
                return f"{event} {path}"
    return None


def _record_home_writes(event: str, args: tuple) -> None:
    if event in _WRITES:  # the hook sees every audit event: leave the others fast
        found = home_write(event, args)
        if found:
            HOME_WRITES.append(found)


sys.addaudithook(_record_home_writes)

from tests.toys import (  # after the caches moved
    MOE_BUNDLE,
    MOE_ROUTER,
    MOE_TASKS,
    make_moe_expert,
    moe_card,
)


def pytest_terminal_summary(terminalreporter) -> None:
    for write in HOME_WRITES[:20]:
        terminalreporter.write_line(f"FAILED: the suite wrote under $HOME: {write}", red=True)


def pytest_sessionfinish(session) -> None:
    if not _HOME_CACHE_EXISTED and HOME_CACHE.exists():  # also catches a subprocess the audit hook cannot see
        HOME_WRITES.append(f"created {HOME_CACHE}")
    if not _STRAY_MLRUNS_EXISTED and STRAY_MLRUNS.exists():
        HOME_WRITES.append(f"created {STRAY_MLRUNS} (an MLflow experiment without an artifact location in the test's tmp dir)")
    if HOME_WRITES and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


WORDS = (
    "the a an is was good bad great awful movie film plot actor fun boring what why who where "
    "cat dog sat on mat yes no not very really question answer because and or but it this that "
    "sentence premise hypothesis true false maybe red blue green happy sad"
).split()


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if kind == "bert" else ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 2)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_tiny_model(folder: Path, kind: str, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` ('bert' or 'llama') model and its tokenizer into ``folder``."""
    import torch
    from transformers import AutoModel, BertConfig, LlamaConfig

    torch.manual_seed(seed)
    vocab = len(WORDS) + 4
    if kind == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=48, max_position_embeddings=64, pad_token_id=0)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=48, max_position_embeddings=64,
                             pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = AutoModel.from_config(config)
    model.save_pretrained(str(folder))
    _tokenizer(kind).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """Path (as a base-model reference) of a tiny random BERT encoder."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Path (as a base-model reference) of a tiny random LLaMA decoder."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="session")
def mirror() -> Path | None:
    """The real dataset mirror (``TTLORA_DATA_MIRROR`` or ../shared/datasets), or None if absent."""
    path = Path(os.environ.get("TTLORA_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    return path if path.is_dir() else None


@pytest.fixture()
def project(tmp_path, monkeypatch, tiny_bert):
    """A throwaway project: one toy task in a mirror, tiny budgets, the tiny BERT as base model."""
    mirror = tmp_path / "mirror" / "toy"
    mirror.mkdir(parents=True)
    words = ["good", "great", "bad", "awful"]
    pd.DataFrame([{"sentence": f"the movie {i} was {words[i % 4]}", "label": int(i % 4 < 2)} for i in range(600)]
                 ).to_parquet(mirror / "train.parquet")
    pd.DataFrame([{"sentence": f"a film {i} is {words[i % 4]}", "label": int(i % 4 < 2)} for i in range(40)]
                 ).to_parquet(mirror / "validation.parquet")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(yaml.safe_dump({
        "source": "toy", "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "sentence",
        "label": "label", "label_names": ["neg", "pos"], "label_values": [0, 1], "metric": "f1"}))
    params = {"base_model": {"ref": tiny_bert}, "tt": {"rank": 2, "alpha": 4.0},
              "prepare": {"min_rows": 5, "validation_max_rows": 60},
              "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_train_samples": 200, "evals_per_epoch": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"TTLORA_DATA_MIRROR": str(tmp_path / "mirror"), "TTLORA_TASKS_DIR": str(tasks),
           "TTLORA_DATA_DIR": str(tmp_path / "data"), "TTLORA_PARAMS": str(tmp_path / "params.yaml")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return tmp_path


@pytest.fixture()
def bench_results(tmp_path, monkeypatch):
    """Benchmark smoke runs write their tables and kept models into temporary folders, never the repository's."""
    monkeypatch.setenv("TTLORA_BENCH_RESULTS", str(tmp_path / "bench"))
    monkeypatch.setenv("TTLORA_BENCH_OUTPUTS", str(tmp_path / "bench-outputs"))
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "bench")
    return tmp_path / "bench"


# --- S3 (moto) -------------------------------------------------------------------------------

S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
          "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
          "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """An environment where boto3's chain finds nothing: no variables, no files, no instance metadata."""
    for name in S3_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def kill_between_renames(monkeypatch):
    """``kill(target, write)``: run ``write()``, an atomic_dir replacement of ``target``, but die after its first
    rename (the old version moved aside, the new one not yet in place), as a SIGKILL there would."""
    real = os.replace

    def kill(target: Path, write) -> None:
        def replace(src, dst):
            if Path(dst) == Path(target):
                raise KeyboardInterrupt("killed between the renames")
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            with pytest.raises(KeyboardInterrupt):
                write()
        finally:
            monkeypatch.setattr(os, "replace", real)

    return kill


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, above all on a busy machine (``usefixtures`` it per module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def init_dvc_project(root: Path, ignore_extra: str = "") -> Path:
    """A git repository laid out like the project for DVC: dvc.yaml, the data code it depends on, .gitignore."""
    import shutil
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "ttlora_moe").symlink_to(PROJECT_ROOT / "ttlora_moe")  # dvc.yaml lists the data code as a dependency
    (root / ".gitignore").write_text("/data/raw/*/*\n/data/prepared/\n/.dvc-remote/\n" + ignore_extra)
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``ttlora-moe ARGS`` in process: (exit code, stdout, stderr)."""
    from ttlora_moe.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- a toy mixture: four tasks with random experts, and a bundle of three of them -----------------

@pytest.fixture(scope="module")
def moe_env(tmp_path_factory, tiny_bert):
    """Four toy tasks in a mirror, params, and a random expert per task on the tiny BERT."""
    root = tmp_path_factory.mktemp("moe")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    for name, (_, _, _, make) in MOE_TASKS.items():
        folder = root / "mirror" / name
        folder.mkdir(parents=True)
        for file, n, offset in (("train.parquet", 120, 0), ("validation.parquet", 30, 7)):
            pd.DataFrame([{**make(i + offset)[0], "label": make(i + offset)[1]} for i in range(n)]).to_parquet(folder / file)
        (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(moe_card(name)))
    params = {"base_model": {"ref": tiny_bert}, "prepare": {"min_rows": 5, "validation_max_rows": 30},
              "router": MOE_ROUTER, "bundle": MOE_BUNDLE}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"TTLORA_DATA_MIRROR": str(root / "mirror"), "TTLORA_TASKS_DIR": str(tasks_dir),
           "TTLORA_DATA_DIR": str(root / "data"), "TTLORA_PARAMS": str(root / "params.yaml"),
           "TTLORA_CACHE": str(root / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        experts = {name: make_moe_expert(root / "experts" / name, tiny_bert, name, seed=i + 1)
                   for i, name in enumerate(MOE_TASKS)}
        yield {"root": root, "experts": experts, "params": params, "ref": tiny_bert}


@pytest.fixture(scope="module")
def moe_bundle(moe_env, tmp_path_factory):
    """A bundle of senti, nli and quest, built once."""
    from ttlora_moe.moe.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "b3"
    e = moe_env["experts"]
    summary = build_bundle([e["senti"], e["nli"], e["quest"]], out, params=moe_env["params"],
                           versions={"senti": "3"}, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def tiny_bert_base(tiny_bert):
    """The tiny BERT loaded as a base model, once per module."""
    from ttlora_moe.experts.base_model import load_base_model

    return load_base_model(tiny_bert)
