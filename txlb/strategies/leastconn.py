"""
C{least_connections}: the backend with the fewest connections per weight.
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
class LeastConnections:
    """
    Pick the candidate with the lowest C{activeConnections / weight}.

    Loads are compared by cross-multiplying, in integers, so equal loads are
    exactly equal.  Candidates tied for the lowest load share the pick by
    smooth weighted round robin (as nginx's C{least_conn} does): an idle pool
    rotates through its backends in proportion to their weights instead of
    always sending the next connection to the first one.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Forget the rotation state of backends that left the pool.
        """
        names = {b.name for b in backends}
        self._current = {
            name: value for name, value in self._current.items() if name in names
        }

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The least loaded candidate; ties rotate.
        """
        best = candidates[0]
        load = best.activeConnections
        weight = best.weight
        tied = 0
        for candidate in candidates:
            left = candidate.activeConnections * weight
            right = load * candidate.weight
            if left < right:
                best = candidate
                load = candidate.activeConnections
                weight = candidate.weight
                tied = 1
            elif left == right:
                tied += 1
        if tied == 1:
            return best
        # Smooth weighted round robin among the tied, without building a
        # list of them (see txlb.strategies.weighted.smoothPick).
        current = self._current
        total = 0
        bestValue = None
        for candidate in candidates:
            candidateWeight = candidate.weight
            if candidate.activeConnections * weight != load * candidateWeight:
                continue
            value = current.get(candidate.name, 0) + candidateWeight
            current[candidate.name] = value
            total += candidateWeight
            if bestValue is None or value > bestValue:
                best = candidate
                bestValue = value
        current[best.name] = bestValue - total
        return best

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        C{chosen}'s load per weight, and whether others had the same.
        """
        load = chosen.activeConnections
        weight = chosen.weight
        tied = sum(
            1 for c in candidates if c.activeConnections * weight == load * c.weight
        )
        reason = f"fewest in flight per weight ({load}/{weight:g})"
        if tied > 1:
            reason += f", rotating among {tied} tied"
        return reason


leastConnectionsFactory = StrategyFactory(
    name="least_connections",
    description=(
        "The backend with the fewest active connections per unit of weight; "
        "ties rotate by weight."
    ),
    strategyType=LeastConnections,
)
