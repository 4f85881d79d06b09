"""`ttlora-moe tasks add` and `ttlora-moe promote`: the JSON contract, every bad input as one line and
exit code 2 with nothing half-registered, a CSV with its own column names, unreachable servers."""

from __future__ import annotations

import ast
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, S3_ENV, init_dvc_project, run_cli
from tests.pipeline.conftest import project_snapshot

WORDS = ["good", "great", "bad", "awful"]


PARAMS = "# params\ntasks: [toy]\nprepare:\n  min_rows: 5\n  validation_max_rows: 60\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC project (local remote) with one registered task, shared by this module's tests."""
    root = tmp_path_factory.mktemp("cli") / "project"
    (root / "data" / "tasks").mkdir(parents=True)
    init_dvc_project(root)
    (root / "params.yaml").write_text(PARAMS)
    (root / "data" / "tasks" / "toy.yaml").write_text(yaml.safe_dump({
        "source": "toy", "text": "sentence", "label": "label", "files": {"train": "train.parquet"},
        "label_names": ["neg", "pos"], "label_values": [0, 1]}))
    data = root.parent / "sources"
    data.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTLORA_PROJECT_DIR", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root.parent}/mlflow.db")
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DVC_REMOTE", "TTLORA_S3"):
            mp.delenv(name, raising=False)
        from ttlora_moe.pipeline.dvc_remote import configure_remote, ensure_repo

        ensure_repo(root)
        configure_remote(root=root)
        yield {"root": root, "data": data}


def reviews_csv(folder: Path, name: str = "reviews.csv", rows: int = 120, **overrides) -> Path:
    """Customer reviews with their own column names (not GLUE's): body, headline, rating."""
    df = pd.DataFrame([{"body": f"the movie {i} was {WORDS[i % 4]}", "headline": f"review {i}",
                        "rating": ["negative", "positive"][i % 4 < 2], "stars": 1 + i % 5} for i in range(rows)])
    for column, values in overrides.items():
        df[column] = values
    path = folder / name
    df.to_csv(path, index=False)
    return path


def test_tasks_add_csv_with_own_columns(repo, capsys):
    root = repo["root"]
    csv = reviews_csv(repo["data"])
    code, out, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(csv), "--text", "body",
                             "--text-pair", "headline", "--label", "rating", "--json")
    assert code == 0, err
    assert out.count("\n") == 1
    result = json.loads(out)["registered"]
    assert result["task"] == "reviews" and result["labels"] == ["negative", "positive"]
    assert result["files"] == {"labelled": "reviews.csv"} and sum(result["rows"].values()) == 120
    card = yaml.safe_load((root / "data" / "tasks" / "reviews.yaml").read_text())
    assert card["text"] == "body" and card["text_pair"] == "headline" and card["label"] == "rating"
    assert (root / "data" / "raw" / "reviews.dvc").exists() and (root / "data" / "raw" / "reviews" / "reviews.csv").exists()
    assert (root / "data" / "prepared" / "reviews" / "train.parquet").exists()
    params = (root / "params.yaml").read_text()
    assert params.startswith("# params\n") and yaml.safe_load(params)["tasks"] == ["toy", "reviews"]
    assert "prepare@reviews" in (root / "dvc.lock").read_text()
    assert not list((root / "data" / "raw").glob(".staging-*"))

    # Listed like any other task; registering the same name again is refused unless --replace.
    code, out, _ = run_cli(capsys, "tasks", "list", "--json")
    assert "reviews" in [t["task"] for t in json.loads(out)["tasks"]]
    code, _, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(csv), "--text", "body", "--label", "rating")
    assert code == 2 and "task 'reviews' is already registered" in err and "--replace" in err
    ids = reviews_csv(repo["data"], "ids.csv", rating=[i % 2 for i in range(120)])
    code, out, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(ids), "--text", "body", "--label", "rating",
                             "--label-names", "bad,good", "--replace", "--json")
    assert code == 0, err
    assert json.loads(out)["registered"]["replaced"] is True
    card = yaml.safe_load((root / "data" / "tasks" / "reviews.yaml").read_text())
    assert card["label_names"] == ["bad", "good"] and card["label_values"] == [0, 1]
    assert yaml.safe_load((root / "params.yaml").read_text())["tasks"] == ["toy", "reviews"]


