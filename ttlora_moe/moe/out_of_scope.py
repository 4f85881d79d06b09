"""Out-of-scope detection on the router's features: is this input far from every task the bundle knows?

A router's softmax is confident far from its training data (it only learned which of *its* tasks an
input is most like), so confidence alone lets code, URLs or an unseen task through; and distance
alone misses an unseen *sibling* of a served task (MRPC beside QQP, CSQA beside Social IQa), which
looks in scope but leaves the router unsure. The ``fused`` detector uses both:

- *distance*: every pooled block (one layer's mean state of ``text``, of ``text_pair``, ...;
  ``block`` values each) is L2-normalised, so no layer dominates by its scale, and the whole vector
  is normalised; that vector is projected onto the top ``components`` principal directions of the
  training mix; the mean cosine distance to the ``k`` nearest training inputs in that subspace (a
  bank of at most ``bank_per_task`` inputs per task) plus the norm of what the projection leaves
  out (text unlike anything in training, such as code, URLs or another language, lives there),
  each on the scale of in-scope validation inputs (median and interquartile range);
- *doubt*: ``-log(router confidence)`` on the scale of the validation inputs routed to the *same*
  expert (tasks whose inputs the router always finds easy get a strict scale, multiple-choice
  siblings a lenient one);
- each of the two becomes a surprisal, ``-log P(in-scope validation input scores at least this)``
  (the weighted empirical tail up to its 90th percentile, an exponential tail beyond, so far-out
  inputs keep their order), and the score is their sum: a Fisher-style combination in which either
  signal alone can push an input out.

``method: relative`` adds a third surprisal to ``fused``'s two: the *relative Mahalanobis distance*
(Ren et al., 2021, "A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection") in the
same principal subspace: the smallest, over the served tasks, of the squared Mahalanobis distance to
the task's mean under the covariance shared by all tasks (within-task scatter), minus the distance
to the mean of the whole training mix under its own covariance. Subtracting the background term
removes what every input of this kind of text shares, so what is left is how unlike *each task*
the input is; both covariances get ``shrinkage`` times their mean variance on the diagonal.

With ``task_covariance > 0`` (``relative`` only), a fourth surprisal joins at ``task_covariance_weight``:
the same relative score with each task's *own* shape. Each task's Gaussian gets its own covariance,
blended ``task_covariance`` to ``1 - task_covariance`` with the shared one (regularised discriminant
analysis), and the score is the smallest negative log density (Mahalanobis term plus log determinant)
over the tasks, minus the mix's. The shared covariance only sees where a task's centre is. An unseen
sibling, such as MRPC's news pairs beside RTE's or MNLI's, can sit near a served task's centre but
spread in directions that task never does (README "Abstention").

With ``state_weight > 0`` (``relative`` only, when the features have several pooled blocks), one more
surprisal joins at that weight: the same relative distance on the *latest* state's ``text`` block alone
(L2-normalised, its full covariance, no principal subspace). In a single pass that is state k, the last the
router reads: the principal directions of every block together are dominated by what all the states share,
and the latest state alone tells an unseen single-sentence task (CoLA beside SST-2) from the served one
(README "Abstention": leave one task out, AUROC 0.936 -> 0.941 and false abstention 1.8% -> 1.5% at a 1.5%
target, where 99.2% of the junk abstains).

With ``surface_weight > 0`` (``relative`` only, when the features carry the surface statistics of
``router.features.surface``: length, case, punctuation, digits and a pair's word overlap of the raw text,
:mod:`ttlora_moe.data.surface`), one more surprisal joins at that weight: the same relative distance on those
columns, each standardised on the training mix. Tasks differ in form as much as in content, and an uncased base
never sees case: the form alone tells SST-2's lower-cased sentences from CoLA's and MRPC's overlapping news pairs
from QQP's questions, where the pooled states read them as alike (README "Abstention").

With ``unknown_weight > 0`` (``relative`` and ``fused``, when the features carry ``router.features.unknown_words``:
the share of a text's words its tokenizer does not hold whole, :mod:`ttlora_moe.data.unknown_words`), the
surprisal of the larger of the two shares joins at that weight, counted only beyond its in-scope quantile
``unknown_level``. Invented words, Latin filler and other languages in the Latin alphabet read as a lower-cased
sentence to the states and the surface; their words are what no served task writes. Below that quantile the share
says little about an unseen *task* (its words are as known as the served ones), so it adds nothing there and
leaves the ranking of held-out tasks alone (README "Abstention").

When the router's features end in the fragmentation (``router.features.fragmentation``: tokens per
whitespace word of ``text`` and ``text_pair``), ``relative`` and ``fused`` add ``lexical_weight`` times
one more surprisal, of the larger of the two: code, URLs, identifiers, noise and other languages
break into many pieces per word, which pooled states dilute (README "Abstention": on the pool, junk
abstains 97.1% instead of 92.6% at weight 0.5, for 0.002 of mean AUROC).

``method: relative`` is the default: leave-one-task-out on the 15-task pool and on the six paper
tasks it separates unseen tasks better than ``fused`` and ``knn`` and lets less junk through
(README "Abstention"). ``method: knn`` scores by the distance alone (optionally plus
``confidence_weight`` times the doubt's global z-score), ``method: confidence`` by the confidence
alone (what routers before the detector did). The threshold is the score above which
``false_abstain_rate`` of the (task-weighted) in-scope validation inputs lie.
benchmarks/out_of_scope.py measures every method leave-one-task-out; the README has its table.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import nn

from ttlora_moe.data.surface import SURFACE_COLUMNS
from ttlora_moe.data.unknown_words import UNKNOWN_COLUMNS
from ttlora_moe.errors import BadInput
from ttlora_moe.moe.features import FRAGMENTATION_COLUMNS

METHODS = ("relative", "fused", "knn", "confidence")
SURPRISALS = {"fused": 2, "relative": 3}  # methods that sum surprisals: how many (distance, doubt[, relative])
OPTIONS = ("method", "components", "k", "bank_per_task", "confidence_weight", "shrinkage", "lexical_weight",
           "task_covariance", "task_covariance_weight", "state_weight", "surface_weight", "unknown_weight", "unknown_level")
DEFAULTS: dict[str, Any] = {"method": "relative", "components": 256, "k": 10, "bank_per_task": 1000, "confidence_weight": 0.0,
                            "shrinkage": 0.1, "lexical_weight": 0.5, "task_covariance": 0.0, "task_covariance_weight": 0.5,
                            "state_weight": 1.0, "surface_weight": 1.0, "unknown_weight": 1.0, "unknown_level": 0.99}


def check_options(options: dict[str, Any]) -> None:
    """BadInput unless ``options`` (params.yaml ``router.out_of_scope``) names known keys with sane values."""
    unknown = sorted(set(options) - set(OPTIONS))
    merged = {**DEFAULTS, **options}
    ints_ok = all(isinstance(merged[k], int) and not isinstance(merged[k], bool) and merged[k] >= 1
                  for k in ("components", "k", "bank_per_task"))
    floats_ok = all(isinstance(merged[k], (int, float)) and not isinstance(merged[k], bool) and merged[k] >= 0
                    for k in ("confidence_weight", "shrinkage", "lexical_weight", "task_covariance",
                              "task_covariance_weight", "state_weight", "surface_weight", "unknown_weight", "unknown_level"))
    floats_ok = floats_ok and merged["shrinkage"] > 0 and merged["task_covariance"] < 1 and merged["unknown_level"] < 1
    if unknown or merged["method"] not in METHODS or not ints_ok or not floats_ok:
        raise BadInput(f"router.out_of_scope is {options}",
                       f"use method ({', '.join(METHODS)}), components, k and bank_per_task (integers >= 1), "
                       "confidence_weight, lexical_weight, task_covariance_weight, state_weight, surface_weight and "
                       "unknown_weight (>= 0), task_covariance and unknown_level (0 to below 1) and shrinkage (> 0) only")


TAIL_LEVEL = 0.9  # above this quantile of the validation scores a surprisal extrapolates exponentially
GRID = 64  # quantile points kept per surprisal below TAIL_LEVEL
MIN_EXPERT_ROWS = 10  # validation inputs an expert needs for a scale of its own
# the smallest spread of an expert's doubt (nats): an expert whose inputs are all routed at 0.999 makes
# 0.95 surprising (about 50 spreads), as it should be; the tail calibration keeps the false-abstain rate
DOUBT_FLOOR = 1e-3
SHAPED_ROWS = 256  # inputs per step of the task-shaped distance (15 tasks x 768 directions: 12 MB per step)


def weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantiles of ``values`` at ``levels`` under ``weights`` (linear between the weighted order statistics)."""
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order].double(), 0)
    cum = (cum - 0.5 * weights[order].double()) / cum[-1]
    return _interp(levels.double(), cum, values[order].double()).float()


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``numpy.interp``: piecewise-linear through ``(xp, fp)`` (``xp`` ascending), constant outside; batched
    over leading dimensions when ``x``, ``xp`` and ``fp`` have them (each row of ``x`` on its own curve)."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.shape[-1] - 1)
    x0, x1, f0, f1 = xp.gather(-1, i - 1), xp.gather(-1, i), fp.gather(-1, i - 1), fp.gather(-1, i)
    t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + t * (f1 - f0)


