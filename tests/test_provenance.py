"""What identifies the code: the source digest follows the package's Python files and nothing else."""

from __future__ import annotations

from ttlora_moe.provenance import code_cache_key, code_version, source_digest


def test_source_digest_changes_with_python_sources_only(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest(tmp_path)
    (tmp_path / "README.md").write_text("docs")
    (tmp_path / "sub" / "__pycache__").mkdir()
    (tmp_path / "sub" / "__pycache__" / "b.cpython-313.pyc").write_bytes(b"\0")
    assert source_digest(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    edited = source_digest(tmp_path)
    assert edited != first
    (tmp_path / "sub" / "b.py").rename(tmp_path / "b.py")  # same bytes, another module
    assert source_digest(tmp_path) not in (first, edited)


def test_the_cache_key_is_the_recorded_version_without_the_commit():
    recorded = code_version()
    assert code_cache_key() == {"package": recorded["package"], "source_digest": recorded["source_digest"]}
    assert len(recorded["source_digest"]) == 16
