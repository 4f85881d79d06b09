"""The routing of one forward: which expert adapts which sample, carried by a context variable.

A mixture is shared by every thread that serves it, so the expert index of a forward must never be
an attribute another thread can overwrite (the reference code's ``SharedState``, and this project's
own bug until 0.2: concurrent requests of different sizes read each other's index and failed or ran
out of memory). :class:`RoutingSlot` is a :class:`contextvars.ContextVar` owned by one mixture:
``with slot.use(routing): model(...)`` makes ``routing`` visible to the adapted linears of *this*
forward only, in this thread or asyncio task.

A :class:`Routing` also groups the samples by expert once per forward (one host sync), so every
adapted layer can run each expert's rows through that expert's merged weight without looking at
the index again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

_SLOT_IDS = itertools.count()


@dataclass(frozen=True)
class Routing:
    """Sample ``b`` of the forward goes through expert ``index[b]`` (``index`` is on the model's device).

    ``groups``: ``(expert, row indices)`` for every expert present; ``single``: the expert when all
    samples share one (then no rows are gathered at all).
    """

    index: torch.Tensor
    groups: tuple[tuple[int, torch.Tensor], ...]
    single: int | None

    @classmethod
    def of(cls, index: torch.Tensor) -> Routing:
        """Group ``index`` by expert (the one place a routed forward waits for the device)."""
        experts = [int(e) for e in torch.unique(index).tolist()]
        if len(experts) == 1:
            return cls(index, ((experts[0], torch.arange(len(index), device=index.device)),), experts[0])
        groups = tuple((e, (index == e).nonzero().flatten()) for e in experts)
        return cls(index, groups, None)


class RoutingSlot:
    """Where the adapted layers of one mixture find the routing of the forward running in this context."""

    def __init__(self) -> None:
        self._var: ContextVar[Routing | None] = ContextVar(f"ttlora_routing_{next(_SLOT_IDS)}", default=None)

    def get(self) -> Routing | None:
        """The routing of the current forward, or ``None`` (plain base model)."""
        return self._var.get()

    def set(self, routing: Routing | None) -> None:
        """Set the routing from inside a forward that already runs under :meth:`use` (single pass)."""
        self._var.set(routing)

    @contextlib.contextmanager
    def use(self, routing: Routing | None) -> Iterator[None]:
        """Within the block, forwards in this context use ``routing``; the previous value comes back after."""
        token = self._var.set(routing)
        try:
            yield
        finally:
            self._var.reset(token)
