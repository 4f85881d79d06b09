"""The routing of one forward: which expert adapts which sample, carried by a context variable.

A mixture is shared by every thread that serves it, so the expert index of a forward must never be
an attribute another thread can overwrite (the reference code's ``SharedState``, and this project's
own bug until 0.2: concurrent requests of different sizes read each other's index and failed or ran
out of memory). :class:`RoutingSlot` is a :class:`contextvars.ContextVar` owned by one mixture:
``with slot.use(routing): model(...)`` makes ``routing`` visible to the adapted linears of *this*
forward only, in this thread or asyncio task.

A :class:`Routing` reads the index once per forward (one host sync): whether the whole batch goes
to one expert (then every adapted layer runs it through that expert's merged weight). Its
``groups`` (the rows of each expert) are computed only if a layer asks for them, and so are its
samples' rows of the mixture's factor bank (:mod:`ttlora_moe.moe.factor_bank`), gathered once for
every layer of the forward.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from ttlora_moe.moe.factor_bank import GATHER_ONCE_BYTES, FactorSlice

_SLOT_IDS = itertools.count()


@dataclass(frozen=True)
class Routing:
    """Sample ``b`` of the forward goes through expert ``index[b]`` (``index`` is on the model's device).

    ``single``: the expert when all samples share one, else ``None``. ``bank``: the mixture's ``[E, N]``
    factor bank, for layers that read :meth:`factors`.
    """

    index: torch.Tensor
    single: int | None
    bank: torch.Tensor | None = None

    @classmethod
    def of(cls, index: torch.Tensor, bank: torch.Tensor | None = None) -> Routing:
        """Whether ``index`` names one expert (a routed forward's one wait for the device, unless a layer
        asks for :attr:`groups`)."""
        experts = set(index.tolist())  # one op: cheaper than aminmax at the batch sizes where it shows
        return cls(index, experts.pop() if len(experts) == 1 else None, bank)

    def factors(self, part: FactorSlice) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's expert's ``down [B, in, r]`` and ``up [B, r, out]`` for the layer at ``part``."""
        rows = self._bank_rows
        if rows is not None:
            return part.split(rows, part.offset)
        return part.split(part.columns(self.bank).index_select(0, self.index), 0)

    @functools.cached_property
    def _bank_rows(self) -> torch.Tensor | None:
        """Every sample's row of the bank (one gather for the whole forward), or ``None`` past the budget."""
        if self.bank is None:
            raise ValueError("this routing carries no factor bank")
        if len(self.index) * self.bank.shape[1] * self.bank.element_size() > GATHER_ONCE_BYTES:
            return None
        return self.bank.index_select(0, self.index)

    @functools.cached_property
    def groups(self) -> tuple[tuple[int, torch.Tensor], ...]:
        """``(expert, row indices)`` for every expert present (computed on first use)."""
        return tuple((e, (self.index == e).nonzero().flatten()) for e in torch.unique(self.index).tolist())


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
