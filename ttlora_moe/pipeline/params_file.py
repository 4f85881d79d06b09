"""Edit params.yaml in place with a round-trip YAML parser: comments, order and list styles stay."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from ttlora_moe.errors import BadInput
from ttlora_moe.params import read_params_file as load_params
from ttlora_moe.paths import params_path


def add_to_task_list(name: str, path: Path | None = None) -> bool:
    """Append ``name`` to the ``tasks:`` list of params.yaml, keeping the file's comments; True if added.

    The list feeds dvc.yaml's ``prepare`` foreach and train-all-experts' default tasks.
    """
    path = Path(path or params_path())
    text = path.read_text()
    try:
        yaml = _round_trip(text)
        data = yaml.load(text)
    except YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", "fix params.yaml") from None
    if not isinstance(data, CommentedMap):
        raise BadInput(f"{path} is not a mapping of sections", "see the project's params.yaml for the layout")
    tasks = data.get("tasks")
    if tasks is None:
        tasks = data["tasks"] = CommentedSeq()
    if not isinstance(tasks, CommentedSeq):
        raise BadInput(f"tasks in {path} is not a list ({tasks!r})", "write it as `tasks: [a, b]`")
    if name in tasks:
        return False
    flow = not tasks or tasks.fa.flow_style()
    tasks.append(name)
    if flow:
        tasks.fa.set_flow_style()
    out = io.StringIO()
    yaml.dump(data, out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(out.getvalue())
    expected = load_params(path)
    expected["tasks"] = [*(expected.get("tasks") or []), name]
    if load_params(tmp) != expected:  # the round trip changed nothing else
        tmp.unlink()
        raise BadInput(f"could not add {name!r} to the tasks list of {path}", "add it by hand")
    os.replace(tmp, path)
    return True


def _round_trip(text: str) -> YAML:
    """A ruamel.yaml parser/dumper that writes ``text`` back as it was (indents, null, long lines)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    _, _, offset = load_yaml_guess_indent(text)
    mapping = next((len(line) - len(line.lstrip(" ")) for line in text.splitlines()
                    if line.startswith(" ") and not line.lstrip().startswith(("#", "-"))), 2)
    yaml.indent(mapping=mapping, sequence=(offset or 0) + 2, offset=offset or 0)
    return yaml
