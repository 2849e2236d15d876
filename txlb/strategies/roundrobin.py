"""
C{round_robin}: each usable backend in turn, in pool order.
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    IChoiceExplainer,
    IMembershipAware,
    IStrategy,
)
from txlb.strategies.base import StrategyFactory


@implementer(IStrategy, IMembershipAware, IChoiceExplainer)
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
        # Once _last has left the pool: the name of the nearest backend
        # before it that stayed (None for none), valid while _anchorOwner is
        # _last.
        self._anchor: str | None = None
        self._anchorOwner: IBackend | None = None
        self._positions: dict[str, int] = {}
        self._order: tuple[str, ...] = ()

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Learn the pool order, to place candidates relative to the last pick.
        """
        order = tuple(b.name for b in backends)
        positions = {name: i for i, name in enumerate(order)}
        last = self._last
        if last is not None and last.name not in positions:
            # Continue after the closest surviving predecessor of the last
            # pick (or of the one found before, if that left too).
            anchor = self._anchor if self._anchorOwner is last else last.name
            if anchor is not None and anchor not in positions:
                old = self._positions.get(anchor, 0)
                anchor = None
                for previous in self._order[:old]:
                    if previous in positions:
                        anchor = previous
            self._anchor = anchor
            self._anchorOwner = last
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
        return chosen

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        Where C{chosen} stands in the rotation of the last pick.
        """
        return f"next in rotation ({self._index + 1} of {len(candidates)})"

    def _afterLast(self, candidates: Sequence[IBackend]) -> int:
        """
        Where to continue when the candidates changed since the last pick.
        """
        last = self._last
        if last is None:
            return 0
        for index, candidate in enumerate(candidates):
            if candidate is last:
                return (index + 1) % len(candidates)
        positions = self._positions
        lastPosition = positions.get(last.name)
        if lastPosition is None:
            anchor = self._anchor if self._anchorOwner is last else None
            lastPosition = -1 if anchor is None else positions.get(anchor, -1)
        for index, candidate in enumerate(candidates):
            position = positions.get(candidate.name)
            if position is None:
                # Not told about this pool's membership: the candidate now
                # at the last pick's index is the one that followed it.
                return self._index if 0 <= self._index < len(candidates) else 0
            if position > lastPosition:
                return index
        return 0


roundRobinFactory = StrategyFactory(
    name="round_robin",
    description="Each usable backend in turn, in pool order; weights ignored.",
    strategyType=RoundRobin,
)
