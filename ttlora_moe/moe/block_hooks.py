"""Hidden states read from inside one forward of a Hugging Face transformer, by forward pre-hooks.

The input of transformer block ``j`` is hidden state ``j`` (0 = embeddings), so pre-hooks on blocks
``0..k`` see ``hidden_states[0..k]`` while the forward runs. That lets a caller act before block
``k`` runs (single-pass routing sets each sample's expert there) or stop the forward early
(features that need only the early states skip the later blocks).

Concurrency: a model is shared by every thread that serves it, so nothing about one forward may
live on the model. The pre-hooks are installed once per model and are stateless: each reads the
*listener* of the forward that is running in its own context (a :class:`contextvars.ContextVar`,
so every thread and every asyncio task sees only its own). A listener holds that forward's states
and callback; forwards without a listener pass the hooks untouched. Nothing is monkey-patched.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

from ttlora_moe.blocks import transformer_blocks

StatesCallback = Callable[[list[torch.Tensor]], None]
_TAPPED = "_ttlora_block_taps"  # marks a model whose blocks carry the (stateless) hooks
_INSTALL_LOCK = threading.Lock()


@dataclass
class _Listener:
    """What one forward wants from the hooks: the states of blocks ``0..upto`` of ``model``, then ``callback``."""

    model: nn.Module
    upto: int
    callback: StatesCallback
    states: list[torch.Tensor] = field(default_factory=list)


_LISTENER: ContextVar[_Listener | None] = ContextVar("ttlora_block_listener", default=None)


class _StopForward(Exception):
    """Raised by a hook to end a forward whose remaining blocks nobody needs."""


def _install(model: nn.Module) -> None:
    """Give every block of ``model`` a pre-hook that reports to the current context's listener (once)."""
    with _INSTALL_LOCK:
        if getattr(model, _TAPPED, False):
            return
        owner = weakref.ref(model)

        def hook_for(j: int) -> Callable[..., None]:
            def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                listener = _LISTENER.get()
                if listener is None or listener.model is not owner() or j > listener.upto:
                    return
                if j == 0:
                    listener.states.clear()  # a new forward under the same listener
                listener.states.append(args[0] if args else kwargs["hidden_states"])
                if j == listener.upto:
                    listener.callback(list(listener.states))
            return hook

        for j, block in enumerate(transformer_blocks(model)):
            block.register_forward_pre_hook(hook_for(j), with_kwargs=True)
        setattr(model, _TAPPED, True)


@contextlib.contextmanager
def on_states(model: nn.Module, upto: int, callback: StatesCallback) -> Iterator[None]:
    """Within the block, each forward of ``model`` *in this context* calls ``callback(hidden_states[0..upto])``
    before block ``upto``; forwards in other threads are not affected.

    ``upto`` must be a block index (``0 <= upto < num_hidden_layers``).
    """
    blocks = transformer_blocks(model)
    if not 0 <= upto < len(blocks):
        raise ValueError(f"upto must be a block index in [0, {len(blocks)}), got {upto}")
    _install(model)
    token = _LISTENER.set(_Listener(model, upto, callback))
    try:
        yield
    finally:
        _LISTENER.reset(token)


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