def test_tasks_add_registers_a_multiple_choice_task(repo, capsys):
    """--choices makes a multiple-choice card: --text is a template, the options a comma-separated list."""
    root = repo["root"]
    quiz = repo["data"] / "quiz.csv"
    pd.DataFrame([{"story": f"story {i}.", "ask": f"where is thing {i}?", "one": f"bank {i}", "two": f"shop {i}",
                   "three": f"park {i}", "right": "ABC"[i % 3]} for i in range(120)]).to_csv(quiz, index=False)
    code, out, err = run_cli(capsys, "tasks", "add", "quiz", "--source", str(quiz), "--text", "{story} {ask}",
                             "--choices", "one,two", "--choices", "three", "--label", "right", "--json")
    assert code == 0, err
    assert json.loads(out)["registered"]["labels"] == ["A", "B", "C"]
    from ttlora_moe.data.cards import load_task_card

    card = load_task_card("quiz", root / "data" / "tasks")
    assert (card.kind, card.choices, card.text, card.label_values) == ("multiple_choice", ["one", "two", "three"],
                                                                       "{story} {ask}", ["A", "B", "C"])
    code, _, err = run_cli(capsys, "tasks", "add", "quiz2", "--source", str(quiz), "--text", "ask",
                           "--choices", "one,two,three", "--label", "right", "--text-pair", "story")
    assert code == 2 and err.count("\n") == 1 and "--text-pair and --choices" in err


def _bad(repo, name):  # the sources of the bad-input cases, written on demand
    data = repo["data"]
    if name == "numbers":
        return reviews_csv(data, "numbers.csv")
    if name == "labels":
        return reviews_csv(data, "labels.csv", rating=["positive", "negative", "meh"] * 40)
    if name == "single":
        return reviews_csv(data, "single.csv", rating=["positive"] * 120)
    if name == "few":
        return reviews_csv(data, "few.csv", rows=10)
    return reviews_csv(data, "ok.csv")


def assert_one_error_nothing_written(repo, before, code, out, err, message):
    """Exit code 2, nothing on stdout, exactly one `error:` line holding ``message``, the project unchanged."""
    assert code == 2 and out == "", err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert "re-import" not in err
    assert project_snapshot(repo["root"]) == before
    assert not list((repo["root"] / "data" / "raw").glob(".staging-*"))


@pytest.mark.parametrize("args,message", [
    (["tasks", "add", "nowhere", "--source", "/no/such/file.csv", "--text", "body", "--label", "rating"],
     "dataset path /no/such/file.csv does not exist"),
    (["tasks", "add", "cols", "--source", "{ok}", "--text", "review", "--label", "rating"],
     "column 'review' is not in ok.csv (columns: body, headline, rating, stars)"),
    (["tasks", "add", "nums", "--source", "{numbers}", "--text", "stars", "--label", "rating"],
     "input column 'stars' of numbers.csv is not text"),
    (["tasks", "add", "labs", "--source", "{labels}", "--text", "body", "--label", "rating",
      "--label-names", "positive", "--label-names", "negative"], "labels ['meh'] in column 'rating' are not in --label-names"),
    (["tasks", "add", "one", "--source", "{single}", "--text", "body", "--label", "rating"], "has a single class"),
    (["tasks", "add", "few", "--source", "{few}", "--text", "body", "--label", "rating"], "has 10 rows; at least 15 are needed"),
    (["tasks", "add", "toy", "--source", "{ok}", "--text", "body", "--label", "rating"], "task 'toy' is already registered"),
    (["tasks", "add", "Bad-Name", "--source", "{ok}", "--text", "body", "--label", "rating"], "task name 'Bad-Name' is not a valid identifier"),
])
def test_tasks_add_bad_input_is_one_line_exit_2_nothing_written(repo, capsys, args, message):
    args = [a.format(**{k: _bad(repo, k) for k in ("ok", "numbers", "labels", "single", "few")}) if "{" in a else a
            for a in args]
    before = project_snapshot(repo["root"])
    code, out, err = run_cli(capsys, *args, "--json")
    assert_one_error_nothing_written(repo, before, code, out, err, message)


# --- a battery of careless and malformed inputs: each one line, exit 2, nothing written -----------

ROWS = [(f"the movie {i} was {WORDS[i % 4]}", ["negative", "positive"][i % 4 < 2]) for i in range(120)]
GOOD_CSV = "body,rating\n" + "".join(f"{t},{r}\n" for t, r in ROWS)


def _file(name: str, content: str | bytes):
    def write(folder: Path) -> str:
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(folder / name)
    return write


def _csv(name: str, rows) -> Callable[[Path], str]:
    return _file(name, "body,rating\n" + "".join(f"{t},{r}\n" for t, r in rows))


