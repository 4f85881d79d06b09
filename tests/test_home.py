"""The suite writes nothing under $HOME: its caches live in a session folder, and a write there would be caught."""

from __future__ import annotations

import os

from tests.conftest import HOME_CACHES, HOME_WRITES, REAL_HOME, SESSION_HOME, home_write


def test_every_home_cache_points_into_the_session_folder():
    import matplotlib
    from huggingface_hub import constants

    from ttlora_moe.moe.feature_cache import features_dir
    from ttlora_moe.paths import cache_dir

    for name in HOME_CACHES:
        assert os.environ[name].startswith(str(SESSION_HOME)), name
    for path in (cache_dir(), features_dir(), matplotlib.get_cachedir(), constants.HF_HUB_CACHE):
        assert str(path).startswith(str(SESSION_HOME)), path


def test_a_write_into_the_real_home_caches_is_caught_and_reads_are_not():
    target = REAL_HOME / ".cache" / "ttlora-moe" / "features" / "x.safetensors"
    assert home_write("open", (str(target), "wb", 0)) == f"open {target}"
    assert home_write("open", (str(target).encode(), None, os.O_CREAT | os.O_WRONLY)) == f"open {target}"
    assert home_write("os.mkdir", (target.parent, 0o777, -1)) == f"os.mkdir {target.parent}"
    assert home_write("os.replace", ("/tmp/a", target, None, None)) == f"os.replace {target}"
    assert home_write("shutil.copyfile", (target, "/tmp/b")) is None  # reading from it
    assert home_write("open", (str(target), "r", 0)) is None
    assert home_write("open", (str(SESSION_HOME / "ttlora-moe" / "x"), "w", 0)) is None
    assert home_write("import", ("x",)) is None
    assert not HOME_WRITES, f"the suite so far wrote under $HOME: {HOME_WRITES[:5]}"
