"""
C{round_robin}: each usable backend in turn, in pool order.
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from txlb.interfaces import IBackend, IChoiceContext, IMembershipAware, IStrategy
from txlb.strategies.base import StrategyFactory


@implementer(IStrategy, IMembershipAware)
class RoundRobin:
    """
    Rotate through the candidates in pool order, ignoring weights.

    The position is the backend last chosen, not an index: when a backend
    becomes unusable (or usable again) between picks, the next pick is still
    the first candidate after the last one chosen in pool order, so nobody
    is skipped or served twice in a row.
    """

    def __init__(self) -> None:
        self._last: IBackend | None = None
        # Index of _last among the candidates of the last pick.
        self._index = -1
        # Pool position of _last; after _last leaves the pool, the position
        # of the nearest backend before it that stayed.
        self._lastPosition = -1
        self._positions: dict[str, int] = {}
        self._order: tuple[str, ...] = ()

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Learn the pool order, to place candidates relative to the last pick.
        """
        order = tuple(b.name for b in backends)
        positions = {name: i for i, name in enumerate(order)}
        if self._last is not None:
            name = self._last.name
            if name in positions:
                self._lastPosition = positions[name]
            elif name in self._positions:
                # Continue after the closest surviving predecessor.
                self._lastPosition = -1
                for previous in self._order[: self._positions[name]]:
                    if previous in positions:
                        self._lastPosition = positions[previous]
        self._order = order
        self._positions = positions

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The first candidate after the last one chosen, wrapping around.
        """
        index = self._index
        if index < len(candidates) and candidates[index] is self._last:
            index += 1
            if index == len(candidates):
                index = 0
        else:
            index = self._afterLast(candidates)
        chosen = candidates[index]
        self._index = index
        self._last = chosen
        self._lastPosition = self._positions.get(chosen.name, index)
        return chosen

    def _afterLast(self, candidates: Sequence[IBackend]) -> int:
        """
        Where to continue when the candidates changed since the last pick.
        """
        positions = self._positions
        for index, candidate in enumerate(candidates):
            if candidate is self._last:
                return (index + 1) % len(candidates)
        for index, candidate in enumerate(candidates):
            position = positions.get(candidate.name)
            if position is None:
                # Not told about this pool's membership: the candidate now
                # at the last pick's index is the one that followed it.
                return self._index if 0 <= self._index < len(candidates) else 0
            if position > self._lastPosition:
                return index
        return 0


roundRobinFactory = StrategyFactory(
    name="round_robin",
    description="Each usable backend in turn, in pool order; weights ignored.",
    strategyType=RoundRobin,
)
