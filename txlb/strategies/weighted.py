"""
C{weighted_round_robin}: smooth weighted round robin, as nginx does it.
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
from txlb.strategies.base import StrategyFactory, totalWeight


def smoothPick(current: dict[str, int], candidates: Sequence[IBackend]) -> IBackend:
    """
    One step of smooth weighted round robin over C{candidates}.

    Every candidate's current weight grows by its weight; the largest wins
    (the first in pool order on a tie) and gives back the total.  Over any
    run of C{sum(weights)} picks with fixed weights each candidate is chosen
    exactly C{weight} times, interleaved: weights 3:1:1 give
    C{a, b, a, c, a}, never C{a, a, a}.

    @param current: each backend's current weight, by name; updated.
    @param candidates: the backends to choose from, not empty.
    @return: the chosen candidate.
    """
    total = 0
    best = candidates[0]
    bestWeight = None
    for candidate in candidates:
        weight = candidate.weight
        value = current.get(candidate.name, 0) + weight
        current[candidate.name] = value
        total += weight
        if bestWeight is None or value > bestWeight:
            best = candidate
            bestWeight = value
    current[best.name] = bestWeight - total
    return best


@implementer(IStrategy, IMembershipAware, IChoiceExplainer)
class WeightedRoundRobin:
    """
    Smooth weighted round robin over the candidates' effective weights.

    A backend that is not a candidate keeps its current weight until it is
    one again; the rotation re-balances itself within one cycle.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Forget the state of backends that left the pool.
        """
        names = {b.name for b in backends}
        self._current = {
            name: value for name, value in self._current.items() if name in names
        }

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The next backend in the smooth weighted rotation.
        """
        return smoothPick(self._current, candidates)

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        C{chosen} had the largest current weight.
        """
        return (
            f"largest current weight (weight {chosen.weight:g} of "
            f"{totalWeight(candidates):g})"
        )


weightedRoundRobinFactory = StrategyFactory(
    name="weighted_round_robin",
    description=(
        "Smooth weighted round robin (nginx style): each backend in "
        "proportion to its weight, interleaved."
    ),
    strategyType=WeightedRoundRobin,
)
