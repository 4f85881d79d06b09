"""Hidden states read from inside one forward of a Hugging Face transformer, by forward pre-hooks.

The input of transformer block ``j`` is hidden state ``j`` (0 = embeddings), so pre-hooks on blocks
``0..k`` see ``hidden_states[0..k]`` while the forward runs. That lets a caller act before block
``k`` runs (single-pass routing sets each sample's expert there) or stop the forward early
(features that need only the early states skip the later blocks). Nothing is monkey-patched: the
hooks live only inside the ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ttlora_moe.blocks import transformer_blocks

StatesCallback = Callable[[list[torch.Tensor]], None]


class _StopForward(Exception):
    """Raised by a hook to end a forward whose remaining blocks nobody needs."""


@contextlib.contextmanager
def on_states(model: nn.Module, upto: int, callback: StatesCallback) -> Iterator[None]:
    """Within the block, each forward of ``model`` calls ``callback(hidden_states[0..upto])`` before block ``upto``.

    ``upto`` must be a block index (``0 <= upto < num_hidden_layers``).
    """
    blocks = transformer_blocks(model)
    if not 0 <= upto < len(blocks):
        raise ValueError(f"upto must be a block index in [0, {len(blocks)}), got {upto}")
    states: list[torch.Tensor] = []

    def hook_for(j: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if j == 0:
                states.clear()  # a new forward
            states.append(args[0] if args else kwargs["hidden_states"])
            if j == upto:
                callback(list(states))
        return hook

    handles = [blocks[j].register_forward_pre_hook(hook_for(j), with_kwargs=True) for j in range(upto + 1)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def early_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        upto: int) -> list[torch.Tensor]:
    """``hidden_states[0..upto]`` of one forward that stops before block ``upto`` runs."""
    got: list[torch.Tensor] = []

    def stop(states: list[torch.Tensor]) -> None:
        got.extend(states)
        raise _StopForward

    with on_states(model, upto, stop), contextlib.suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=attention_mask)
    return got
