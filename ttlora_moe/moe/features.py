"""Router features: pooled states of the frozen base model, computed in batches and cached on disk.

The router decides *which task an input comes from* from the frozen base model alone, so its
features depend only on (base model, data, feature spec): they are computed once and cached.
A :class:`FeatureSpec` says which hidden states (embeddings = 0, then every block) are pooled over
the whole input and how (masked ``mean``, masked ``max``, ``cls``, ``last`` non-pad token), which
hidden states are mean-pooled over the ``text`` and the ``text_pair`` tokens separately, and whether
token counts, the raw text's surface statistics (:mod:`ttlora_moe.data.surface`) and the fragmentation
(tokens per word) are appended. The default (segments of every hidden state + counts) is what
docs/router.md found best for all-MiniLM-L6-v2; the surface and the fragmentation are for the
out-of-scope detector. Pads and special tokens are never pooled into a
segment. The same :func:`batch_features` runs in training (through the cache) and inside the
mixture-of-experts forward, so a router always sees features computed by the same code.
The cache of computed features is :mod:`ttlora_moe.moe.feature_cache`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ttlora_moe.config_fields import Section, option
from ttlora_moe.data.batching import length_batches, tokenize
from ttlora_moe.data.surface import SURFACE_COLUMNS
from ttlora_moe.data.unknown_words import UNKNOWN_COLUMNS
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import BaseModel
from ttlora_moe.moe.block_hooks import early_hidden_states

FEATURE_VERSION = 1  # bump when the feature code changes meaning: old caches are then ignored
POOLINGS = ("mean", "max", "cls", "last")
FRAGMENTATION_COLUMNS = 2  # the last columns of features with ``fragmentation``: text, text_pair
# features with ``surface`` carry len(SURFACE_COLUMNS) columns, then with ``unknown_words`` UNKNOWN_COLUMNS, just before
# the fragmentation (or last, without it)


@dataclass(frozen=True)
class FeatureSpec(Section):
    """What the router sees of an input (``router.features`` in params.yaml)."""

    section: ClassVar[str] = "router.features"

    layers: tuple[int, ...] | str = option(
        (), "Hidden states pooled over the whole input (0 = embeddings, -1 = last), or 'all'.")
    pooling: tuple[str, ...] = option(("mean",), "Poolings of those whole-input states: mean, max, cls, last.")
    segment_layers: tuple[int, ...] | str = option(
        "all", "Hidden states whose text and text_pair tokens are mean-pooled separately.")
    lengths: bool = option(True, "Append log token counts of text and text_pair and a has-pair flag.")
    surface: bool = option(
        True, "Append the raw text's surface statistics (ttlora_moe/data/surface.py: length, case, punctuation, "
        "digits, a pair's word overlap) before the fragmentation: the out-of-scope detector reads them.")
    unknown_words: bool = option(
        True, "Append the share of text's and text_pair's words the tokenizer does not hold whole "
        "(ttlora_moe/data/unknown_words.py: invented words, Latin filler, other languages) after the surface "
        "statistics: the out-of-scope detector reads it.")
    fragmentation: bool = option(
        True, "Append log(tokens per whitespace word) of text and text_pair, last: high for code, URLs, numbers, "
        "noise and other languages (the out-of-scope detector reads it).")
    max_length: int = option(128, "Tokens per input (as the experts).")

    def __post_init__(self) -> None:
        for name in ("layers", "segment_layers"):
            value = getattr(self, name)
            if isinstance(value, str):
                if value != "all":
                    raise BadInput(f"router.features.{name} is {value!r}", "give a list of layer indices or 'all'")
            else:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        object.__setattr__(self, "pooling", tuple(self.pooling))
        bad = [p for p in self.pooling if p not in POOLINGS]
        if bad:
            raise BadInput(f"unknown router feature pooling {bad}", f"use {', '.join(POOLINGS)}")
        if not (self.layers and self.pooling) and not self.segment_layers:
            raise BadInput("the router feature spec pools no hidden state",
                           "set router.features.layers and pooling, or segment_layers")

    @classmethod
    def saved(cls, data: dict[str, Any]) -> FeatureSpec:
        """The spec a saved router was trained with (``router.json``'s ``features``): one saved before the
        fragmentation, the surface or the unknown words existed has none of them."""
        return cls.from_dict({"fragmentation": False, "surface": False, "unknown_words": False, **data})

    @property
    def row_statistics(self) -> dict[str, bool]:
        """The options of :func:`~ttlora_moe.data.batching.tokenize` for the raw text's statistics these features
        append (a batch tokenised without them cannot be pooled into these features)."""
        return {"surface": self.surface, "unknown_words": self.unknown_words}

    def latest_text_block(self, num_blocks: int) -> int:
        """Index, among the ``num_blocks`` pooled blocks of these features, of the latest state's ``text``: the
        text half of the highest segment layer, else the first pooling of the highest whole-input layer."""
        pools = len(self.pooling)
        if self.layers == "all" and self.segment_layers == "all":
            states = num_blocks // (pools + 2)
            layer_blocks, segments = states * pools, list(range(states))
        elif self.layers == "all":
            segments = list(self.segment_layers)
            layer_blocks = num_blocks - 2 * len(segments)
        else:
            layer_blocks = len(self.layers) * pools
            segments = (list(range((num_blocks - layer_blocks) // 2)) if self.segment_layers == "all"
                        else list(self.segment_layers))
        if segments:
            return layer_blocks + 2 * _latest(segments)
        layers = list(range(layer_blocks // pools)) if self.layers == "all" else list(self.layers)
        return pools * _latest(layers)

    def resolve(self, num_states: int) -> tuple[list[int], list[int]]:
        """Concrete (pooled layers, segment layers) for a model with ``num_states`` hidden states."""
        def concrete(value: tuple[int, ...] | str) -> list[int]:
            if value == "all":
                return list(range(num_states))
            out = []
            for v in value:
                if not -num_states <= v < num_states:
                    raise BadInput(f"router feature layer {v} does not exist (the base has {num_states} hidden states)",
                                   "pick layers between 0 and the number of blocks")
                out.append(v % num_states)
            return out

        return concrete(self.layers), concrete(self.segment_layers)


def num_hidden_states(base: BaseModel) -> int:
    """Embeddings plus one state per block."""
    return int(base.model.config.num_hidden_layers) + 1


def _latest(states: list[int]) -> int:
    """Position of the highest hidden state in ``states`` (negative indices count from the last state)."""
    return max(range(len(states)), key=lambda i: (states[i] < 0, states[i]))


def feature_dim(spec: FeatureSpec, base: BaseModel) -> int:
    layers, segments = spec.resolve(num_hidden_states(base))
    return (base.hidden_size * (len(layers) * len(spec.pooling) + 2 * len(segments)) + (3 if spec.lengths else 0)
            + (len(SURFACE_COLUMNS) if spec.surface else 0) + (UNKNOWN_COLUMNS if spec.unknown_words else 0)
            + (FRAGMENTATION_COLUMNS if spec.fragmentation else 0))


# --- pooling --------------------------------------------------------------------------------------

def _mean_weights(masks: torch.Tensor) -> torch.Tensor:
    """``[B, K, T]`` weights that average, per row, the tokens of each of ``K`` boolean ``[B, K, T]`` masks (an
    empty mask averages to zeros)."""
    weights = masks.float()
    return weights / weights.sum(-1, keepdim=True).clamp_min(1.0)


def _masked_means(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, K * H]``: the ``K`` means of ``hidden`` ``[B, T, H]`` under :func:`_mean_weights`, side by side (one
    batched matmul, where a product and a sum per mask would each write a ``[B, T, H]`` temporary)."""
    return torch.bmm(weights, hidden.float()).flatten(1)


def pool_states(
    hidden_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    segment_ids: torch.Tensor,
    spec: FeatureSpec,
    num_states: int | None = None,
    word_counts: torch.Tensor | None = None,
    surface: torch.Tensor | None = None,
    unknown_words: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, D]`` router features from a model's ``hidden_states`` (embeddings first).

    ``hidden_states`` may be only the first states of a model with ``num_states`` (default: all given);
    the spec's layers (``all``, negative indices) are resolved against ``num_states``. ``word_counts`` and
    ``surface`` and ``unknown_words`` (``tokenize``'s) are needed when the spec appends them.
    """
    layers, segment_layers = spec.resolve(num_states or len(hidden_states))
    valid = attention_mask.bool()
    whole = _mean_weights(valid.unsqueeze(1)) if layers and "mean" in spec.pooling else None
    parts: list[torch.Tensor] = []
    for layer in layers:
        h = hidden_states[layer].float()
        for mode in spec.pooling:
            if mode == "mean":
                parts.append(_masked_means(h, whole))
            elif mode == "max":
                parts.append(h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1).clamp_min(-1e4))
            elif mode == "cls":
                parts.append(h[:, 0])
            else:  # last non-pad token (right padding)
                last = valid.long().sum(1).clamp_min(1) - 1
                parts.append(h[torch.arange(h.shape[0], device=h.device), last])
    if segment_layers:
        segments = _mean_weights(torch.stack([segment_ids == 0, segment_ids == 1], 1))  # text, text_pair
        parts += [_masked_means(hidden_states[layer], segments) for layer in segment_layers]
    if spec.lengths or spec.fragmentation:
        tokens = torch.stack([(segment_ids == 0).sum(1), (segment_ids == 1).sum(1)], 1).float()  # of text, text_pair
    if spec.lengths:
        parts.append(torch.cat([torch.log1p(tokens), (tokens[:, 1:] > 0).float()], 1))
    if spec.surface:
        if surface is None:
            raise BadInput("the router's feature spec appends the surface statistics, but the batch has none",
                           "tokenise with ttlora_moe.data.batching.tokenize(..., surface=True)")
        parts.append(surface.to(attention_mask.device).float())
    if spec.unknown_words:
        if unknown_words is None:
            raise BadInput("the router's feature spec appends the unknown words, but the batch has none",
                           "tokenise with ttlora_moe.data.batching.tokenize(..., unknown_words=True)")
        parts.append(unknown_words.to(attention_mask.device).float())
    if spec.fragmentation:
        parts.append(fragmentation(tokens, word_counts))
    return torch.cat(parts, 1)


def fragmentation(tokens: torch.Tensor, word_counts: torch.Tensor | None) -> torch.Tensor:
    """``[B, 2]``: ``log((tokens + 1) / (words + 1))`` of ``text`` and of ``text_pair`` (0 without a pair), from
    the ``[B, 2]`` token counts of the two segments.

    Prose of the tokenizer's language takes a little over one token per word; code, URLs, hashes,
    numbers, keyboard noise and other languages break into many pieces per word. Tokens are counted
    after truncation and words before it, so a truncated long text reads as less fragmented, never more.
    """
    if word_counts is None:
        raise BadInput("the router's feature spec appends the fragmentation, but the batch has no word_counts",
                       "tokenise with ttlora_moe.data.batching.tokenize")
    words = word_counts.to(tokens.device).float()
    return torch.log((tokens + 1) / (words + 1))


def last_state_needed(spec: FeatureSpec, num_states: int) -> int:
    """The highest hidden state the spec pools (later blocks need not run for the features)."""
    layers, segments = spec.resolve(num_states)
    return max(layers + segments)


def batch_features(base: BaseModel, batch: dict[str, torch.Tensor], spec: FeatureSpec) -> torch.Tensor:
    """Router features of one tokenised batch (one forward of the frozen, un-adapted base).

    When the spec pools only early states, the forward stops before the first block it does not need.
    """
    device = next(base.model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    num_states = num_hidden_states(base)
    upto = last_state_needed(spec, num_states)
    with torch.inference_mode():
        if upto < num_states - 1:
            states = early_hidden_states(base.model, ids, mask, upto)
        else:
            states = list(base.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)
        return pool_states(states, mask, batch["segment_ids"].to(device), spec, num_states,
                           batch.get("word_counts"), batch.get("surface"), batch.get("unknown_words")).float().cpu()


def compute_features(
    base: BaseModel,
    rows: Sequence[dict[str, Any]],
    spec: FeatureSpec,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """``[N, D]`` features for ``rows``; batches are length-sorted to pad less."""
    out: torch.Tensor | None = None
    for idx in tqdm(length_batches(rows, batch_size), desc=desc, leave=False, disable=not progress,
                    file=sys.stderr, dynamic_ncols=True):
        batch = tokenize(base.tokenizer, [rows[i] for i in idx], spec.max_length, **spec.row_statistics)
        feats = batch_features(base, batch, spec)
        if out is None:
            out = torch.empty(len(rows), feats.shape[1])
        out[torch.tensor(idx)] = feats
    return out if out is not None else torch.empty(0, feature_dim(spec, base))
