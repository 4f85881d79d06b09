"""Edit params.yaml in place, keeping its comments and layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ttlora_moe.errors import BadInput
from ttlora_moe.params import read_params_file as load_params
from ttlora_moe.paths import params_path


def add_to_task_list(name: str, path: Path | None = None) -> bool:
    """Append ``name`` to the ``tasks:`` list of params.yaml, keeping the file's comments; True if added.

    The list feeds dvc.yaml's ``prepare`` foreach and train-all-experts' default tasks.
    """
    path = Path(path or params_path())
    text = path.read_text()
    current = (load_params(path).get("tasks") or [])
    if name in current:
        return False
    flow = re.compile(r"^(tasks:\s*\[)([^\]]*)(\].*)$", re.M)
    match = flow.search(text)
    if match:
        items = [i.strip() for i in match.group(2).split(",") if i.strip()]
        text = text[:match.start()] + match.group(1) + ", ".join(items + [name]) + match.group(3) + text[match.end():]
    else:
        block = re.compile(r"^tasks:[ \t]*(#.*)?\n((?:[ \t]*-[^\n]*\n)+)", re.M)
        match = block.search(text if text.endswith("\n") else text + "\n")
        if not match:
            if re.search(r"^tasks:", text, re.M):
                raise BadInput(f"cannot edit the tasks list of {path}", "write it as `tasks: [a, b]` or a block list")
            text = text.rstrip("\n") + f"\n\ntasks: [{name}]\n"
        else:
            text = text if text.endswith("\n") else text + "\n"
            indent = re.match(r"[ \t]*", match.group(2)).group(0)
            text = text[:match.end()] + f"{indent}- {name}\n" + text[match.end():]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    if name not in (load_params(tmp).get("tasks") or []):
        tmp.unlink()
        raise BadInput(f"could not add {name!r} to the tasks list of {path}", "add it by hand")
    os.replace(tmp, path)
    return True