def _folder(name: str, extra: Callable[[Path], None]):
    def write(folder: Path) -> str:
        (folder / name).mkdir()
        (folder / name / "good.csv").write_text(GOOD_CSV)
        extra(folder / name)
        return str(folder / name)
    return write


def _link(name: str, target: str):
    def write(folder: Path) -> str:
        (folder / name).symlink_to(target)
        return str(folder / name)
    return write


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.csv")
    return str(folder / "pipe.csv")


BATTERY = [  # id, source writer, arguments after the source (default: --text body --label rating), message
    ("empty-source", lambda folder: "", None, "--source is empty"),
    ("same-column", _csv("same.csv", ROWS), ["--text", "body", "--label", "body"],
     "--text and --label both name the column 'body'"),
    ("pair-is-text", _csv("pair.csv", ROWS), ["--text", "body", "--text-pair", "body", "--label", "rating"],
     "--text and --text-pair both name the column 'body'"),
    ("empty-option", _csv("opt.csv", ROWS), ["--text", "", "--label", "rating"], "--text is empty"),
    ("wrong-case-column", _csv("case.csv", ROWS), ["--text", "Body", "--label", "rating"],
     "column 'Body' is not in case.csv (columns: body, rating) (did you mean 'body'?)"),
    ("duplicate-header", _file("dup.csv", "body,rating,body\n" + "".join(f"{t},{r},x\n" for t, r in ROWS)), None,
     "has the column 'body' twice (columns 1 and 3)"),
    ("mixed-labels", _csv("mixed.csv", [(t, "none" if i % 7 == 0 else i % 2) for i, (t, _) in enumerate(ROWS)]), None,
     "column 'rating' mixes numbers and text labels ('0', '1' and 'none') (pass --unlabelled-values none if"),
    ("blank-labels", _csv("blank.csv", [(t, "" if i % 30 == 0 else r) for i, (t, r) in enumerate(ROWS)]), None,
     "4 row(s) have an empty label in column 'rating' (fill them in, or pass --unlabelled-values ''"),
    ("id-labels", _csv("ids.csv", [(t, f"review-{i}") for i, (t, _) in enumerate(ROWS)]), None,
     "column 'rating' looks like an identifier, not a label: 120 distinct values in 120 rows"),
    ("score-labels", _csv("score.csv", [(t, i % 5 / 2) for i, (t, _) in enumerate(ROWS)]), None,
     "column 'rating' holds non-integer numbers ('0.5', '1.5')"),
    ("case-labels", _csv("caps.csv", [(t, r.title() if i % 3 == 0 else r) for i, (t, r) in enumerate(ROWS)]), None,
     "labels ['Negative', 'negative'] in column 'rating' differ only in upper/lower case"),
    ("more-ids-than-classes", _csv("ids01.csv", [(t, i % 2) for i, (t, _) in enumerate(ROWS)]),
     ["--text", "body", "--label", "rating", "--label-names", "a,b,c"], "3 --label-names for 2 classes in column 'rating'"),
    ("more-names-than-classes", _csv("names.csv", ROWS),
     ["--text", "body", "--label", "rating", "--label-names", "negative,positive,meh"],
     "--label-names ['meh'] never occur in column 'rating'"),
    ("class-and-unlabelled", _csv("both.csv", ROWS),
     ["--text", "body", "--label", "rating", "--label-names", "negative,positive", "--unlabelled-values", "positive"],
     "--label-names and --unlabelled-values both name ['positive']"),
    ("empty-text", _csv("notext.csv", [("", r) for _, r in ROWS]), None, "input column 'body' of notext.csv is empty in every row"),
    ("latin-1", _file("latin.csv", ("body,rating\ncaf\xe9 review,positive\n" + GOOD_CSV[12:]).encode("latin-1")), None,
     "latin.csv is not UTF-8 text (byte 0xe9 on line 2) (re-save it as UTF-8"),
    ("utf-16", _file("wide.csv", GOOD_CSV.encode("utf-16")), None, "wide.csv is UTF-16 text"),
    ("binary", _file("zip.csv", b"PK\x03\x04\x00\x00\x08"), None, "zip.csv is not a text file (a NUL byte on line 1)"),
    ("semicolons", _file("semi.csv", GOOD_CSV.replace(",", ";")), None, "its values look separated by semicolons"),
    ("tabs", _file("tabs.csv", GOOD_CSV.replace(",", "\t")), None, "its values look separated by tabs"),
    ("broken-line", _file("broken.csv", GOOD_CSV.replace("movie 2 was", "movie 2, was")), None,
     "line 4 of {data}/broken.csv has 3 values but the header has 2 (quote every value that contains a comma"),
    ("unclosed-quote", _file("quote.csv", GOOD_CSV.replace("the movie 5 ", '"the movie 5 ')), None,
     "line 7 of {data}/quote.csv is not valid CSV (unexpected end of data) (close every quote"),
    ("empty-file", _file("empty.csv", ""), None, "{data}/empty.csv is empty"),
    ("corrupt-parquet", _file("bad.parquet", b"PAR1 but not really"), None, "bad.parquet is not a readable Parquet file"),
    ("bad-jsonl", _file("bad.jsonl", '{"body": "a", "rating": "x"}\n{"body": \n'), None,
     "bad.jsonl is not valid JSON Lines (line 2: Expecting value)"),
    ("not-data", _file("notes.txt", GOOD_CSV), None, "notes.txt is not a .parquet/.csv/.jsonl/.json file"),
    ("broken-link", _link("gone.csv", "/no/such/target.csv"), None, "gone.csv is a broken symbolic link"),
    ("named-pipe", _fifo, None, "pipe.csv is a named pipe, not a regular file"),
    ("device", _link("null.csv", "/dev/null"), None, "null.csv is a character device, not a regular file"),
    ("pipe-in-folder", _folder("piped", lambda f: os.mkfifo(f / "more.csv")), None, "more.csv is a named pipe, not a regular file"),
    ("device-in-folder", _folder("devices", lambda f: (f / "zero.csv").symlink_to("/dev/zero")), None,
     "zero.csv is a character device, not a regular file"),
    ("folder-without-data", lambda folder: (folder / "nodata" / "sub").mkdir(parents=True) or str(folder / "nodata"), None,
     "holds no .parquet/.csv/.jsonl/.json files"),
]
NAMES = [  # task names: one line each
    ("too-long", "a" * 41, "task name 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' has 41 characters (at most 40)"),
    ("very-long", "x" * 100_000, "has 100000 characters"),
    ("yaml-word", "yes", "task name 'yes' is a YAML keyword"),
    ("digit-lookalike", "t0y", "task name 't0y' looks like the existing task 'toy'"),
    ("cyrillic-lookalike", "tоy", "looks like the existing task 'toy'"),
    ("non-ascii", "café", "task name 'café' is not a valid identifier"),
]


