"""
Tests for the rotating strategies: C{round_robin}, C{weighted_round_robin}
and C{least_connections}.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from twisted.trial.unittest import SynchronousTestCase

from txlb.interfaces import IBackend, IStrategy
from txlb.strategies.leastconn import leastConnectionsFactory
from txlb.strategies.roundrobin import RoundRobin, roundRobinFactory
from txlb.strategies.weighted import weightedRoundRobinFactory
from txlb.testing import FakeBackend, makeBackends, makeContext


def build(factory, backends: Sequence[IBackend]) -> IStrategy:
    """
    Build a strategy from C{factory} and tell it the pool's C{backends}.
    """
    strategy = factory.build({})
    strategy.membershipChanged(tuple(backends))
    return strategy


def names(strategy: IStrategy, candidates: Sequence[IBackend], picks: int) -> list[str]:
    """
    The names of C{picks} successive choices among C{candidates}.
    """
    context = makeContext("192.0.2.1")
    return [strategy.choose(candidates, context).name for _ in range(picks)]


def longestRun(sequence: Sequence[str]) -> int:
    """
    The length of the longest run of one value in C{sequence}.
    """
    longest = run = 0
    previous = None
    for value in sequence:
        run = run + 1 if value == previous else 1
        previous = value
        longest = max(longest, run)
    return longest


class RoundRobinTests(SynchronousTestCase):
    """
    Tests for C{round_robin}.
    """

    def setUp(self) -> None:
        self.backends = makeBackends(["a", "b", "c", "d"])
        self.a, self.b, self.c, self.d = self.backends
        self.strategy = build(roundRobinFactory, self.backends)
        self.context = makeContext("192.0.2.1")

    def pick(self, *candidates: FakeBackend) -> str:
        """
        One choice among C{candidates} (all backends by default).
        """
        return self.strategy.choose(
            list(candidates or self.backends), self.context
        ).name

    def test_rotatesInPoolOrder(self) -> None:
        """
        Backends are chosen in pool order, each once per round.
        """
        self.assertEqual(names(self.strategy, self.backends, 8), list("abcdabcd"))

    def test_wrapsAroundAfterLastBackend(self) -> None:
        """
        After the last backend comes the first.
        """
        for _ in range(3):
            self.pick()
        self.assertEqual([self.pick(), self.pick()], ["d", "a"])

    def test_weightsIgnored(self) -> None:
        """
        Weights make no difference.
        """
        self.a.weight = 10
        self.assertEqual(names(self.strategy, self.backends, 4), list("abcd"))

    def test_lastChosenBecomesUnusable(self) -> None:
        """
        When the backend chosen last becomes unusable, the next pick is the
        one after it in pool order, not the one that slid into its index.
        """
        self.assertEqual([self.pick(), self.pick()], ["a", "b"])
        a, c, d = self.a, self.c, self.d
        self.assertEqual([self.pick(a, c, d) for _ in range(3)], ["c", "d", "a"])

    def test_earlierBackendBecomesUnusable(self) -> None:
        """
        When a backend before the last one chosen becomes unusable, rotation
        continues after the last one chosen.
        """
        self.assertEqual([self.pick(), self.pick()], ["a", "b"])
        self.assertEqual(self.pick(self.b, self.c, self.d), "c")

    def test_backendReturns(self) -> None:
        """
        A backend that becomes usable again takes its turn in pool order.
        """
        self.assertEqual(self.pick(self.a, self.c, self.d), "a")
        self.assertEqual(self.pick(), "b")
        self.assertEqual(self.pick(self.c, self.d), "c")
        self.assertEqual(self.pick(self.a, self.c, self.d), "d")
        self.assertEqual(self.pick(), "a")

    def test_lastChosenLeavesThePool(self) -> None:
        """
        When the backend chosen last is removed from the pool, rotation goes
        on with the backend that followed it.
        """
        self.assertEqual([self.pick(), self.pick()], ["a", "b"])
        remaining = [self.a, self.c, self.d]
        self.strategy.membershipChanged(tuple(remaining))
        self.assertEqual([self.pick(*remaining) for _ in range(3)], ["c", "d", "a"])

    def test_lastChosenAndItsPredecessorLeave(self) -> None:
        """
        When the backend chosen last leaves the pool, and then the one
        before it does too, rotation still goes on after them.
        """
        self.assertEqual([self.pick(), self.pick(), self.pick()], ["a", "b", "c"])
        self.strategy.membershipChanged((self.a, self.b, self.d))
        self.strategy.membershipChanged((self.a, self.d))
        self.assertEqual([self.pick(self.a, self.d) for _ in range(3)], list("dad"))

    def test_anchorForgottenAfterAPick(self) -> None:
        """
        What was remembered about one departed backend does not steer the
        rotation after a later one departs.
        """
        self.assertEqual([self.pick(), self.pick(), self.pick()], ["a", "b", "c"])
        self.strategy.membershipChanged((self.a, self.b, self.d))
        self.assertEqual(self.pick(self.a, self.b, self.d), "d")
        self.assertEqual(self.pick(self.a, self.b, self.d), "a")
        self.strategy.membershipChanged((self.b, self.d))
        self.assertEqual(self.pick(self.b, self.d), "b")

    def test_firstBackendLeavesAfterBeingChosen(self) -> None:
        """
        Removing the first backend right after it was chosen continues with
        the second.
        """
        self.assertEqual(self.pick(), "a")
        remaining = [self.b, self.c, self.d]
        self.strategy.membershipChanged(tuple(remaining))
        self.assertEqual([self.pick(*remaining) for _ in range(4)], list("bcdb"))

    def test_fairWhileABackendFlaps(self) -> None:
        """
        While one backend keeps going down and up, the steady ones still get
        equal shares (an index alone would favour the one after it).
        """
        counts: Counter[str] = Counter()
        for n in range(600):
            if (n // 5) % 2:
                candidates = [self.a, self.b, self.c]
            else:
                candidates = self.backends
            counts[self.pick(*candidates)] += 1
        steady = [counts["a"], counts["b"], counts["c"]]
        self.assertLessEqual(max(steady) - min(steady), 1, counts)

    def test_withoutMembership(self) -> None:
        """
        A strategy never told its pool's membership still rotates, and
        continues after the last pick when that backend becomes unusable.
        """
        strategy = RoundRobin()
        a, b, c = makeBackends(["a", "b", "c"])
        context = makeContext("192.0.2.1")
        self.assertEqual(
            [strategy.choose([a, b, c], context).name for _ in range(4)],
            list("abca"),
        )
        self.assertEqual(strategy.choose([a, b, c], context).name, "b")
        self.assertEqual(strategy.choose([a, c], context).name, "c")
        self.assertEqual(strategy.choose([a, b, c], context).name, "a")


class WeightedRoundRobinTests(SynchronousTestCase):
    """
    Tests for C{weighted_round_robin}.
    """

    def test_smoothSequence(self) -> None:
        """
        Weights 3:1:1 give a, b, a, c, a in every cycle of five, never three
        of a in a row.
        """
        backends = makeBackends(["a", "b", "c"], weights=[3, 1, 1])
        strategy = build(weightedRoundRobinFactory, backends)
        sequence = names(strategy, backends, 100)
        self.assertEqual(sequence[:15], list("abacaabacaabaca"))
        self.assertEqual(longestRun(sequence), 2)
        for start in range(0, 100, 5):
            self.assertEqual(
                Counter(sequence[start : start + 5]), {"a": 3, "b": 1, "c": 1}
            )

    def test_exactShares(self) -> None:
        """
        In every cycle of C{sum(weights)} picks each backend is chosen
        exactly C{weight} times.
        """
        backends = makeBackends(["a", "b", "c", "d"], weights=[5, 3, 2, 1])
        strategy = build(weightedRoundRobinFactory, backends)
        sequence = names(strategy, backends, 1100)
        for start in range(0, 1100, 11):
            self.assertEqual(
                Counter(sequence[start : start + 11]),
                {"a": 5, "b": 3, "c": 2, "d": 1},
            )

    def test_equalWeightsRoundRobin(self) -> None:
        """
        Equal weights give plain round robin.
        """
        backends = makeBackends(["a", "b", "c"], weights=[2, 2, 2])
        strategy = build(weightedRoundRobinFactory, backends)
        self.assertEqual(names(strategy, backends, 6), list("abcabc"))

    def test_unusableBackendsShare(self) -> None:
        """
        While a backend is not a candidate, the others share its traffic in
        proportion to their weights.
        """
        a, b, c = backends = makeBackends(["a", "b", "c"], weights=[3, 1, 1])
        strategy = build(weightedRoundRobinFactory, backends)
        names(strategy, backends, 2)
        counts = Counter(names(strategy, [a, b], 400))
        self.assertLessEqual(abs(counts["a"] - 300), 1, counts)
        self.assertLessEqual(abs(counts["b"] - 100), 1, counts)
        self.assertLessEqual(longestRun(names(strategy, [a, b], 40)), 3)

    def test_effectiveWeightFollowed(self) -> None:
        """
        A change of effective weight (slow start) shows in the next cycles.
        """
        a, b = backends = makeBackends(["a", "b"])
        strategy = build(weightedRoundRobinFactory, backends)
        self.assertEqual(Counter(names(strategy, backends, 10)), {"a": 5, "b": 5})
        a.weight = 4
        self.assertEqual(Counter(names(strategy, backends, 50)), {"a": 40, "b": 10})

    def test_removedBackendForgotten(self) -> None:
        """
        A backend removed from the pool and added again starts afresh,
        without the credit or debt it had.
        """
        a, b, c = backends = makeBackends(["a", "b", "c"])
        strategy = build(weightedRoundRobinFactory, backends)
        # Current weights now a: -2, b: 1, c: 1.
        self.assertEqual(names(strategy, backends, 1), ["a"])
        strategy.membershipChanged((c,))
        strategy.membershipChanged(tuple(backends))
        # a and b restart from 0 and c keeps its credit, so c goes next; had
        # a and b been remembered, b would.
        self.assertEqual(names(strategy, backends, 1), ["c"])


class LeastConnectionsTests(SynchronousTestCase):
    """
    Tests for C{least_connections}.
    """

    def test_fewestConnections(self) -> None:
        """
        The backend with the fewest active connections is chosen.
        """
        backends = makeBackends(["a", "b", "c"], activeConnections=[3, 1, 2])
        strategy = build(leastConnectionsFactory, backends)
        self.assertEqual(names(strategy, backends, 3), ["b", "b", "b"])

    def test_perWeight(self) -> None:
        """
        Loads are compared per unit of weight.
        """
        backends = makeBackends(
            ["a", "b", "c"], weights=[3, 1, 1], activeConnections=[6, 1, 2]
        )
        strategy = build(leastConnectionsFactory, backends)
        self.assertEqual(names(strategy, backends, 1), ["b"])
        backends[0].activeConnections = 2
        self.assertEqual(names(strategy, backends, 1), ["a"])

    def test_tiesRotate(self) -> None:
        """
        Backends tied for the fewest connections take turns.
        """
        backends = makeBackends(["a", "b", "c"])
        strategy = build(leastConnectionsFactory, backends)
        self.assertEqual(names(strategy, backends, 6), list("abcabc"))
        backends[1].activeConnections = 5
        self.assertEqual(names(strategy, backends, 4), list("acac"))

    def test_tiesShareByWeight(self) -> None:
        """
        Tied backends share by weight, smoothly: an idle pool with weights
        3:1:1 goes a, b, a, c, a.
        """
        backends = makeBackends(["a", "b", "c"], weights=[3, 1, 1])
        strategy = build(leastConnectionsFactory, backends)
        self.assertEqual(names(strategy, backends, 10), list("abacaabaca"))

    def test_tiesExactPerWeight(self) -> None:
        """
        Loads equal per unit of weight tie exactly (the comparison is done in
        integers).
        """
        backends = makeBackends(
            ["a", "b", "c"], weights=[3, 7, 1], activeConnections=[3, 7, 2]
        )
        strategy = build(leastConnectionsFactory, backends)
        self.assertEqual(Counter(names(strategy, backends, 20)), {"a": 6, "b": 14})

    def test_balancesLoad(self) -> None:
        """
        When each pick adds a connection, loads stay in proportion to the
        weights.
        """
        backends = makeBackends(["a", "b", "c"], weights=[2, 1, 1])
        strategy = build(leastConnectionsFactory, backends)
        context = makeContext("192.0.2.1")
        for _ in range(40):
            strategy.choose(backends, context).activeConnections += 1
        self.assertEqual([b.activeConnections for b in backends], [20, 10, 10])
