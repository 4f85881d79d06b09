"""The MLflow pyfunc wrappers of an expert and of a bundle ("models from code", no pickle).

MLflow stores a three-line Python file that builds the wrapper; weights stay in safetensors and
load through the project's own loaders.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from ttlora_moe import __version__
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import META_FILE, read_expert_meta

# What a served model needs besides the Python it is served from (`--env-manager local`).
PIP_REQUIREMENTS = [f"ttlora-moe=={__version__}", "torch", "transformers>=5,<6", "safetensors", "pandas"]


_MODEL_CODE = """\
# Written by ttlora_moe.pipeline.pyfunc: MLflow loads the model by running this file (no pickle).
import mlflow
from ttlora_moe.pipeline.pyfunc import {cls}

mlflow.models.set_model({cls}())
"""


def _rows(model_input: Any) -> list[dict[str, Any]]:
    """Rows of ``{"text", "text_pair"}`` from what a pyfunc or the REST server hands over."""
    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        records = pd.DataFrame(model_input).to_dict(orient="records")
    elif isinstance(model_input, str):
        records = [{"text": model_input}]
    else:
        records = [r if isinstance(r, dict) else {"text": r} for r in list(model_input)]
    rows = []
    for r in records:
        text = r.get("text")
        if not isinstance(text, str):
            raise BadInput(f"input rows need a text column, got {sorted(r)}", "send {'text': ..., 'text_pair': ...}")
        pair = r.get("text_pair")
        rows.append({"text": text, "text_pair": pair if isinstance(pair, str) else None})
    return rows


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text"),
                                         ColSpec(DataType.string, "text_pair", required=False)]))


class ExpertPyfunc(PythonModel):
    """One expert alone: ``predict(DataFrame[text, text_pair?]) -> DataFrame[label, probabilities]``."""

    def load_context(self, context) -> None:
        from ttlora_moe.data.batching import Collator
        from ttlora_moe.experts.artifact import load_expert
        from ttlora_moe.experts.base_model import load_base_model

        directory = find_expert_dir(Path(context.artifacts["expert"]))
        meta = read_expert_meta(directory)
        base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"))
        self.expert = load_expert(directory, base)
        self.collate = Collator(base.tokenizer, int(meta.get("max_length", 128)))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from ttlora_moe.experts.training import predict

        rows = [{**r, "label": 0} for r in _rows(model_input)]
        _, probs = predict(self.expert.model, rows, self.collate, progress=False)
        names = self.expert.label_names
        return pd.DataFrame([{"task": self.expert.task, "label": names[int(p.argmax())],
                              "probabilities": {n: float(x) for n, x in zip(names, p.tolist())}} for p in probs])


class BundlePyfunc(PythonModel):
    """The routed mixture: ``predict(DataFrame[text, text_pair?])`` -> one row per input with the
    chosen task, label, class probabilities, router confidence and expert version (or abstained)."""

    def load_context(self, context) -> None:
        from ttlora_moe.moe.bundle import load_moe

        self.moe = load_moe(Path(context.artifacts["bundle"]))  # verifies every checksum

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        answers = self.moe.predict(_rows(model_input))
        return pd.DataFrame([{
            "task": a["task"], "label": a["label"], "probabilities": a["probabilities"],
            "router_confidence": a["router_confidence"], "abstained": a["abstained"],
            "expert": (a.get("expert") or {}).get("name"), "expert_version": (a.get("expert") or {}).get("version"),
        } for a in answers])


def log_pyfunc(name: str, cls: type, artifacts: dict[str, str]):
    """Log a models-from-code pyfunc in the active run; return MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example.*")  # the signature says it all
        code = Path(tmp) / f"{name.replace('-', '_')}_model.py"
        code.write_text(_MODEL_CODE.format(cls=cls.__name__))
        return mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts=artifacts,
                                       pip_requirements=PIP_REQUIREMENTS, signature=_signature())


def find_expert_dir(root: Path) -> Path:
    """The directory holding ``expert.json`` at or under ``root``."""
    if (root / META_FILE).exists():
        return root
    found = sorted(root.rglob(META_FILE))
    if not found:
        raise BadInput(f"no {META_FILE} under {root}", "the registered artifact is not a ttlora-moe expert")
    return found[0].parent