@pytest.mark.parametrize("name,writer,options,message",
                         [pytest.param("careless", w, o, m, id=i) for i, w, o, m in BATTERY]
                         + [pytest.param(n, _csv(f"{i}.csv", ROWS), None, m, id=i) for i, n, m in NAMES])
def test_tasks_add_malformed_input_battery(repo, capsys, request, name, writer, options, message):
    folder = repo["data"] / "battery" / request.node.callspec.id
    folder.mkdir(parents=True)
    source = writer(folder)
    before = project_snapshot(repo["root"])
    code, out, err = run_cli(capsys, "tasks", "add", name, "--source", source,
                             *(options or ["--text", "body", "--label", "rating"]), "--json")
    assert_one_error_nothing_written(repo, before, code, out, err, message.format(data=folder))
    assert len(err) < 1000


@pytest.mark.parametrize("args,message", [
    (["tasks", "add", "x", "--source", "s", "--text", "t", "--label", "l", "--bogus"],
     "error: No such option: --bogus (see `ttlora-moe tasks add --help`)"),
    (["tasks", "add", "x", "--source", "s", "--text", "t"], "error: Missing option '--label'."),
    (["tasks", "add", "x", "--source"], "error: Option '--source' requires an argument."),
    (["tasks", "adds"], "error: No such command 'adds'."),
])
def test_usage_errors_are_one_line_exit_2(repo, capsys, args, message):
    before = project_snapshot(repo["root"])
    code, out, err = run_cli(capsys, *args)
    assert_one_error_nothing_written(repo, before, code, out, err, message)
    assert len(err.strip().splitlines()) == 1


def test_an_unreadable_source_is_one_line(repo, capsys, monkeypatch):
    """Root reads any file, so the refusal is simulated where the bytes are read."""
    path = Path(_csv("locked.csv", ROWS)(repo["data"]))
    read_bytes = Path.read_bytes

    def refuse(self):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    before = project_snapshot(repo["root"])
    code, out, err = run_cli(capsys, "tasks", "add", "locked", "--source", path, "--text", "body", "--label", "rating")
    assert_one_error_nothing_written(repo, before, code, out, err, f"cannot read {path}: Permission denied")


