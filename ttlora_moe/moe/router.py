"""The task router: which expert should answer this input?

A small classifier (linear, as in the paper, or a one-hidden-layer MLP) on standardised base-model
features (:mod:`ttlora_moe.moe.features`), trained with cross-entropy on the task id over a
task-balanced mix of the experts' training splits. The linear router is a convex problem and is
solved as one (``solver: lbfgs``): full-batch L-BFGS to convergence along a short path of L2
penalties, the penalty chosen on the mixed validation split; deterministic, where mini-batch AdamW
stopped early (``solver: adamw``, and always for the MLP) varies with its initialisation.

Differences from the paper's router, on purpose:

- no gating noise and no dropout at inference: routing is a deterministic arg-max;
- targets are positions in the bundle's ordered expert list, never a second list;
- features pool only real tokens, never pads;
- a temperature fitted on validation makes the confidence a calibrated probability, and an
  **out-of-scope detector** (:mod:`ttlora_moe.moe.out_of_scope`, threshold chosen on validation for
  a target false-abstain rate) lets the router answer "no expert fits" instead of forcing a wrong expert.

Saved as ``router.safetensors`` (weights, standardisation, temperature, threshold, detector) and
``router.json`` (config, expert names, feature spec, validation metrics, detector method).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ttlora_moe.config_fields import Section, option
from ttlora_moe.errors import BadInput
from ttlora_moe.files import read_format_json, write_json
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.out_of_scope import (
    DEFAULTS,
    OutOfScopeDetector,
    build_detector,
    calibrate_detector,
    check_options,
)

ROUTER_FORMAT = "ttlora-moe/router@1"
ROUTER_WEIGHTS = "router.safetensors"
ROUTER_META = "router.json"
KINDS = ("linear", "mlp")
SOLVERS = ("lbfgs", "adamw")


@dataclass
class RouterConfig(Section):
    """How the router is built and trained (``router:`` in params.yaml)."""

    section: ClassVar[str] = "router"

    kind: str = option("linear", "'linear' (the paper's) or 'mlp' (one hidden layer, GELU).")
    solver: str = option(
        "lbfgs", "How the linear router is fitted: 'lbfgs' (the task-weighted logistic regression solved full-batch "
                 "for each l2 penalty; deterministic) or 'adamw' (mini-batches, early stopping; the MLP always trains so).")
    l2: tuple[float, ...] = option(
        (1e-2, 3e-3, 1e-3, 3e-4),
        "Solver lbfgs: L2 penalties on the weights, tried from the largest, each fit starting where the previous "
        "ended; the one with the lowest calibrated validation loss is kept, and the path stops at the first that does worse.")
    lbfgs_iterations: int = option(50, "Solver lbfgs: L-BFGS iterations per penalty.")
    hidden: int = option(256, "Hidden units of the MLP router.")
    dropout: float = option(0.2, "Dropout on the MLP's hidden layer while training (off at inference).")
    lr: float = option(3e-3, "AdamW learning rate (solver adamw, or the MLP).")
    weight_decay: float = option(0.1, "AdamW weight decay (solver adamw, or the MLP).")
    batch_size: int = option(512, "Examples per AdamW step.")
    max_epochs: int = option(40, "Upper bound on AdamW's passes over the training mix.")
    patience: int = option(4, "AdamW epochs without a better validation score before stopping.")
    seed: int = option(0, "Seed of the sample, the initialisation, dropout and batch order.")
    train_per_task: int = option(2000, "Training rows per task (seeded random sample); tasks with fewer rows are up-weighted.")
    validation_per_task: int = option(400, "Validation rows per task for early stopping, temperature and threshold.")
    unlabelled_per_task: int = option(
        1000, "Extra training inputs per task from its prepared unlabelled.parquet when that file exists (0: never).")
    false_abstain_rate: float = option(0.0125, "Share of in-scope validation inputs allowed to abstain; sets the threshold.")
    out_of_scope: dict[str, Any] = option(
        dict(DEFAULTS),
        "Out-of-scope detector (see moe/out_of_scope.py): method knn (distance to the training mix), "
        "fused (distance and the router's doubt), relative (fused plus the relative Mahalanobis distance) or "
        "confidence; principal components, neighbours k, bank_per_task, confidence_weight, shrinkage, lexical_weight "
        "(the fragmentation's weight, when router.features.fragmentation), task_covariance and task_covariance_weight "
        "(relative: each task's own covariance, this share of it, as one more surprisal at this weight), state_weight "
        "(relative: the distance on the latest state's text block alone, one more surprisal at this weight).")
    generative_weights: tuple[float, ...] = option(
        (0.0,),
        "Candidate weights of the detector's task Gaussians (method relative) added to the router's logits; the one "
        "with the lowest task-weighted validation loss after temperature scaling is kept (ties: the smaller); "
        "[0] (the default) = the trained router alone: the Gaussians make it surer of out-of-scope inputs too.")
    features: dict[str, Any] = option({}, "Feature spec (see features.FeatureSpec); {} = defaults.")
    batch_size_features: int = option(64, "Inputs per base-model forward when computing features.")
    threads: int = option(
        1, "Intra-op threads while training the router (0: torch's setting, every core by default). AdamW's small "
           "batches gain nothing from a busy thread pool; the full-batch L-BFGS fit does (1.7x with 2 cores on the pool).")
    route_after_layer: int | None = option(
        None, "Single-pass routing: the router reads hidden states 0..k (embeddings + first k blocks) and experts "
              "must adapt only layers >= k (tt.layers_from), so one forward routes and adapts; null = two passes.")
    second_look: dict[str, Any] = option(
        {"rate": 0.0, "source": "plain", "combine": "band",
         "out_of_scope": {"components": 768, "task_covariance": 0.1, "task_covariance_weight": 0.5, "state_weight": 0.0,
                          "surface_weight": 0.0, "unknown_weight": 0.0}},
        "Single-pass only (see moe/second_look.py): inputs whose early out-of-scope score is in the top `rate` of the "
        "in-scope validation scores get a second router and detector on every state (out_of_scope: its options over "
        "router.out_of_scope), which decide whether they abstain; rate 0 turns it off. source: plain (another forward "
        "of the plain base) or adapted (the single pass's own states, through the expert each input rides with); "
        "combine: a looked input's score is band + second (band) or early + second (sum).")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"unknown router kind {self.kind!r}", f"set router.kind to one of {', '.join(KINDS)}")
        if self.solver not in SOLVERS:
            raise BadInput(f"unknown router solver {self.solver!r}", f"set router.solver to one of {', '.join(SOLVERS)}")
        penalties = (self.l2,) if isinstance(self.l2, (int, float)) else tuple(self.l2)
        if not penalties or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in penalties):
            raise BadInput(f"router.l2 must be a list of numbers > 0, got {self.l2!r}", "fix params.yaml (e.g. [0.01, 0.003, 0.001])")
        self.l2 = tuple(sorted({float(v) for v in penalties}, reverse=True))
        if not 0 <= self.false_abstain_rate < 1:
            raise BadInput(f"router.false_abstain_rate must be in [0, 1), got {self.false_abstain_rate}", "fix params.yaml")
        for key in ("hidden", "batch_size", "max_epochs", "patience", "train_per_task", "validation_per_task",
                    "lbfgs_iterations"):
            if int(getattr(self, key)) < 1:
                raise BadInput(f"router.{key} must be a positive integer", "fix params.yaml")
        for key in ("unlabelled_per_task", "threads"):
            if int(getattr(self, key)) < 0:
                raise BadInput(f"router.{key} must be >= 0", "fix params.yaml")
        check_options(self.out_of_scope)
        from ttlora_moe.moe.second_look import check_second_look  # it builds on this module

        check_second_look(self.second_look)
        weights = tuple(self.generative_weights)
        if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise BadInput(f"router.generative_weights must be a list of numbers >= 0, got {self.generative_weights!r}",
                           "fix params.yaml (e.g. [0] for the trained router alone)")
        self.generative_weights = tuple(float(w) for w in weights)
        k = self.route_after_layer
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
            raise BadInput(f"router.route_after_layer must be a block index >= 0 or null, got {self.route_after_layer!r}",
                           "fix params.yaml")


class Router(nn.Module):
    """``probs = softmax((net((x - mean) / scale) + generative_weight * log P_gauss(task | x)) / temperature)``;
    abstain when the out-of-scope ``detector`` scores an input above its threshold (routers without one: when
    the confidence is below ``threshold``). The Gaussian term is the ``relative`` detector's (0: none)."""

    def __init__(self, in_dim: int, num_experts: int, kind: str = "mlp", hidden: int = 256, dropout: float = 0.0,
                 detector: OutOfScopeDetector | None = None):
        super().__init__()
        if kind not in KINDS:
            raise BadInput(f"unknown router kind {kind!r}", f"use one of {', '.join(KINDS)}")
        self.kind, self.in_dim, self.num_experts, self.hidden = kind, in_dim, num_experts, hidden
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, num_experts))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_experts))
        self.detector = detector
        self.generative_weight = 0.0  # set once after training (or from router.json), never per call

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``[B, E]``."""
        logits = self.net((features.float() - self.mean) / self.scale)
        if self.generative_weight and self.detector is not None:
            logits = logits + self.generative_weight * self.detector.task_log_likelihood(features)
        return logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``[B, E]``."""
        return torch.softmax(self.logits(features) / self.temperature, -1)

    @torch.no_grad()
    def route(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(expert index [B], confidence [B], probabilities [B, E], out-of-scope score [B])``; index -1 abstains.

        Routing is deterministic: an MLP router in training mode (dropout on) is refused rather than
        switched to eval here, because a served router is shared by concurrent calls.
        """
        if self.training:
            raise RuntimeError("route() needs an eval-mode router: call router.eval() once after training")
        probs = self(features)
        confidence, index = probs.max(-1)
        if self.detector is not None:
            score = self.detector.score(features, confidence, index)
            abstain = score > self.detector.threshold
        else:
            score = -torch.log(confidence.clamp_min(1e-12))
            abstain = confidence < self.threshold
        return torch.where(abstain, torch.full_like(index, -1), index), confidence, probs, score


# --- training -------------------------------------------------------------------------------------

def task_weights(labels: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Per-example weights giving every task the same total weight (mean weight 1)."""
    counts = torch.bincount(labels, minlength=num_experts).float()
    per_class = len(labels) / (num_experts * counts.clamp_min(1))
    return per_class[labels]


def balanced_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_experts: int) -> float:
    """Mean over tasks of the share of a task's inputs routed to its expert."""
    scores = [float((preds[labels == e] == e).float().mean()) for e in range(num_experts) if (labels == e).any()]
    return sum(scores) / max(1, len(scores))


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """Cross-entropy of ``logits`` averaged under per-example ``weights``."""
    return float((nn.functional.cross_entropy(logits, labels, reduction="none") * weights).sum() / weights.sum())


