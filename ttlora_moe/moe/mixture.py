"""Mixture-of-experts inference: one frozen base, every expert's TT cores stacked, top-1 routing.

For a batch of mixed-task inputs:

1. **routing pass**: the plain frozen base (no adapter) computes the router's features; the
   router picks one expert per input (or abstains);
2. **adapted pass**: one forward in which every adapted linear adds ``alpha_e · ΔW_e x`` with the
   update of each sample's own expert (a one-expert batch through that expert's merged weight, a mixed
   one through each sample's rank-r factors of ``ΔW``; no Python loop over samples), then each sample's own head.

With ``route_after_layer = k`` (single-pass routing, :mod:`ttlora_moe.moe.single_pass`) the two passes
are one: the experts adapt only blocks ``>= k``, and a hook before block ``k`` pools
``hidden_states[0..k]``, routes, and sets each sample's expert for the blocks that follow; inputs the
early detector doubts may then get a second look at every state of the plain base
(:mod:`ttlora_moe.moe.second_look`), which decides whether they abstain.

The adapted linears (:class:`~ttlora_moe.moe.expert_linear.MoETTLinear`) read the routing of the
forward that is running from the mixture's :class:`~ttlora_moe.moe.routing.RoutingSlot`, a context
variable: one loaded mixture serves many threads at once, and no call can see another's routing
(``with moe.routing(index): ...``). Nothing is monkey-patched. Heads with different label counts share one
``[E, C_max, H]`` tensor; padded classes get ``-inf`` logits, and probabilities are reported over the
task's own labels only (the paper's B2 mixed these up). A multiple-choice expert's head reads each
option's own state (:func:`~ttlora_moe.experts.classifier.class_states`) where the others read the
pooled state.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ttlora_moe.data.batching import length_batches, tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import BaseModel, pool
from ttlora_moe.experts.classifier import class_states, scores_options
from ttlora_moe.moe.block_hooks import on_states
from ttlora_moe.moe.expert_linear import FACTORED_PATHS, MoETTLinear, choose_path
from ttlora_moe.moe.factor_bank import build_bank, layer_factors
from ttlora_moe.moe.features import (
    FeatureSpec,
    batch_features,
    feature_dim,
    num_hidden_states,
    pool_states,
)
from ttlora_moe.moe.router import Router
from ttlora_moe.moe.routing import Routing, RoutingSlot
from ttlora_moe.moe.second_look import SecondLook
from ttlora_moe.moe.single_pass import check_route_after_layer, restrict_spec


@dataclass
class ExpertInfo:
    """What the mixture knows of one expert (its position in the list is its router index)."""

    name: str
    version: str | None
    task: str
    label_names: list[str]
    metric: str


class MixtureOfExperts(nn.Module):
    """Frozen base + stacked experts + router. Load one with :func:`ttlora_moe.moe.bundle.load_moe`."""

    def __init__(self, base: BaseModel, experts: list[ExpertInfo], expert_tensors: list[dict[str, torch.Tensor]],
                 expert_meta: list[dict[str, Any]], router: Router, feature_spec: FeatureSpec,
                 max_length: int, route_after_layer: int | None = None, adapter_path: str = "auto",
                 merged_cache_mb: float = 1024, second_look: SecondLook | None = None) -> None:
        """``route_after_layer``: ``None`` routes in a pass of its own; ``k`` routes inside the one forward.
        ``adapter_path``: how adapted layers compute (``auto``, ``merged``, ``factored``, ``contract``: see
        :mod:`ttlora_moe.moe.expert_linear`); ``auto`` keeps merged weights only when they fit ``merged_cache_mb``.
        ``second_look`` (single pass only): who decides the abstention of inputs in its band."""
        super().__init__()
        if not experts or len(experts) != len(expert_tensors) or len(experts) != len(expert_meta):
            raise ValueError("experts, tensors and metadata must be non-empty lists of one length")
        if router.num_experts != len(experts):
            raise BadInput(f"the router routes to {router.num_experts} experts, the bundle has {len(experts)}",
                           "rebuild the bundle")
        if route_after_layer is not None:
            check_route_after_layer(route_after_layer, expert_meta[0].get("layout") or {},
                                    num_hidden_states(base) - 1, f"expert {experts[0].name}")
            feature_spec = restrict_spec(feature_spec, route_after_layer)
        if feature_dim(feature_spec, base) != router.in_dim:
            raise BadInput(f"the router reads {router.in_dim} features, its feature spec gives "
                           f"{feature_dim(feature_spec, base)}", "rebuild the bundle")
        if second_look is not None and (route_after_layer is None
                                        or feature_dim(second_look.spec, base) != second_look.router.in_dim):
            raise BadInput("the bundle's second look does not fit its routing (two passes, or a feature spec that does "
                           "not match its router)", "rebuild the bundle")
        self.base = base
        self.backbone = base.model  # a submodule, so that .to(), .half() and .eval() reach the base and its adapters
        self.experts = experts
        self.router = router
        self.feature_spec = feature_spec
        self.max_length = max_length
        self.route_after_layer = route_after_layer
        self.pooling = expert_meta[0].get("pooling", base.pooling)
        self.slot = RoutingSlot()
        self.second_look = second_look
        self.second_router = None if second_look is None else second_look.router  # a submodule: .to() moves it
        # batches carry the raw text's surface statistics and unknown words only for features that read them
        specs = [feature_spec] + ([] if second_look is None else [second_look.spec])
        self.row_statistics = {name: any(s.row_statistics[name] for s in specs) for name in feature_spec.row_statistics}
        layout = expert_meta[0].get("layout") or {}
        self.adapter_path = choose_path(adapter_path, layout, len(experts), merged_cache_mb)
        self._attach(expert_tensors, expert_meta)
        hidden = base.hidden_size
        self.num_labels = [len(e.label_names) for e in experts]
        c_max = max(self.num_labels)
        weight = torch.zeros(len(experts), c_max, hidden)
        bias = torch.full((len(experts), c_max), float("-inf"))
        for e, (tensors, c) in enumerate(zip(expert_tensors, self.num_labels)):
            w, b = tensors["head.weight"], tensors["head.bias"]
            if tuple(w.shape) != (c, hidden) or tuple(b.shape) != (c,):
                raise BadInput(f"expert {experts[e].name}: head has shape {tuple(w.shape)}, expected {(c, hidden)}",
                               "rebuild the expert with this base model")
            weight[e, :c], bias[e, :c] = w.float(), b.float()
        device = next(base.model.parameters()).device
        self.register_buffer("head_weight", weight.to(device))
        self.register_buffer("head_bias", bias.to(device))
        options = [scores_options(m) for m in expert_meta]
        self.register_buffer("option_heads", torch.tensor(options, device=device))
        self.reads_options = any(options)  # then batches carry option_mask
        self.eval()

    def _attach(self, expert_tensors: list[dict[str, torch.Tensor]], expert_meta: list[dict[str, Any]]) -> None:
        """Replace every adapted linear of the base model with a :class:`MoETTLinear` (and, for the
        factored paths, gather every layer's factors into the mixture's ``factor_bank``)."""
        model = self.base.model
        for p in model.parameters():
            p.requires_grad_(False)
        layout = expert_meta[0].get("layout") or {}
        alphas = torch.tensor([float(m["tt"]["alpha"]) for m in expert_meta]) if layout else torch.zeros(0)
        factored = self.adapter_path in FACTORED_PATHS
        layers, factors = [], []
        for name, (in_f, out_f, _rank) in layout.items():
            num_cores = len(in_f) + len(out_f)
            try:
                stacked = [torch.stack([t[f"{name}.tt_cores.{k}"].float() for t in expert_tensors])
                           for k in range(num_cores)]
            except KeyError as exc:
                raise BadInput(f"an expert lacks tensor {exc.args[0]}", "rebuild the bundle from intact experts") from None
            except RuntimeError as exc:
                raise BadInput(f"experts' cores of {name} differ in shape ({exc})", "use experts with one TT layout") from None
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, child)
            if not isinstance(linear, nn.Linear):
                raise BadInput(f"module {name} of the base model is not a linear layer", "use the experts' base model")
            layers.append((parent, child, linear, stacked, in_f, out_f))
            if factored:
                factors.append(layer_factors(stacked, alphas, in_f, out_f))
        bank, slices = build_bank(factors) if factors else (None, [None] * len(layers))
        device = next(model.parameters()).device
        self.register_buffer("factor_bank", None if bank is None else bank.to(device))
        for (parent, child, linear, stacked, in_f, out_f), part in zip(layers, slices):
            setattr(parent, child, MoETTLinear(linear, stacked, alphas, in_f, out_f, self.slot, self.adapter_path, part))

    @contextlib.contextmanager
    def routing(self, expert_index: torch.Tensor | None) -> Iterator[None]:
        """Within the block, forwards in this context adapt sample ``b`` with expert ``expert_index[b]``
        (``None``: the plain base model); other threads' forwards are not affected."""
        with self.slot.use(None if expert_index is None else Routing.of(expert_index.to(self.device), self.factor_bank)):
            yield

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    def tokenize_rows(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``rows`` tokenised as this mixture reads them: at its length, with the raw text's statistics its routers
        read and, for experts that score options, the option masks (what :meth:`route` and :meth:`single_pass` take)."""
        return tokenize(self.base.tokenizer, rows, self.max_length, options=self.reads_options, **self.row_statistics)

    @torch.no_grad()
    def route(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Routing pass: ``(expert index or -1, confidence, router probabilities, out-of-scope score)`` per input."""
        with self.routing(None):
            feats = batch_features(self.base, batch, self.feature_spec)
        return tuple(t.cpu() for t in self.router.route(feats.to(self.router.mean.device)))

    def _head_logits(self, hidden: torch.Tensor, mask: torch.Tensor, expert_index: torch.Tensor,
                     option_mask: torch.Tensor | None) -> torch.Tensor:
        """``[B, C_max]``: each sample's own head on its pooled last state (a multiple-choice expert's: on
        each option's state)."""
        pooled = pool(hidden, mask, self.pooling).float()
        weight, bias = self.head_weight.index_select(0, expert_index), self.head_bias.index_select(0, expert_index)
        if not self.reads_options:  # one batched matmul: [B, C, H] @ [B, H, 1] + [B, C, 1]
            return torch.baddbmm(bias.unsqueeze(-1), weight, pooled.unsqueeze(-1)).squeeze(-1)
        options = None if option_mask is None else option_mask.to(hidden.device)
        states = class_states(hidden.float(), pooled, options, weight.shape[1])
        states = torch.where(self.option_heads.index_select(0, expert_index)[:, None, None], states, pooled[:, None, :])
        return torch.einsum("bch,bch->bc", states, weight) + bias

    @torch.no_grad()
    def expert_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      expert_index: torch.Tensor, option_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted pass: ``[B, C_max]`` logits, sample ``b`` through expert ``expert_index[b]``
        (``option_mask`` from :func:`~ttlora_moe.data.batching.tokenize` for multiple-choice experts)."""
        device = self.device
        expert_index = expert_index.to(device)
        mask = attention_mask.to(device)
        with self.routing(expert_index):
            hidden = self.base.model(input_ids=input_ids.to(device), attention_mask=mask).last_hidden_state
        return self._head_logits(hidden, mask, expert_index, option_mask)

    @torch.no_grad()
    def single_pass(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One forward that routes after block ``route_after_layer`` and adapts the blocks after it.

        Returns ``(expert index or -1, confidence, router probabilities, out-of-scope score, [B, C_max]
        logits)``, all on CPU. An abstaining sample rides along with the router's arg-max expert; its
        logits mean nothing.
        """
        if self.route_after_layer is None:
            raise BadInput("this mixture routes in a pass of its own", "call route() and expert_logits()")
        device = self.device
        ids, mask, segments = (batch[k].to(device) for k in ("input_ids", "attention_mask", "segment_ids"))
        routed: dict[str, torch.Tensor] = {}

        def route_here(states: list[torch.Tensor]) -> None:
            features = pool_states(states, mask, segments, self.feature_spec, num_hidden_states(self.base),
                                   batch.get("word_counts"), batch.get("surface"), batch.get("unknown_words"))
            routed["index"], routed["confidence"], routed["probs"], routed["score"] = self.router.route(features)
            routed["ride"] = routed["probs"].argmax(-1)
            self.slot.set(Routing.of(routed["ride"], self.factor_bank))  # read by every adapted linear of the blocks to come

        adapted_look = self.second_look is not None and self.second_look.source == "adapted"
        with self.routing(None), on_states(self.base.model, self.route_after_layer, route_here):
            out = self.base.model(input_ids=ids, attention_mask=mask, output_hidden_states=adapted_look)
        logits = self._head_logits(out.last_hidden_state, mask, routed["ride"], batch.get("option_mask"))
        if self.second_look is not None:
            states = out.hidden_states if adapted_look else None
            routed["index"], routed["score"] = self._look_again(batch, routed["ride"], routed["score"], states)
        return tuple(routed[k].cpu() for k in ("index", "confidence", "probs", "score")) + (logits.cpu(),)

    def _look_again(self, batch: dict[str, torch.Tensor], ride: torch.Tensor, early: torch.Tensor,
                    states: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert index or -1, served out-of-scope score) after the second look: the inputs whose ``early`` score
        is in the band get the second router's score (:mod:`.second_look`) on every state: the single pass's own
        ``states`` (source ``adapted``) or those of a forward of the plain base."""
        look = self.second_look
        looked = early > look.band
        rows = looked.nonzero().flatten()
        second = early.new_zeros(0)
        if len(rows):
            size = len(batch["input_ids"])
            part = {k: v[rows.to(v.device)] for k, v in batch.items()
                    if isinstance(v, torch.Tensor) and v.dim() and len(v) == size}
            if states is not None:
                state_rows = rows.to(states[0].device)
                features = pool_states([h[state_rows] for h in states], part["attention_mask"].to(states[0].device),
                                       part["segment_ids"].to(states[0].device), look.spec, len(states),
                                       part.get("word_counts"), part.get("surface"), part.get("unknown_words"))
            else:
                with self.routing(None):  # the plain base: no expert adapts this forward
                    features = batch_features(self.base, part, look.spec)
            second = self.second_router.route(features.float().to(self.second_router.mean.device))[3].to(early.device)
        score = look.score(early, looked, second)
        return torch.where(score > look.threshold, torch.full_like(ride, -1), ride), score

    @torch.no_grad()
    def _two_pass(self, batch: dict[str, torch.Tensor],
                  forced: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """:meth:`single_pass`'s outputs from a routing pass (or the ``forced`` index) and an adapted pass."""
        if forced is None:
            index, confidence, probs, score = self.route(batch)
        else:
            index, confidence, score = forced, torch.ones(len(forced)), torch.zeros(len(forced))
            probs = nn.functional.one_hot(index.clamp_min(0), len(self.experts)).float()
        logits = torch.full((len(index), self.head_weight.shape[1]), float("nan"))
        keep = (index >= 0).nonzero().flatten()
        if len(keep):
            options = batch.get("option_mask")
            logits[keep] = self.expert_logits(batch["input_ids"][keep], batch["attention_mask"][keep], index[keep],
                                              None if options is None else options[keep]).cpu()
        return index, confidence, probs, score, logits

    @torch.no_grad()
    def predict(self, rows: Sequence[dict[str, Any]], batch_size: int = 32, progress: bool = False,
                force_expert: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Answers for ``rows`` (dicts with ``text`` and optional ``text_pair``), in order.

        Each answer: ``task``, ``label``, ``probabilities`` (over that task's labels), ``router_confidence``,
        ``router_probabilities``, ``router_choice`` (the arg-max expert, also when abstaining), ``expert``
        ({name, version}), ``out_of_scope_score``, ``abstained`` and ``abstain_reason`` (``empty``: no text
        at all, never routed; ``out_of_scope``: the router's detector puts it outside every task;
        ``low_confidence``: a router without a detector is below its threshold); an abstained answer has task, label,
        probabilities and expert ``None``. With ``force_expert`` (one index per row) routing is skipped:
        evaluation uses it for oracle routing. Safe to call from many threads at once.
        """
        for row in rows:
            if not isinstance(row.get("text"), str) or not isinstance(row.get("text_pair"), (str, type(None))):
                raise BadInput(f"input {row!r} has no text (or a text_pair that is not a string)",
                               'give {"text": ..., "text_pair": ...} per input')
        answers: list[dict[str, Any]] = [_EMPTY] * len(rows)
        texts = [i for i, r in enumerate(rows) if r["text"].strip() or (r.get("text_pair") or "").strip()]
        for idx in tqdm(length_batches(rows, batch_size, texts), desc="predict", leave=False, disable=not progress,
                        file=sys.stderr, dynamic_ncols=True):
            batch = self.tokenize_rows([rows[i] for i in idx])
            if force_expert is None and self.route_after_layer is not None:
                index, confidence, router_probs, score, logits = self.single_pass(batch)
            else:
                forced = None if force_expert is None else torch.tensor([int(force_expert[i]) for i in idx])
                index, confidence, router_probs, score, logits = self._two_pass(batch, forced)
            probs = torch.softmax(logits.float(), -1).tolist()
            for j, i in enumerate(idx):
                answers[i] = self._answer(int(index[j]), float(confidence[j]), router_probs[j].tolist(), probs[j],
                                          float(score[j]))
        return [dict(a) for a in answers]

    def _answer(self, expert: int, confidence: float, router_probs: list[float], probs: list[float],
                score: float) -> dict[str, Any]:
        """One input's answer from its routing (``expert`` -1: abstained) and its padded class probabilities."""
        names = [e.name for e in self.experts]
        answer: dict[str, Any] = {"router_confidence": confidence, "out_of_scope_score": score,
                                  "router_probabilities": {n: round(p, 6) for n, p in zip(names, router_probs)},
                                  "router_choice": names[max(range(len(names)), key=router_probs.__getitem__)]}
        if expert < 0:
            reason = "out_of_scope" if self.router.detector is not None else "low_confidence"
            return {**answer, **_ABSTAINED, "abstain_reason": reason}
        info = self.experts[expert]
        p = probs[: self.num_labels[expert]]
        label = max(range(len(p)), key=p.__getitem__)
        return {**answer, "task": info.task, "label": info.label_names[label], "label_id": label,
                "probabilities": dict(zip(info.label_names, p)), "expert": {"name": info.name, "version": info.version},
                "expert_index": expert, "abstained": False, "abstain_reason": None}


_ABSTAINED: dict[str, Any] = {"task": None, "label": None, "label_id": None, "probabilities": None, "expert": None,
                              "expert_index": None, "abstained": True}
# An input with no text at all: nothing to route, so no expert is asked.
_EMPTY: dict[str, Any] = {**_ABSTAINED, "router_confidence": 0.0, "out_of_scope_score": None,
                          "router_probabilities": {}, "router_choice": None, "abstain_reason": "empty"}