def test_tasks_add_a_careless_csv_end_to_end(repo, capsys):
    """Upper-case suffix, BOM, CRLF, blank lines, spaced headers, trailing commas, float labels, blank labels
    the user names as unlabelled: registered, tracked and prepared, every dropped row said."""
    lines = ["\ufeff body , rating ,"] + [f"{t},{'' if i % 40 == 0 else float(i % 4 < 2)}," for i, (t, _) in enumerate(ROWS)]
    path = repo["data"] / "Careless.CSV"
    path.write_text("\r\n\r\n".join(lines) + "\r\n", newline="")
    code, out, err = run_cli(capsys, "tasks", "add", "sloppy", "--source", path, "--text", "body", "--label", "rating",
                             "--unlabelled-values", "", "--json")
    assert code == 0, err
    result = json.loads(out)["registered"]
    assert result["labels"] == ["0", "1"] and sum(result["rows"].values()) == 117
    assert result["notes"] == ["dropped 3 row(s) with a label named by --unlabelled-values"]
    card = yaml.safe_load((repo["root"] / "data" / "tasks" / "sloppy.yaml").read_text())
    assert card["label_values"] == [0, 1] and card["unlabelled_values"] == [""] and card["files"] == {"labelled": "Careless.CSV"}
    assert (repo["root"] / "data" / "raw" / "sloppy" / "Careless.CSV").read_bytes() == path.read_bytes()


class FakePrefect:
    """The Prefect server as `tasks add --train` sees it: deployments that exist, and flow runs that end
    in ``state`` with ``results`` by deployment."""

    def __init__(self, monkeypatch, deployments: set[str], results: dict[str, dict], completed: bool = True):
        import prefect.client.orchestration
        import prefect.deployments
        import prefect.deployments.flow_runs

        # (monkeypatch reads prefect.deployments.run_deployment, a lazy attribute), it would keep the fake for good
        from ttlora_moe.pipeline import services

        self.deployments, self.results, self.completed, self.runs = deployments, results, completed, []
        monkeypatch.setattr(services, "check_mlflow", lambda: None)
        monkeypatch.setattr(services, "check_prefect", lambda: None)
        monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda sync_client=False: self)
        monkeypatch.setattr(prefect.deployments, "run_deployment", self.run_deployment)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_deployment_by_name(self, name):
        from prefect.exceptions import ObjectNotFound

        if name not in self.deployments:
            raise ObjectNotFound(http_exc=Exception("404"))
        return name

    def run_deployment(self, name, parameters=None, timeout=None):
        self.runs.append((name, parameters))
        state = SimpleNamespace(name="Completed" if self.completed else "Failed", message="boom",
                                is_completed=lambda: self.completed, result=lambda: self.results[name])
        return SimpleNamespace(name=f"run-{len(self.runs)}", state=state)


EXPERT = {"version": 3, "model_uri": "models:/expert-trained/3", "test_accuracy": 0.75}
BUNDLE = {"model_uri": "models:/ttlora-moe/9", "gates_passed": True}


def test_tasks_add_train_runs_the_deployments_by_name(repo, capsys, monkeypatch):
    prefect = FakePrefect(monkeypatch, {"train-expert/gpu", "build-moe-bundle/gpu"},
                          {"train-expert/gpu": EXPERT, "build-moe-bundle/gpu": BUNDLE})
    source = _bad(repo, "ok")
    code, out, err = run_cli(capsys, "tasks", "add", "trained", "--source", source, "--text", "body", "--label", "rating",
                             "--train", "--deployment", "gpu", "--json")
    assert code == 0, err
    assert prefect.runs == [("train-expert/gpu", {"task": "trained", "profile": None}),
                            ("build-moe-bundle/gpu", {"versions": {"trained": 3}, "profile": None})]
    assert json.loads(out)["expert"] == EXPERT and json.loads(out)["bundle"] == BUNDLE

    # --no-bundle: only the expert (its bundle deployment need not exist); a missing deployment: nothing written.
    prefect.deployments, prefect.runs = {"train-expert/gpu"}, []
    code, out, err = run_cli(capsys, "tasks", "add", "trained", "--source", source, "--text", "body", "--label", "rating",
                             "--replace", "--train", "--deployment", "gpu", "--no-bundle", "--profile", "demo")
    assert code == 0, err
    assert prefect.runs == [("train-expert/gpu", {"task": "trained", "profile": "demo"})] and "bundle" not in out
    before = project_snapshot(repo["root"])
    code, out, err = run_cli(capsys, "tasks", "add", "trained2", "--source", source, "--text", "body", "--label", "rating",
                             "--train", "--deployment", "gpu")
    assert_one_error_nothing_written(repo, before, code, out, err, "deployment build-moe-bundle/gpu does not exist")
    code, out, err = run_cli(capsys, "tasks", "add", "trained2", "--source", source, "--text", "body", "--label", "rating",
                             "--train", "--deployment", "train-expert/gpu")
    assert_one_error_nothing_written(repo, before, code, out, err, "--deployment 'train-expert/gpu' is not a deployment name")

    # A flow run that fails: the task stays registered, the run's end is one line, exit code 1.
    prefect.deployments, prefect.completed = {"train-expert/local", "build-moe-bundle/local"}, False
    code, out, err = run_cli(capsys, "tasks", "add", "trained", "--source", source, "--text", "body", "--label", "rating",
                             "--replace", "--train")
    assert code == 1 and out == "" and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        ["error: flow run run-2 of train-expert/local ended Failed: boom"]