def calibrated_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """The (task-weighted) NLL of ``logits`` once their temperature is fitted: how well they rank, whatever their scale."""
    return weighted_nll(logits / fit_temperature(logits, labels, weights), labels, weights)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """The temperature minimising (task-weighted) validation NLL, by a fine log-spaced grid search."""
    weights = torch.ones(len(labels)) if weights is None else weights
    best_t, best_nll = 1.0, math.inf
    for t in torch.logspace(math.log10(0.05), math.log10(20.0), 241).tolist():
        nll = weighted_nll(logits / t, labels, weights)
        if nll < best_nll:
            best_t, best_nll = t, nll
    return best_t


def abstain_threshold(confidence: torch.Tensor, rate: float, weights: torch.Tensor | None = None) -> float:
    """The confidence below which a (task-weighted) share ``rate`` of validation inputs falls.

    Inputs strictly below the threshold abstain, so about ``rate`` of in-scope inputs would be
    refused: the documented false-abstain rate. ``rate = 0`` never abstains.
    """
    if rate <= 0 or len(confidence) == 0:
        return 0.0
    weights = torch.ones(len(confidence)) if weights is None else weights
    order = torch.argsort(confidence)
    cum = torch.cumsum(weights[order], 0) / weights.sum()
    k = int(torch.searchsorted(cum, torch.tensor(rate), right=False))  # first index with cum >= rate
    return float(confidence[order[min(k, len(order) - 1)]])


