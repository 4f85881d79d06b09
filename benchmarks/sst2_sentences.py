"""Real SST-2 sentences for timing runs (from the mirror), or synthetic ones when it is absent."""

from __future__ import annotations

import os
from pathlib import Path


def sst2_sentences(n: int) -> list[str]:
    """``n`` sentences of the SST-2 validation file, cycling if needed."""
    mirror = Path(os.environ.get("TTLORA_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    files = sorted((mirror / "sst2").glob("validation*.parquet"))
    if files:
        import pandas as pd

        sentences = pd.read_parquet(files[0])["sentence"].tolist()
    else:
        sentences = ["a quietly moving film about friendship and the small choices that shape a life ."]
    return [sentences[i % len(sentences)] for i in range(n)]