def test_the_cli_never_imports_the_flows():
    """The flows call the library, never the reverse: the CLI reaches them as Prefect deployments."""
    for path in (PROJECT_ROOT / "ttlora_moe" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "flows" or n.startswith("flows.") for n in names), path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variable,url,message", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow server at http://127.0.0.1:{port} is unreachable"),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect server at http://127.0.0.1:{port}/api is unreachable"),
])
def test_tasks_add_train_with_a_server_down(repo, capsys, monkeypatch, variable, url, message):
    port = _closed_port()
    monkeypatch.setenv(variable, url.format(port=port))
    before = project_snapshot(repo["root"])
    code, _, err = run_cli(capsys, "tasks", "add", "down", "--source", str(_bad(repo, "ok")), "--text", "body",
                           "--label", "rating", "--train")
    assert code == 2 and message.format(port=port) in err
    assert project_snapshot(repo["root"]) == before


def test_tasks_add_with_an_s3_remote_and_no_credentials(repo, capsys, monkeypatch, tmp_path):
    for name in S3_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("TTLORA_DVC_REMOTE", "s3://ttlora-moe/dvc")
    before = project_snapshot(repo["root"])
    code, _, err = run_cli(capsys, "tasks", "add", "s3task", "--source", str(_bad(repo, "ok")), "--text", "body",
                           "--label", "rating")
    assert code == 2 and "S3 credentials are missing" in err and "AWS_ACCESS_KEY_ID" in err
    assert project_snapshot(repo["root"]) == before


def test_promote(repo, capsys):
    """Versions registered directly (gates passed / failed) stand in for bundles here; test_registry builds real ones."""
    from mlflow import MlflowClient

    c = MlflowClient()
    c.create_registered_model("ttlora-moe")
    source = repo["root"].parent / "dummy-model"
    source.mkdir(exist_ok=True)
    good = c.create_model_version("ttlora-moe", str(source), tags={"gates_passed": "true"}).version
    bad = c.create_model_version("ttlora-moe", str(source), tags={"gates_passed": "false",
                                                                  "gates_failed": "router_test_accuracy 0.610 < 0.950"}).version
    code, out, err = run_cli(capsys, "promote", str(good), "--json")
    assert code == 0, err
    assert json.loads(out) == {"model": "ttlora-moe", "alias": "champion", "version": int(good), "previous": None,
                               "gates_passed": True, "forced": False, "model_uri": "models:/ttlora-moe@champion",
                               "comparison": []}  # nothing promoted before it
    code, out, err = run_cli(capsys, "promote", str(bad))
    assert code == 2 and out == ""
    assert f"version {bad} failed its gates (router_test_accuracy 0.610 < 0.950)" in err and "--force" in err
    assert str(c.get_model_version_by_alias("ttlora-moe", "champion").version) == str(good)
    code, out, _ = run_cli(capsys, "promote", str(bad), "--force")
    assert code == 0 and f"ttlora-moe@champion -> version {bad} (was version {good})" in out
    code, _, err = run_cli(capsys, "promote", "42")
    assert code == 2 and "model version ttlora-moe/42 does not exist (known versions: 1, 2)" in err
    code, _, err = run_cli(capsys, "promote", "latest")
    assert code == 2 and "is not a version number" in err
