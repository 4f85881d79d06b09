"""The MLflow pyfunc wrappers of an expert and of a bundle ("models from code", no pickle).

MLflow stores a three-line Python file that builds the wrapper; weights stay in safetensors and
load through the project's own loaders. A logged model is self-contained: it carries this package's
code (``code_paths``), pins requirements that resolve from the package index (never this project,
which is not published), and a bundle carries its base model's files unless the base is a hub id
(``serve.log_base_model``), so ``mlflow models serve`` works with MLflow's default environment
manager and ``mlflow models generate-dockerfile`` / ``build-docker`` have all they need.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.pyfunc import PythonModel

from ttlora_moe.devices import serving_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import META_FILE, read_expert_meta
from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.pipeline.heap_release import HeapRelease
from ttlora_moe.pipeline.micro_batching import MicroBatcher, Overloaded
from ttlora_moe.pipeline.own_thread import run_on_own_thread
from ttlora_moe.pipeline.requests import RequestLimits, request_rows

# The distributions the pyfunc code imports (the package itself travels as code_paths).
REQUIRED_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "pyarrow",
                          "pyyaml", "scikit-learn", "tqdm")


def pip_requirements() -> list[str]:
    """Every distribution the served code imports, pinned to the version installed here (all on PyPI)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIRED_DISTRIBUTIONS]


_MODEL_CODE = """\
# Written by ttlora_moe.pipeline.pyfunc: MLflow loads the model by running this file (no pickle).
import mlflow
from ttlora_moe.pipeline.pyfunc import {cls}

mlflow.models.set_model({cls}())
"""


class RequestError(MlflowException):
    """An error whose HTTP answer is this message alone.

    MLflow's scoring server prefixes the message of every ``MlflowException`` a model raises with
    ``Failed to predict data '<the request>'``. For ``inputs`` and ``instances`` that is the whole request: a
    400 for one bad row of a thousand long ones came back as megabytes of the client's own text. Later
    assignments that only wrap the message are ignored.
    """

    @property
    def message(self) -> str:
        return self._said

    @message.setter
    def message(self, value: str) -> None:
        said = getattr(self, "_said", None)
        self._said = said if said is not None and value.endswith(said) else value


def _checked_rows(model_input: Any, limits: RequestLimits) -> list[dict[str, Any]]:
    """The request's rows, or HTTP 400 (MLflow's INVALID_PARAMETER_VALUE) naming the bad row and field."""
    try:
        return request_rows(model_input, limits)
    except BadInput as exc:
        raise RequestError.invalid_parameter_value(str(exc)) from None


class _BatchedPyfunc(PythonModel):
    """A pyfunc whose rows, from any number of scoring-server threads, go through one micro-batching worker."""

    limits: RequestLimits
    batcher: MicroBatcher

    def load_context(self, context) -> None:
        """:meth:`_load` on a thread of its own that ends with the load, so that the micro-batching worker is the
        only thread left with an OpenMP team (:mod:`~ttlora_moe.pipeline.own_thread`: two teams on a 2-core server
        cost the bundle about 10% of its throughput under load)."""
        run_on_own_thread(lambda: self._load(context))

    def _load(self, context) -> None:
        """Load the model from ``context``'s artifacts and :meth:`serve` it."""
        raise NotImplementedError

    def serve(self, predict, config: ServeConfig) -> None:
        """Answer requests with ``predict(rows) -> answers`` under ``config``'s limits, batching and heap release."""
        self.limits = RequestLimits(max_rows=config.max_rows, max_chars=config.max_chars)
        release = HeapRelease(config.release_heap_mb)  # the worker's alone: it is the only caller

        def predict_then_release(rows: list[dict[str, Any]]) -> list[Any]:
            try:
                return predict(rows)
            finally:
                release()

        self.batcher = MicroBatcher(predict_then_release, max_rows=config.batch_rows, max_wait_ms=config.batch_wait_ms,
                                    max_pending_rows=config.max_pending_rows, timeout_s=config.queue_timeout_s)

    def answers(self, model_input: Any) -> list[Any]:
        rows = _checked_rows(model_input, self.limits)
        try:
            return self.batcher(rows)
        except Overloaded as exc:  # HTTP 503: the client may retry, unlike after a 400
            raise RequestError(f"{exc}; retry later", error_code=TEMPORARILY_UNAVAILABLE) from None


class ExpertPyfunc(_BatchedPyfunc):
    """One expert alone: ``predict(DataFrame[text, text_pair?]) -> DataFrame[label, probabilities]``."""

    def _load(self, context) -> None:
        from ttlora_moe.data.batching import Collator
        from ttlora_moe.experts.artifact import load_expert
        from ttlora_moe.experts.base_model import load_base_model
        from ttlora_moe.experts.training import predict
        from ttlora_moe.tt.inject import merge_adapters

        directory = find_expert_dir(Path(context.artifacts["expert"]))
        meta = read_expert_meta(directory)
        base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"), device=serving_device())
        expert = load_expert(directory, base)
        merge_adapters(expert.model.base)  # frozen: one matmul per adapted layer
        collate = Collator(base.tokenizer, int(meta.get("max_length", 128)), options=expert.model.options)
        names = expert.label_names

        def answer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            _, probs = predict(expert.model, [{**r, "label": 0} for r in rows], collate, progress=False)
            return [{"task": expert.task, "label": names[int(p.argmax())],
                     "probabilities": {n: float(x) for n, x in zip(names, p.tolist())}} for p in probs]

        self.serve(answer, ServeConfig())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame(self.answers(model_input))