@dataclass
class RouterReport:
    """What router training measured on the mixed validation split."""

    epochs: int  # passes over the training mix: AdamW epochs, or L-BFGS loss evaluations
    best_epoch: int  # the pass whose weights were kept
    train_rows: int
    validation_rows: int
    validation_accuracy: float
    validation_balanced_accuracy: float
    validation_per_task: dict[str, float]
    validation_abstain_rate: float
    temperature: float
    threshold: float
    generative_weight: float = 0.0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    solver: str = "adamw"
    l2: float | None = None  # solver lbfgs: the kept penalty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _threads(n: int):
    """Torch's intra-op threads at ``n`` inside the block (0: unchanged)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def feature_layout(config: RouterConfig, width: int, block: int | None) -> tuple[bool, int | None, bool, bool]:
    """What the detector needs to know of features ``width`` wide, pooled ``block`` values at a time: whether they
    end in the fragmentation, which block is the latest state's text (None: one block, nothing to single out), and
    whether they carry the surface columns and the unknown-word columns."""
    spec = FeatureSpec.from_dict(config.features)
    return (spec.fragmentation, spec.latest_text_block(width // block) if block else None, spec.surface,
            spec.unknown_words)


def train_router(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    expert_names: list[str],
    config: RouterConfig,
    progress: bool = True,
    block: int | None = None,
) -> tuple[Router, RouterReport]:
    """Train a router on features; the best epoch (validation balanced accuracy, then loss) is kept.

    Labels are positions in ``expert_names``. Every task weighs the same in the loss, the early
    stopping score, the temperature fit and the abstain threshold, however many rows it has.
    ``block`` is the width of one pooled vector in the features (the base model's hidden size), for
    the out-of-scope detector.
    """
    with _threads(config.threads):
        return _train_router(train_x, train_y, val_x, val_y, expert_names, config, progress, block)


def _train_router(train_x, train_y, val_x, val_y, expert_names, config, progress, block):
    import time

    start = time.perf_counter()
    num_experts = len(expert_names)
    if num_experts < 1 or len(train_y) == 0 or len(val_y) == 0:
        raise BadInput("the router needs at least one expert with training and validation rows",
                       "give experts whose tasks have prepared data")
    torch.manual_seed(config.seed)
    router = Router(train_x.shape[1], num_experts, config.kind, config.hidden, config.dropout)
    with torch.no_grad():
        router.mean.copy_(train_x.float().mean(0))
        std = train_x.float().std(0)
        router.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        # standardise once: training then runs the bare network on ready rows
        train_z = (train_x.float() - router.mean) / router.scale
        val_z = (val_x.float() - router.mean) / router.scale
    train = (train_z, train_y, task_weights(train_y, num_experts))
    val = (val_z, val_y, task_weights(val_y, num_experts))
    w_val = val[2]
    solver = "lbfgs" if config.kind == "linear" and config.solver == "lbfgs" else "adamw"
    fit = _fit_lbfgs if solver == "lbfgs" else _fit_adamw
    passes, best_pass, history, l2 = fit(router, train, val, num_experts, config, progress)
    router.eval()
    with torch.no_grad():
        router.detector = build_detector(train_x, train_y, val_x, w_val, num_experts, block, config.out_of_scope,
                                         config.seed, *feature_layout(config, train_x.shape[1], block))
        router.generative_weight = _choose_generative_weight(router, val_z, val_x, val_y, w_val,
                                                             config.generative_weights)
        val_logits = router.logits(val_x)
        temperature = fit_temperature(val_logits, val_y, w_val)
        router.temperature.fill_(temperature)
        confidence, preds = torch.softmax(val_logits / temperature, -1).max(-1)
        threshold = abstain_threshold(confidence, config.false_abstain_rate, w_val)
        router.threshold.fill_(threshold)
        calibrate_detector(router.detector, val_x, confidence, preds, w_val, config.false_abstain_rate)
        abstained = router.route(val_x)[0] < 0
    per_task = {name: float((preds[val_y == e] == e).float().mean()) for e, name in enumerate(expert_names)
                if (val_y == e).any()}
    report = RouterReport(
        epochs=passes, best_epoch=best_pass, solver=solver, l2=l2,
        train_rows=len(train_y), validation_rows=len(val_y),
        validation_accuracy=float((preds == val_y).float().mean()),
        validation_balanced_accuracy=balanced_accuracy(preds, val_y, num_experts),
        validation_per_task=per_task,
        validation_abstain_rate=float((abstained.float() * w_val).sum() / w_val.sum()),
        temperature=temperature, threshold=float(router.detector.threshold), generative_weight=router.generative_weight,
        seconds=round(time.perf_counter() - start, 2),
        history=history,
    )
    return router, report


Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # standardised features, labels, task weights


def _fit_adamw(router: Router, train: Split, val: Split, num_experts: int, config: RouterConfig,
               progress: bool) -> tuple[int, int, list[dict[str, float]], None]:
    """Mini-batch AdamW; the epoch with the best validation (balanced accuracy, then loss) is kept, and training
    stops after ``patience`` epochs without one. ``(epochs run, the kept epoch, history, None)``."""
    (train_z, train_y, w_train), (val_z, val_y, w_val) = train, val
    optimizer = torch.optim.AdamW(router.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    best = (-1.0, -math.inf)
    best_state, best_epoch, bad, history = copy.deepcopy(router.state_dict()), 0, 0, []
    epoch = 0
    bar = tqdm(range(config.max_epochs), desc="router", leave=False, disable=not progress, file=sys.stderr)
    for epoch in bar:
        router.train()
        order = torch.randperm(len(train_y), generator=generator)
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = (nn.functional.cross_entropy(router.net(train_z[idx]), train_y[idx], reduction="none")
                    * w_train[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        router.eval()
        with torch.no_grad():
            val_logits = router.net(val_z)
        val_loss = weighted_nll(val_logits, val_y, w_val)
        val_bacc = balanced_accuracy(val_logits.argmax(-1), val_y, num_experts)
        history.append({"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": val_loss,
                        "val_balanced_accuracy": val_bacc})
        bar.set_postfix(loss=f"{val_loss:.3f}", acc=f"{val_bacc:.4f}")
        if (val_bacc, -val_loss) > best:
            best, best_epoch, bad = (val_bacc, -val_loss), epoch + 1, 0
            best_state = copy.deepcopy(router.state_dict())
        else:
            bad += 1
            if bad >= config.patience:
                break
    bar.close()
    router.load_state_dict(best_state)
    return epoch + 1, best_epoch, history, None


def _fit_lbfgs(router: Router, train: Split, val: Split, num_experts: int, config: RouterConfig,
               progress: bool) -> tuple[int, int, list[dict[str, float]], float]:
    """The linear router as an L2-penalised, task-weighted logistic regression, solved full-batch by L-BFGS from
    zero weights for each penalty of ``config.l2`` (largest first, each fit continuing from the previous one).
    The weights with the lowest temperature-calibrated validation loss are kept; the path stops at the first
    penalty that does worse. ``(loss evaluations = passes over the training mix, the pass of the kept fit,
    history, the kept penalty)``."""
    (train_z, train_y, w_train), (val_z, val_y, w_val) = train, val
    linear = router.net[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    passes, best_pass, history = 0, 0, []
    best_loss, best_state, best_l2 = math.inf, copy.deepcopy(router.state_dict()), config.l2[0]
    bar = tqdm(config.l2, desc="router", leave=False, disable=not progress, file=sys.stderr)
    for l2 in bar:
        optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=config.lbfgs_iterations, history_size=20,
                                      line_search_fn="strong_wolfe")

        def objective(l2: float = l2) -> torch.Tensor:
            nonlocal passes
            passes += 1
            optimizer.zero_grad(set_to_none=True)
            loss = ((nn.functional.cross_entropy(linear(train_z), train_y, reduction="none") * w_train).mean()
                    + l2 * linear.weight.square().sum())
            loss.backward()
            return loss

        optimizer.step(objective)
        with torch.no_grad():
            val_logits = linear(val_z)
        val_loss = calibrated_nll(val_logits, val_y, w_val)
        val_bacc = balanced_accuracy(val_logits.argmax(-1), val_y, num_experts)
        history.append({"l2": l2, "passes": passes, "val_loss": val_loss, "val_balanced_accuracy": val_bacc})
        bar.set_postfix(l2=f"{l2:g}", loss=f"{val_loss:.4f}", acc=f"{val_bacc:.4f}")
        if not math.isfinite(val_loss) or val_loss >= best_loss:
            break
        best_loss, best_state, best_l2, best_pass = val_loss, copy.deepcopy(router.state_dict()), l2, passes
    bar.close()
    router.load_state_dict(best_state)
    return passes, best_pass, history, best_l2


def _choose_generative_weight(router: Router, val_z: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                              weights: torch.Tensor, candidates: tuple[float, ...]) -> float:
    """The candidate weight of the detector's task Gaussians whose logits have the lowest (task-weighted) validation
    loss once their temperature is fitted (ties: the smaller); 0 when the detector has no Gaussians (a method other
    than ``relative``). The loss, not the accuracy: at 98% validation accuracy the arg-max barely moves."""
    if router.detector is None or router.detector.method != "relative":
        return 0.0
    trained, generative = router.net(val_z), router.detector.task_log_likelihood(val_x)
    best, best_loss = 0.0, math.inf
    for weight in sorted(set(candidates)):
        loss = calibrated_nll(trained + weight * generative, val_y, weights)
        if loss < best_loss - 1e-9:
            best, best_loss = weight, loss
    return best


# --- artifact -------------------------------------------------------------------------------------

def save_router(directory: Path, router: Router, meta: dict[str, Any]) -> None:
    """Write ``router.safetensors`` and ``router.json`` into ``directory`` (an atomic temp dir)."""
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    save_file(tensors, str(directory / ROUTER_WEIGHTS))
    detector = router.detector
    write_json(directory / ROUTER_META, {
        "format": ROUTER_FORMAT, "kind": router.kind, "in_dim": router.in_dim, "num_experts": router.num_experts,
        "hidden": router.hidden, "temperature": float(router.temperature), "threshold": float(router.threshold),
        "generative_weight": router.generative_weight,
        "out_of_scope": None if detector is None else {**detector.arguments(), "threshold": float(detector.threshold)},
        **meta,
    })


def load_router(directory: Path) -> tuple[Router, dict[str, Any]]:
    """Read a router written by :func:`save_router`; a malformed file is a one-line error."""
    from ttlora_moe.files import load_tensors

    directory = Path(directory)
    meta_path = directory / ROUTER_META
    meta = read_format_json(meta_path, ROUTER_FORMAT, "rebuild the bundle")
    oos = meta.get("out_of_scope")  # routers written before 0.2 have none: they abstain on confidence
    detector = None if not oos else OutOfScopeDetector.rebuilt(meta["in_dim"], meta["num_experts"], oos)
    router = Router(int(meta["in_dim"]), int(meta["num_experts"]), meta["kind"], int(meta.get("hidden", 256)), 0.0, detector)
    tensors = load_tensors(directory / ROUTER_WEIGHTS)
    try:
        router.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BadInput(f"{directory / ROUTER_WEIGHTS} does not match {meta_path}: {first}", "rebuild the bundle") from None
    router.generative_weight = float(meta.get("generative_weight", 0.0))  # routers saved before it have none
    router.eval()
    return router, meta
