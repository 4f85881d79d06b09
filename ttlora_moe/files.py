"""Small file helpers shared by every artifact writer: checksums and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttlora_moe.errors import BadInput

if TYPE_CHECKING:
    import torch

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file (memoised on path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) with stable formatting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def _old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it is renamed to ``target``.

    On any error the temporary directory is removed and ``target`` is left as it was, so a reader
    never sees a half-written artifact. Replacing an existing ``target`` takes two renames (``target``
    -> ``.<name>.old``, new -> ``target``): a process killed between them leaves only the old copy,
    under ``.<name>.old``. :func:`settled_dir` finds it for readers, and the next ``atomic_dir`` on
    ``target`` first puts it back, so ``target`` always reads as the old or the new version.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = _old_copy(target)
    if old.exists() and not target.exists():
        os.replace(old, target)  # an earlier replacement was cut between its renames: the old copy is current
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            if not replace:
                raise FileExistsError(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def settled_dir(target: Path) -> Path:
    """Where ``target``'s current version is: ``target``, or its ``.old`` copy when an
    :func:`atomic_dir` replacement was killed between its two renames."""
    target = Path(target)
    old = _old_copy(target)
    return old if not target.exists() and old.exists() else target


def remove_dir(target: Path) -> None:
    """Remove ``target`` and any ``.old`` copy an interrupted :func:`atomic_dir` left beside it."""
    for folder in (Path(target), _old_copy(Path(target))):
        shutil.rmtree(folder, ignore_errors=True)


def read_format_json(path: Path, expected_format: str, fix: str, missing_fix: str | None = None) -> dict[str, Any]:
    """A JSON object whose ``format`` must be ``expected_format``; missing, malformed or foreign is one BadInput line."""
    if not path.exists():
        raise BadInput(f"{path} does not exist", missing_fix or fix)
    try:
        data = read_json(path)
    except ValueError as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})", fix) from None
    got = data.get("format") if isinstance(data, dict) else None
    if got != expected_format:
        raise BadInput(f"{path} has format {got!r}, expected {expected_format!r}", fix)
    return data


def load_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    """Read a safetensors file; a corrupt or missing file is a clear error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist", "point to an expert directory with adapter.safetensors") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BadInput(f"{path} is not a readable safetensors file ({exc})", "re-create or re-download it") from None
