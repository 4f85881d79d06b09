"""Reading prepared splits."""

from __future__ import annotations

import pytest

from ttlora_moe.data.prepared import load_split, prepared_md5
from ttlora_moe.errors import BadInput


def test_load_split_errors(tmp_path):
    with pytest.raises(BadInput, match="does not exist .*prepare the task first"):
        load_split(tmp_path, "train")
    with pytest.raises(BadInput, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")
    with pytest.raises(BadInput, match="prepare the task first"):
        prepared_md5(tmp_path)
