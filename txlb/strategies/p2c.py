"""
C{power_of_two}: the less loaded of two random backends.
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from txlb.interfaces import IBackend, IChoiceContext, IChoiceExplainer, IStrategy
from txlb.strategies.base import (
    Option,
    StrategyFactory,
    boolean,
    drawTicket,
    totalWeight,
    weightedPick,
)


@implementer(IStrategy, IChoiceExplainer)
class PowerOfTwoChoices:
    """
    Draw two distinct candidates, keep the one with the lower cost.

    Each draw is weighted (a candidate is drawn with probability proportional
    to its weight among those not drawn yet), and a candidate's cost is
    C{(activeConnections + 1) * latency / weight}: the load it would carry,
    per unit of capacity, times how slowly it has been answering.

    A candidate with no latency yet (C{None}) is taken to be exactly as fast
    as the one it is compared with, so that pair is compared on load alone;
    a new backend is therefore neither shunned nor flooded, and its first
    connections give it a measurement.  On equal cost the first draw wins,
    so a pool whose load is spread in proportion to weight gets new
    connections in proportion to weight too.

    Costs are compared by cross-multiplying, connection counts and weights
    in integers first, so equal loads compare exactly equal.

    @ivar useLatency: when C{False}, latency is ignored and only load per
        weight is compared.
    """

    def __init__(self, useLatency: bool = True) -> None:
        self.useLatency = useLatency
        # The two candidates of the last pick, for explain().
        self._drawn: tuple[IBackend, IBackend] | None = None

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The cheaper of two weighted random draws.
        """
        if len(candidates) == 1:
            return candidates[0]
        random = context.random
        total = totalWeight(candidates)
        first = weightedPick(candidates, drawTicket(random, total))
        ticket = drawTicket(random, total - first.weight)
        second = first
        for candidate in candidates:
            if candidate is first:
                continue
            second = candidate
            ticket -= candidate.weight
            if ticket < 0:
                break
        firstCost = (first.activeConnections + 1) * second.weight
        secondCost = (second.activeConnections + 1) * first.weight
        if self.useLatency:
            firstLatency = first.latency
            secondLatency = second.latency
            if firstLatency is not None and secondLatency is not None:
                firstCost *= firstLatency
                secondCost *= secondLatency
        self._drawn = (first, second)
        return second if secondCost < firstCost else first

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        The two candidates drawn and their loads.
        """
        drawn = self._drawn
        if len(candidates) == 1 or drawn is None or chosen not in drawn:
            return "only candidate"
        other = drawn[1] if drawn[0] is chosen else drawn[0]
        return f"lower cost of two random draws: {_load(chosen)} vs {_load(other)}"


def _load(backend: IBackend) -> str:
    """
    C{name in-flight/weight}, with the latency when there is one.
    """
    text = f"{backend.name} {backend.activeConnections}/{backend.weight:g}"
    if backend.latency is not None:
        text += f" @{backend.latency * 1000:.3g} ms"
    return text


powerOfTwoFactory = StrategyFactory(
    name="power_of_two",
    description=(
        "The cheaper of two random backends, by in-flight load and latency "
        "per unit of weight."
    ),
    strategyType=PowerOfTwoChoices,
    options=(Option("use_latency", "useLatency", True, boolean),),
)