def fit_surprisal(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[GRID + 1]``: the quantiles of ``values`` at levels ``0 .. TAIL_LEVEL`` and, last, the mean excess
    over the top one (the scale of the exponential tail); :func:`surprisal` reads it."""
    levels = torch.linspace(0, TAIL_LEVEL, GRID, device=values.device)
    grid = weighted_quantiles(values, weights, levels)
    above = values > grid[-1]
    excess = ((values[above] - grid[-1]) * weights[above]).sum() / weights[above].sum() if above.any() else grid[-1] * 0
    return torch.cat([grid, excess.clamp_min(1e-2).reshape(1)])


def surprisal(x: torch.Tensor, fitted: torch.Tensor) -> torch.Tensor:
    """``-log P(validation score >= x)`` from :func:`fit_surprisal`'s summary: the empirical tail up to its
    top quantile, then ``-log(1 - TAIL_LEVEL) + excess / scale`` (exponential, so it never saturates)."""
    return surprisals(x.unsqueeze(0), fitted.unsqueeze(0))[0]


def surprisals(x: torch.Tensor, fitted: torch.Tensor) -> torch.Tensor:
    """:func:`surprisal` of each row of ``x`` ``[T, B]`` under its own summary, row of ``fitted`` ``[T, GRID + 1]``:
    the same values, in one set of ops for every term of a score (a served batch of one input pays per op)."""
    grid, scale = fitted[:, :-1].double(), fitted[:, -1:].double()
    top, wide = grid[:, -1:], x.double()
    levels = _levels(grid.shape[1], fitted.device).expand_as(grid)
    below = -torch.log1p(-_interp(wide, grid, levels))
    beyond = -math.log(1 - TAIL_LEVEL) + (wide - top) / scale
    return torch.where(x > fitted[:, -2:-1], beyond, below).float()


@functools.lru_cache(maxsize=8)
def _levels(count: int, device: torch.device) -> torch.Tensor:
    """The quantile levels of a surprisal's grid (made once per device: read-only, shared by every call)."""
    return torch.linspace(0, TAIL_LEVEL, count, dtype=torch.float64, device=device)


def normalise_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each ``block``-wide slice of ``x`` L2-normalised (values past the last whole block, e.g. token
    counts, dropped), then the whole row."""
    whole = (x.shape[1] // block) * block
    blocks = x[:, :whole].float().reshape(len(x), -1, block)
    return nn.functional.normalize(nn.functional.normalize(blocks, dim=-1).reshape(len(x), -1), dim=1)


class OutOfScopeDetector(nn.Module):
    """``score(features, confidence, expert)``: higher is further out of scope; ``score > threshold`` abstains."""

    def __init__(self, dim: int, block: int, components: int, bank_rows: int, k: int = 10,
                 method: str = "knn", confidence_weight: float = 0.0, num_experts: int = 0,
                 lexical_weight: float = 0.0, task_covariance_weight: float = 0.0, state_weight: float = 0.0,
                 state_block: int = 0, surface_weight: float = 0.0, surface_offset: int = 0,
                 unknown_weight: float = 0.0, unknown_level: float = 0.0, unknown_offset: int = 0) -> None:
        """``lexical_weight > 0`` (methods ``relative`` and ``fused``): the features end in the fragmentation
        columns, and their surprisal joins the sum at this weight. ``task_covariance_weight > 0`` (method
        ``relative``): the surprisal of the task-shaped relative distance joins it at this weight.
        ``state_weight > 0`` (``relative``): so does the relative distance on pooled block ``state_block`` alone
        (the latest state's ``text``, :meth:`FeatureSpec.latest_text_block`). ``surface_weight > 0`` (``relative``):
        the features carry the surface columns, ``surface_offset`` columns before their end, and the relative
        distance on them joins at this weight. ``unknown_weight > 0`` (``relative``, ``fused``): the features carry the
        unknown-word columns, ``unknown_offset`` columns before their end, and the surprisal of their larger one, less
        that of the in-scope quantile ``unknown_level`` (none below it), joins at this weight."""
        super().__init__()
        if method not in METHODS:
            raise BadInput(f"unknown out-of-scope method {method!r}", f"use one of {', '.join(METHODS)}")
        self.method, self.block, self.k, self.confidence_weight = method, int(block), int(k), float(confidence_weight)
        self.lexical_weight = float(lexical_weight) if method in SURPRISALS else 0.0
        self.task_covariance_weight = float(task_covariance_weight) if method == "relative" else 0.0
        self.state_weight = float(state_weight) if method == "relative" else 0.0
        self.state_block = int(state_block)
        self.surface_weight = float(surface_weight) if method == "relative" else 0.0
        self.surface_offset = int(surface_offset)
        self.unknown_weight = float(unknown_weight) if method in SURPRISALS else 0.0
        self.unknown_level, self.unknown_offset = float(unknown_level), int(unknown_offset)
        self.unknown_floor = -math.log1p(-self.unknown_level)  # the surprisal of that quantile: below it, none
        width = 0 if method == "confidence" else (dim // block) * block
        q = 0 if method == "confidence" else int(components)
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("components", torch.zeros(q, width))
        self.register_buffer("bank", torch.zeros(0 if method == "confidence" else int(bank_rows), q))
        self.register_buffer("scales", torch.tensor([[0.0, 1.0]] * 3))  # (median, spread) of distance, residual, surprise
        self.register_buffer("threshold", torch.tensor(math.inf))
        if method in SURPRISALS:  # only then, so that routers saved before them load unchanged
            self.register_buffer("expert_scales", torch.tensor([[0.0, 1.0]] * num_experts))  # doubt, per routed expert
            # of distance, of doubt[, of the relative Mahalanobis distance][, of the task-shaped one][, of the
            # latest state's][, of the surface][, of the unknown words][, of the fragmentation] (fit_surprisal)
            rows = (SURPRISALS[method] + bool(self.task_covariance_weight) + bool(self.state_weight)
                    + bool(self.surface_weight) + bool(self.unknown_weight) + bool(self.lexical_weight))
            self.state_row = SURPRISALS[method] + bool(self.task_covariance_weight)
            self.surface_row = self.state_row + bool(self.state_weight)
            self.unknown_row = self.surface_row + bool(self.surface_weight)
            self.register_buffer("surprisals", torch.zeros(rows, GRID + 1))
        if method == "relative":  # in the principal subspace, whitened: x -> x @ whiten (whiten @ whiten.T = inverse covariance)
            self.register_buffer("task_means", torch.zeros(num_experts, q))  # each task's mean, whitened
            self.register_buffer("whiten", torch.zeros(q, q))  # of the covariance shared by the tasks
            self.register_buffer("mix_mean", torch.zeros(q))  # the training mix's mean, whitened by whiten_mix
            self.register_buffer("whiten_mix", torch.zeros(q, q))  # of the training mix's own covariance
        if self.task_covariance_weight:  # each task's Gaussian with (partly) its own covariance; not whitened
            self.register_buffer("shaped_means", torch.zeros(num_experts, q))
            self.register_buffer("shaped_whiten", torch.zeros(num_experts, q, q))
            self.register_buffer("shaped_log_det", torch.zeros(num_experts + 1))  # log det of each covariance, the mix's last
            self.register_buffer("shaped_mix_mean", torch.zeros(q))  # the mix as sampled (every row alike), whitened
            self.register_buffer("shaped_whiten_mix", torch.zeros(q, q))
        if self.state_weight:  # the latest state's text block alone, whitened as task_means / mix_mean above
            self.register_buffer("state_means", torch.zeros(num_experts, block))
            self.register_buffer("state_whiten", torch.zeros(block, block))
            self.register_buffer("state_mix_mean", torch.zeros(block))
            self.register_buffer("state_whiten_mix", torch.zeros(block, block))
        if self.surface_weight:  # the surface columns, standardised on the training mix, then as above
            width = len(SURFACE_COLUMNS)
            self.register_buffer("surface_center", torch.zeros(width))
            self.register_buffer("surface_scale", torch.ones(width))
            self.register_buffer("surface_means", torch.zeros(num_experts, width))
            self.register_buffer("surface_whiten", torch.zeros(width, width))
            self.register_buffer("surface_mix_mean", torch.zeros(width))
            self.register_buffer("surface_whiten_mix", torch.zeros(width, width))

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments besides ``dim`` and ``num_experts``: what router.json keeps to rebuild it."""
        return {"method": self.method, "block": self.block, "components": int(self.components.shape[0]),
                "bank_rows": int(self.bank.shape[0]), "k": self.k, "confidence_weight": self.confidence_weight,
                "lexical_weight": self.lexical_weight, "task_covariance_weight": self.task_covariance_weight,
                "state_weight": self.state_weight, "state_block": self.state_block,
                "surface_weight": self.surface_weight, "surface_offset": self.surface_offset,
                "unknown_weight": self.unknown_weight, "unknown_level": self.unknown_level,
                "unknown_offset": self.unknown_offset}

    @classmethod
    def rebuilt(cls, dim: int, num_experts: int, saved: dict[str, Any]) -> OutOfScopeDetector:
        """An empty detector of the shape :meth:`arguments` saved (its buffers load from the router's tensors); a term
        saved before it existed is off. ``saved`` may hold more keys (the threshold)."""
        required = ("block", "components", "bank_rows", "k", "method", "confidence_weight")
        optional = set(inspect.signature(cls.__init__).parameters) - {"self", "dim", "num_experts", *required}
        return cls(int(dim), num_experts=int(num_experts), **{k: saved[k] for k in required},
                   **{k: saved[k] for k in optional if k in saved})

    def _project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block-normalised centred features, their coordinates on the principal directions)."""
        centered = normalise_blocks(features, self.block) - self.center
        return centered, centered @ self.components.T

    def parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (kNN cosine distance, residual norm), ``[B]`` each."""
        return self._parts(*self._project(features))

    def _parts(self, centered: torch.Tensor, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = (centered - projected @ self.components).norm(dim=1)
        similarity = nn.functional.normalize(projected, dim=1) @ self.bank.T
        distance = 1 - similarity.topk(min(self.k, len(self.bank)), dim=1).values.mean(1)
        return distance, residual

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: kNN distance plus residual, each on its validation scale."""
        return self._distance(*self._project(features))

    def _distance(self, centered: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        distance, residual = self._parts(centered, projected)
        (dc, ds), (rc, rs) = self.scales[:2].tolist()
        return (distance - dc) / ds + (residual - rc) / rs

    def _to_tasks(self, projected: torch.Tensor) -> torch.Tensor:
        """``[B, E]``: squared Mahalanobis distances to each task's mean under the shared covariance."""
        return _to_means(projected, self.whiten, self.task_means)

    def relative_mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: min over tasks of the squared Mahalanobis distance to the task's mean (shared covariance),
        minus the squared distance to the training mix's mean under the mix's covariance."""
        return self._relative_mahalanobis(self._project(features)[1])

    def _relative_mahalanobis(self, projected: torch.Tensor) -> torch.Tensor:
        return _relative_distance(projected, self.whiten, self.task_means, self.whiten_mix, self.mix_mean)

    def task_shaped(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: the smallest, over tasks, negative log density (up to constants) under the task's Gaussian with
        its own blended covariance, minus the training mix's; each task's shape, not only its centre, counts."""
        return self._task_shaped(self._project(features)[1])

    def _task_shaped(self, projected: torch.Tensor) -> torch.Tensor:
        to_tasks = torch.cat([  # [B, E], SHAPED_ROWS inputs at a time: each holds an [rows, E, q] offset
            torch.einsum("beq,eqr->ber", part.unsqueeze(1) - self.shaped_means, self.shaped_whiten).square().sum(-1)
            for part in projected.split(SHAPED_ROWS)]) + self.shaped_log_det[:-1]
        to_mix = (projected @ self.shaped_whiten_mix - self.shaped_mix_mean).square().sum(1) + self.shaped_log_det[-1]
        return to_tasks.min(1).values - to_mix

    def latest_state(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: the relative Mahalanobis distance on the latest state's ``text`` block alone (L2-normalised, full
        covariance): the state nearest the expert-adapted blocks, which the principal subspace of every block mixes
        with the earlier ones (README "Abstention")."""
        return _relative_distance(self._state_vector(features), self.state_whiten, self.state_means,
                                  self.state_whiten_mix, self.state_mix_mean)

    def _state_vector(self, features: torch.Tensor) -> torch.Tensor:
        start = self.state_block * self.block
        return nn.functional.normalize(features[:, start:start + self.block].float(), dim=1)

    def surface(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: the relative Mahalanobis distance on the surface columns (:mod:`ttlora_moe.data.surface`)."""
        return _relative_distance(self._surface_vector(features), self.surface_whiten, self.surface_means,
                                  self.surface_whiten_mix, self.surface_mix_mean)

    def _surface_columns(self, features: torch.Tensor) -> torch.Tensor:
        stop = features.shape[1] - self.surface_offset
        return features[:, stop - len(SURFACE_COLUMNS):stop]

    def _surface_vector(self, features: torch.Tensor) -> torch.Tensor:
        return (self._surface_columns(features).float() - self.surface_center) / self.surface_scale

    def unknown_words(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]``: the larger unknown-word share (:mod:`ttlora_moe.data.unknown_words`) of ``text`` and ``text_pair``."""
        return _tail_max(features, UNKNOWN_COLUMNS, self.unknown_offset)

    def task_log_likelihood(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, E]``: log P(task | input) under the ``relative`` method's Gaussians (shared covariance, equal
        priors): a generative task classifier the router can add to its logits."""
        if self.method != "relative":
            raise BadInput(f"an out-of-scope detector of method {self.method!r} has no task Gaussians",
                           "set router.out_of_scope.method: relative, or router.generative_weights: [0]")
        return torch.log_softmax(-0.5 * self._to_tasks(self._project(features)[1]), -1)

    @staticmethod
    def fragmentation(features: torch.Tensor) -> torch.Tensor:
        """``[B]``: the larger fragmentation (log tokens per word) of ``text`` and ``text_pair``, the last columns."""
        return _tail_max(features, FRAGMENTATION_COLUMNS, 0)

    def doubt(self, confidence: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """``[B]``: ``-log(confidence)`` on the validation scale of the expert each input is routed to."""
        median, spread = self.expert_scales[expert].unbind(-1)
        return (-torch.log(confidence.float().clamp_min(1e-12)) - median) / spread

    def score(self, features: torch.Tensor, confidence: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """``[B]`` out-of-scope scores of raw router ``features``, given the router's ``confidence`` and
        chosen ``expert`` for each input."""
        if self.method in SURPRISALS:
            centered, projected = self._project(features)  # once: the distance and the Gaussians share it
            terms = [(1.0, self._distance(centered, projected)), (1.0, self.doubt(confidence, expert))]
            if self.method == "relative":
                terms.append((1.0, self._relative_mahalanobis(projected)))
            if self.task_covariance_weight:
                terms.append((self.task_covariance_weight, self._task_shaped(projected)))
            if self.state_weight:
                terms.append((self.state_weight, self.latest_state(features)))
            if self.surface_weight:
                terms.append((self.surface_weight, self.surface(features)))
            if self.unknown_weight:
                terms.append((self.unknown_weight, self.unknown_words(features)))
            if self.lexical_weight:
                terms.append((self.lexical_weight, self.fragmentation(features)))
            each = surprisals(torch.stack([raw.float() for _, raw in terms]), self.surprisals)  # rows in fitted order
            if self.unknown_weight:  # only what lies beyond its in-scope quantile counts
                each[self.unknown_row] = (each[self.unknown_row] - self.unknown_floor).clamp_min(0)
            score = each[0]
            for row, (weight, _) in enumerate(terms[1:], start=1):
                score = score + weight * each[row]  # in the order and the float32 sums of the terms one by one
            return score
        surprise = -torch.log(confidence.float().clamp_min(1e-12))
        if self.method == "confidence":
            return surprise
        score = self.distance(features)
        if not self.confidence_weight:
            return score
        sc, ss = self.scales[2].tolist()
        return score + self.confidence_weight * (surprise - sc) / ss


def _tail_max(features: torch.Tensor, width: int, offset: int) -> torch.Tensor:
    """``[B]``: the largest of the ``width`` columns (e.g. one of ``text``, one of ``text_pair``) that end ``offset``
    columns before the features' end."""
    stop = features.shape[1] - offset
    return features[:, stop - width:stop].float().amax(1)


def _robust_scale(values: torch.Tensor, floor: float) -> list[float]:
    """Median and interquartile range, the range at least ``floor`` (validation inputs that all score alike
    must not turn a tiny difference into a huge one)."""
    q1, median, q3 = torch.quantile(values.float(), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return [median, max(q3 - q1, floor)]


def _whitener(covariance: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``L`` with ``L @ L.T`` the inverse of ``covariance`` plus ``shrinkage`` times its mean variance on the diagonal."""
    eye = torch.eye(len(covariance), dtype=covariance.dtype)
    shrunk = covariance + shrinkage * covariance.diagonal().mean().clamp_min(1e-12) * eye
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(shrunk)))


def _log_det_of_inverse(whiten: torch.Tensor) -> torch.Tensor:
    """``log det C`` from a :func:`_whitener` ``L`` of ``C`` (``L @ L.T = C^-1``, ``L`` triangular)."""
    return -2 * whiten.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _fit_gaussians(detector: OutOfScopeDetector, train_x: torch.Tensor, train_y: torch.Tensor, num_tasks: int,
                   shrinkage: float, task_covariance: float = 0.0) -> None:
    """The task means and the two covariances of ``relative`` on every training input (not only the bank),
    in the detector's principal subspace; every task weighs the same, however many rows it has. With the
    task-shaped term, also each task's own covariance, blended ``task_covariance`` to ``1 - task_covariance``
    with the shared one (regularised discriminant analysis: 0 is the shared covariance alone), and the mix's
    Gaussian with every row weighing the same: on the pool it found more unseen tasks and junk than the
    task-balanced mix (README "Abstention")."""
    _, z = detector._project(train_x)
    z = z.double()
    weights, means, within, shared, whiten, mix_mean, whiten_mix = _task_balanced_gaussians(z, train_y, num_tasks,
                                                                                            shrinkage)
    if detector.task_covariance_weight:
        own = [_covariance(within[train_y == e]) for e in range(num_tasks)]
        shaped = torch.stack([_whitener(task_covariance * c + (1 - task_covariance) * shared, shrinkage) for c in own])
        detector.shaped_means.copy_(means.float())
        detector.shaped_whiten.copy_(shaped.float())
        sampled_mean = z.mean(0)
        sampled = _whitener(_covariance(z - sampled_mean), shrinkage)
        detector.shaped_mix_mean.copy_((sampled_mean @ sampled).float())
        detector.shaped_whiten_mix.copy_(sampled.float())
        detector.shaped_log_det.copy_(torch.cat([_log_det_of_inverse(shaped),
                                                 _log_det_of_inverse(sampled).reshape(1)]).float())
    detector.task_means.copy_((means @ whiten).float())
    detector.whiten.copy_(whiten.float())
    detector.mix_mean.copy_((mix_mean @ whiten_mix).float())
    detector.whiten_mix.copy_(whiten_mix.float())


def _to_means(z: torch.Tensor, whiten: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """``[B, E]``: squared distances of ``z`` to each of ``means`` (already whitened) after whitening ``z``."""
    a = z @ whiten
    return a.square().sum(1, keepdim=True) - 2 * a @ means.T + means.square().sum(1)


def _relative_distance(z: torch.Tensor, whiten: torch.Tensor, means: torch.Tensor, whiten_mix: torch.Tensor,
                       mix_mean: torch.Tensor) -> torch.Tensor:
    """``[B]``: the smallest squared distance to a task's mean under the shared whitening, minus the squared
    distance to the mix's mean under the mix's (Ren et al. 2021; every mean already whitened)."""
    to_mix = (z @ whiten_mix - mix_mean).square().sum(1)
    return _to_means(z, whiten, means).min(1).values - to_mix


def _task_balanced_gaussians(z: torch.Tensor, y: torch.Tensor, num_tasks: int, shrinkage: float) -> tuple[torch.Tensor, ...]:
    """Every task weighing the same: (row weights ``[N, 1]``, task means, rows minus their task's mean, the shared
    within-task covariance and its whitener, the mix's mean and the whitener of the mix's covariance)."""
    weights = 1 / torch.bincount(y, minlength=num_tasks).clamp_min(1).double()[y]
    weights = (weights / weights.sum()).unsqueeze(1)
    means = torch.stack([z[y == e].mean(0) if (y == e).any() else z.new_zeros(z.shape[1]) for e in range(num_tasks)])
    within = z - means[y]
    shared = within.T @ (weights * within)
    mix_mean = (weights * z).sum(0)
    mix = z - mix_mean
    return (weights, means, within, shared, _whitener(shared, shrinkage), mix_mean,
            _whitener(mix.T @ (weights * mix), shrinkage))


def _fit_relative_buffers(detector: OutOfScopeDetector, prefix: str, z: torch.Tensor, train_y: torch.Tensor,
                          num_tasks: int, shrinkage: float) -> None:
    """The task means and the shared and mix whiteners of a relative distance on ``z`` (one vector per training
    input), fitted as ``relative``'s (every task weighs the same), into the detector's ``<prefix>_means``,
    ``<prefix>_whiten``, ``<prefix>_mix_mean`` and ``<prefix>_whiten_mix``."""
    _, means, _, _, whiten, mix_mean, whiten_mix = _task_balanced_gaussians(z.double(), train_y, num_tasks, shrinkage)
    getattr(detector, f"{prefix}_means").copy_((means @ whiten).float())
    getattr(detector, f"{prefix}_whiten").copy_(whiten.float())
    getattr(detector, f"{prefix}_mix_mean").copy_((mix_mean @ whiten_mix).float())
    getattr(detector, f"{prefix}_whiten_mix").copy_(whiten_mix.float())


def _fit_surface_scale(detector: OutOfScopeDetector, train_x: torch.Tensor) -> None:
    """The standardisation of the surface columns: their mean and spread on the training mix."""
    raw = detector._surface_columns(train_x).double()
    detector.surface_center.copy_(raw.mean(0).float())
    detector.surface_scale.copy_(raw.std(0).clamp_min(1e-3).float())


def _covariance(centred: torch.Tensor) -> torch.Tensor:
    """The covariance of rows already centred on their mean (zeros for fewer than two rows)."""
    return centred.T @ centred / len(centred) if len(centred) > 1 else centred.new_zeros(centred.shape[1], centred.shape[1])


def weighted_quantile_threshold(scores: torch.Tensor, rate: float, weights: torch.Tensor) -> float:
    """The score above which a (weighted) share ``rate`` of ``scores`` lies; ``rate = 0`` never abstains."""
    if rate <= 0 or not len(scores):
        return math.inf
    order = torch.argsort(scores, descending=True)
    cum = torch.cumsum(weights[order], 0) / weights.sum()
    k = int(torch.searchsorted(cum, torch.tensor(rate), right=False))
    return float(scores[order[min(k, len(order) - 1)]])


@torch.no_grad()
def fit_detector(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_confidence: torch.Tensor,
                 val_expert: torch.Tensor, val_weights: torch.Tensor, num_tasks: int, block: int | None,
                 options: dict[str, Any], false_abstain_rate: float, seed: int = 0,
                 fragmentation: bool = False, state_block: int | None = None,
                 surface: bool = False, unknown_words: bool = False) -> OutOfScopeDetector:
    """Fit the detector on raw training features and calibrate its scales and threshold on validation.

    ``val_confidence`` and ``val_expert`` are the router's confidence and choice on ``val_x``;
    ``block`` is the width of one pooled vector (the base model's hidden size; None: the whole row);
    ``fragmentation``: the features end in the fragmentation columns (``FeatureSpec.fragmentation``);
    ``state_block``: the latest state's text block (``FeatureSpec.latest_text_block``; None: no such term);
    ``surface``: the features carry the surface columns (``FeatureSpec.surface``), before any fragmentation;
    ``unknown_words``: the unknown-word columns (``FeatureSpec.unknown_words``), after them.
    """
    detector = build_detector(train_x, train_y, val_x, val_weights, num_tasks, block, options, seed, fragmentation,
                              state_block, surface, unknown_words)
    calibrate_detector(detector, val_x, val_confidence, val_expert, val_weights, false_abstain_rate)
    return detector


@torch.no_grad()
def build_detector(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_weights: torch.Tensor,
                   num_tasks: int, block: int | None, options: dict[str, Any], seed: int = 0,
                   fragmentation: bool = False, state_block: int | None = None,
                   surface: bool = False, unknown_words: bool = False) -> OutOfScopeDetector:
    """The parts of the detector that do not depend on the router: bank, principal directions, Gaussians, and
    the validation scales of the distances and of the fragmentation (when the features carry it).
    :func:`calibrate_detector` then adds the router's part."""
    opts = {**DEFAULTS, **options}
    block = int(block or train_x.shape[1])
    generator = torch.Generator().manual_seed(seed)
    keep = torch.cat([idx[torch.randperm(len(idx), generator=generator)[: int(opts["bank_per_task"])]]
                      for idx in (torch.nonzero(train_y == e).flatten() for e in range(num_tasks))])
    bank_x = normalise_blocks(train_x[keep], block) if opts["method"] != "confidence" else train_x[:0]
    # at most one principal direction per bank input (and per dimension)
    components = max(1, min(int(opts["components"]), len(bank_x) - 1, bank_x.shape[1]))
    has_state = state_block is not None and block < train_x.shape[1]  # one block: nothing to single out
    after_unknown = FRAGMENTATION_COLUMNS * fragmentation
    after_surface = after_unknown + UNKNOWN_COLUMNS * unknown_words
    tail = after_surface + len(SURFACE_COLUMNS) * surface
    if tail >= train_x.shape[1]:
        raise BadInput(f"router features {train_x.shape[1]} wide cannot hold the {tail} surface, unknown-word and "
                       "fragmentation columns that router.features says they end in, and anything before them",
                       "compute the features with the same router.features spec as the router")
    detector = OutOfScopeDetector(train_x.shape[1], block, components, len(bank_x), int(opts["k"]),
                                  str(opts["method"]), float(opts["confidence_weight"]), num_tasks,
                                  float(opts["lexical_weight"]) if fragmentation else 0.0,
                                  float(opts["task_covariance_weight"]) if opts["task_covariance"] else 0.0,
                                  float(opts["state_weight"]) if has_state else 0.0, state_block or 0,
                                  float(opts["surface_weight"]) if surface else 0.0, after_surface,
                                  float(opts["unknown_weight"]) if unknown_words else 0.0, float(opts["unknown_level"]),
                                  after_unknown)
    if opts["method"] != "confidence":
        center = bank_x.mean(0)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # pca_lowrank is randomised
        _, _, v = torch.pca_lowrank(bank_x - center, q=components, center=False, niter=4)
        torch.random.set_rng_state(state)
        detector.center.copy_(center)
        detector.components.copy_(v[:, :components].T)
        detector.bank.copy_(nn.functional.normalize((bank_x - center) @ detector.components.T, dim=1))
        distance, residual = detector.parts(val_x)
        detector.scales[:2] = torch.tensor([_robust_scale(distance, 1e-4), _robust_scale(residual, 1e-4)])
    if opts["method"] == "relative":
        _fit_gaussians(detector, train_x, train_y, num_tasks, float(opts["shrinkage"]), float(opts["task_covariance"]))
        detector.surprisals[2] = fit_surprisal(detector.relative_mahalanobis(val_x), val_weights)
        if detector.task_covariance_weight:
            detector.surprisals[3] = fit_surprisal(detector.task_shaped(val_x), val_weights)
        if detector.state_weight:
            _fit_relative_buffers(detector, "state", detector._state_vector(train_x), train_y, num_tasks,
                                  float(opts["shrinkage"]))
            detector.surprisals[detector.state_row] = fit_surprisal(detector.latest_state(val_x), val_weights)
        if detector.surface_weight:
            _fit_surface_scale(detector, train_x)
            _fit_relative_buffers(detector, "surface", detector._surface_vector(train_x), train_y, num_tasks,
                                  float(opts["shrinkage"]))
            detector.surprisals[detector.surface_row] = fit_surprisal(detector.surface(val_x), val_weights)
    if opts["method"] in SURPRISALS:
        detector.surprisals[0] = fit_surprisal(detector.distance(val_x), val_weights)
    if detector.unknown_weight:
        detector.surprisals[detector.unknown_row] = fit_surprisal(detector.unknown_words(val_x), val_weights)
    if detector.lexical_weight:
        detector.surprisals[-1] = fit_surprisal(detector.fragmentation(val_x), val_weights)
    return detector


@torch.no_grad()
def calibrate_detector(detector: OutOfScopeDetector, val_x: torch.Tensor, val_confidence: torch.Tensor,
                       val_expert: torch.Tensor, val_weights: torch.Tensor, false_abstain_rate: float) -> None:
    """The router's part, on validation: the scales of its doubt (overall and per routed expert), and the
    threshold above which ``false_abstain_rate`` of the (weighted) validation inputs score."""
    val_surprise = -torch.log(val_confidence.float().clamp_min(1e-12))
    surprise = _robust_scale(val_surprise, 0.05)
    detector.scales[2] = torch.tensor(surprise)
    if detector.method in SURPRISALS:
        for e in range(len(detector.expert_scales)):
            mine = val_expert == e
            detector.expert_scales[e] = torch.tensor(
                _robust_scale(val_surprise[mine], DOUBT_FLOOR) if int(mine.sum()) >= MIN_EXPERT_ROWS else surprise)
        detector.surprisals[1] = fit_surprisal(detector.doubt(val_confidence, val_expert), val_weights)
    scores = detector.score(val_x, val_confidence, val_expert)
    detector.threshold.fill_(weighted_quantile_threshold(scores, false_abstain_rate, val_weights))