class BundlePyfunc(_BatchedPyfunc):
    """The routed mixture: ``predict(DataFrame[text, text_pair?])`` -> one row per input with the
    chosen task, label, class probabilities, router confidence and expert version (or abstained)."""

    def _load(self, context) -> None:
        from ttlora_moe.moe.bundle import load_bundle, load_moe, serve_config

        from ttlora_moe.experts.base_model import load_base_model

        bundle = load_bundle(Path(context.artifacts["bundle"]))  # verifies every checksum
        config = serve_config(bundle)
        logged = context.artifacts.get("base_model")  # the base model's own files, when logged with the bundle
        pooling = bundle.manifest["base_model"].get("pooling")
        base = load_base_model(logged, pooling, device=serving_device()) if logged else None
        moe = load_moe(bundle, base=base, device=serving_device(), serve=config)
        self.serve(lambda rows: moe.predict(rows, batch_size=config.batch_size), config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame([{
            "task": a["task"], "label": a["label"], "probabilities": a["probabilities"],
            "router_confidence": a["router_confidence"], "abstained": a["abstained"],
            "abstain_reason": a["abstain_reason"], "out_of_scope_score": a["out_of_scope_score"],
            "expert": (a.get("expert") or {}).get("name"), "expert_version": (a.get("expert") or {}).get("version"),
        } for a in self.answers(model_input)], dtype=object)  # object: a missing score stays null, never NaN


class BasePyfunc(_BatchedPyfunc):
    """The frozen base model alone (tokenise, one forward, pool): the serving speed limit of a bundle.

    ``predict`` answers the norm of each input's pooled state; benchmarks/serve_load.py serves it
    beside a bundle to measure what routing and adapting cost.
    """

    def _load(self, context) -> None:
        import json

        import torch

        from ttlora_moe.data.batching import length_batches, tokenize
        from ttlora_moe.experts.base_model import load_base_model, pool

        spec = json.loads(Path(context.artifacts["base"]).read_text())
        base = load_base_model(spec["ref"], spec.get("pooling"), device=serving_device())
        config = ServeConfig.from_dict(spec.get("serve"))
        device = next(base.model.parameters()).device

        def answer(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
            out: list[dict[str, float]] = [{}] * len(rows)
            # length-sorted as the bundle batches: a limit that pads more would flatter the bundle
            for idx in length_batches(rows, config.batch_size):
                batch = tokenize(base.tokenizer, [rows[i] for i in idx], int(spec["max_length"]))
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                with torch.inference_mode():
                    hidden = base.model(input_ids=ids, attention_mask=mask)
                    pooled = pool(hidden.last_hidden_state, mask, base.pooling)
                for i, norm in zip(idx, pooled.norm(dim=-1).tolist()):
                    out[i] = {"norm": float(norm)}
            return out

        self.serve(answer, config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame(self.answers(model_input))


def log_pyfunc(name: str, cls: type, artifacts: dict[str, str]):
    """Log a models-from-code pyfunc in the active run, with this package as its code; return MLflow's ModelInfo."""
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # No input schema, on purpose: MLflow's schema enforcement drops every column the schema does not
        # name before predict runs, so a misspelt field ("txt_pair") would vanish silently; the pyfunc checks
        # each request itself (ttlora_moe/pipeline/requests.py) and answers 400 naming the row and field.
        warnings.filterwarnings("ignore", message=".*(input example|signature).*")
        code = Path(tmp) / f"{name.replace('-', '_')}_model.py"
        code.write_text(_MODEL_CODE.format(cls=cls.__name__))
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        pyfunc_log.addFilter(_no_signature_warning)  # MLflow warns that it "failed to infer" the schema we left out
        try:
            return mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts=artifacts,
                                           code_paths=[str(package)], pip_requirements=pip_requirements())
        finally:
            pyfunc_log.removeFilter(_no_signature_warning)


def _no_signature_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Failed to infer model signature")


def bundle_artifacts(bundle_dir: Path) -> dict[str, str]:
    """What a bundle's pyfunc carries: the bundle, and its base model's files unless ``serve.log_base_model``
    is off or the base is a hub id (then the serving environment resolves the reference)."""
    from ttlora_moe.experts.base_model import local_model_dir
    from ttlora_moe.files import read_json

    manifest = read_json(Path(bundle_dir) / "manifest.json")
    artifacts = {"bundle": str(bundle_dir)}
    if ServeConfig.from_dict(manifest.get("serve")).log_base_model:
        folder = local_model_dir(manifest["base_model"]["ref"])
        if isinstance(folder, Path):
            artifacts["base_model"] = str(folder)
    return artifacts


def find_expert_dir(root: Path) -> Path:
    """The directory holding ``expert.json`` at or under ``root``."""
    if (root / META_FILE).exists():
        return root
    found = sorted(root.rglob(META_FILE))
    if not found:
        raise BadInput(f"no {META_FILE} under {root}", "the registered artifact is not a ttlora-moe expert")
    return found[0].parent
