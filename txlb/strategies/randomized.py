"""
C{random}: a random backend, in proportion to weight.

(This module is not called C{random.py}, which would shadow the standard
library's module for everything beside it.)
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from txlb.interfaces import IBackend, IChoiceContext, IChoiceExplainer, IStrategy
from txlb.strategies.base import StrategyFactory, drawTicket, totalWeight, weightedPick


@implementer(IStrategy, IChoiceExplainer)
class WeightedRandom:
    """
    Pick a candidate at random with probability C{weight / sum(weights)}.

    The only randomness used is the context's C{random}, so a seeded pool
    makes the same picks every run.
    """

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        A weighted random candidate.
        """
        if len(candidates) == 1:
            return candidates[0]
        return weightedPick(
            candidates, drawTicket(context.random, totalWeight(candidates))
        )

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        C{chosen} won a draw weighted by its share.
        """
        return (
            f"weighted random draw (weight {chosen.weight:g} of "
            f"{totalWeight(candidates):g})"
        )


randomFactory = StrategyFactory(
    name="random",
    description="A random backend, in proportion to its weight.",
    strategyType=WeightedRandom,
)
