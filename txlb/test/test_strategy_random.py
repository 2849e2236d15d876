"""
Tests for the randomized strategies: C{random} and C{power_of_two}.

Every test seeds the context's C{random.Random}, so the counts are the same
on every run; the tolerances say how far a correct strategy may be from the
exact shares, not how lucky a run must be.  With 10,000 picks a share's
standard deviation is at most 0.5 percentage points, so the 2-point
tolerance used below is four standard deviations: it would hold for almost
any seed, and a wrong distribution misses it by far.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase

from txlb.interfaces import IBackend, IStrategy
from txlb.strategies.p2c import powerOfTwoFactory
from txlb.strategies.randomized import randomFactory
from txlb.testing import countChoices, makeBackends, makeContext

PICKS = 10_000
TOLERANCE = 0.02


class ShareTestCase(SynchronousTestCase):
    """
    A test case asserting how picks were shared.
    """

    def assertShares(
        self,
        strategy: IStrategy,
        candidates: Sequence[IBackend],
        expected: Mapping[str, float],
        seed: int = 2024,
    ) -> None:
        """
        Over L{PICKS} seeded picks each backend's share is within
        L{TOLERANCE} of C{expected}.
        """
        counts = countChoices(strategy, candidates, makeContext(seed=seed), PICKS)
        self.assertEqual(sum(counts.values()), PICKS)
        for name, share in expected.items():
            self.assertLessEqual(
                abs(counts[name] / PICKS - share), TOLERANCE, (name, counts)
            )


class RandomTests(ShareTestCase):
    """
    Tests for C{random}.
    """

    def test_weightedShares(self) -> None:
        """
        Weights 5:3:2 get 50%, 30% and 20% of the picks.
        """
        backends = makeBackends(["a", "b", "c"], weights=[5, 3, 2])
        self.assertShares(
            randomFactory.build({}), backends, {"a": 0.5, "b": 0.3, "c": 0.2}
        )

    def test_equalWeights(self) -> None:
        """
        Equal weights get equal shares.
        """
        backends = makeBackends(["a", "b", "c", "d"])
        self.assertShares(
            randomFactory.build({}),
            backends,
            {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25},
        )

    def test_loadIgnored(self) -> None:
        """
        Load and latency make no difference.
        """
        backends = makeBackends(
            ["a", "b"], activeConnections=[100, 0], latencies=[5.0, 0.001]
        )
        self.assertShares(randomFactory.build({}), backends, {"a": 0.5, "b": 0.5})

    def test_seedDecides(self) -> None:
        """
        The same seed replays the same picks; another seed gives others.
        """
        backends = makeBackends(8)
        strategy = randomFactory.build({})

        def run(seed: int) -> list[str]:
            context = makeContext(seed=seed)
            return [strategy.choose(backends, context).name for _ in range(50)]

        self.assertEqual(run(1), run(1))
        self.assertNotEqual(run(1), run(2))


class PowerOfTwoTests(ShareTestCase):
    """
    Tests for C{power_of_two}.
    """

    def choose(self, candidates: Sequence[IBackend], **options: object) -> str:
        """
        One choice among C{candidates} with a fresh strategy.
        """
        strategy = powerOfTwoFactory.build(options)
        return strategy.choose(candidates, makeContext(seed=3)).name

    def test_twoDistinctDraws(self) -> None:
        """
        The two draws are distinct: of two candidates the less loaded one is
        always chosen (drawing one twice would sometimes pick the other).
        """
        backends = makeBackends(["a", "b"], activeConnections=[10, 0])
        counts = countChoices(
            powerOfTwoFactory.build({}), backends, makeContext(seed=5), 1000
        )
        self.assertEqual(counts, {"b": 1000})

    def test_equalLoadEqualShares(self) -> None:
        """
        Equally loaded, equally weighted backends get equal shares.
        """
        backends = makeBackends(
            ["a", "b", "c"], activeConnections=[2, 2, 2], latencies=[0.1] * 3
        )
        self.assertShares(
            powerOfTwoFactory.build({}), backends, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
        )

    def test_loadPerWeightEqualSharesByWeight(self) -> None:
        """
        When load is spread in proportion to weight (C{(active + 1) /
        weight} equal), new picks are shared in proportion to weight.
        """
        backends = makeBackends(
            ["a", "b", "c"],
            weights=[5, 3, 2],
            activeConnections=[4, 2, 1],
            latencies=[0.02, 0.02, 0.02],
        )
        self.assertShares(
            powerOfTwoFactory.build({}), backends, {"a": 0.5, "b": 0.3, "c": 0.2}
        )

    def test_lessLoadedWinsItsPairs(self) -> None:
        """
        The idle backend among busy ones wins every pair it is drawn in: two
        pairs out of three.
        """
        backends = makeBackends(["a", "b", "c"], activeConnections=[0, 9, 9])
        self.assertShares(
            powerOfTwoFactory.build({}),
            backends,
            {"a": 2 / 3, "b": 1 / 6, "c": 1 / 6},
        )

    def test_slowBackendAvoided(self) -> None:
        """
        At equal load, a backend slower than all others loses every pair.
        """
        backends = makeBackends(["a", "b", "c"], latencies=[0.5, 0.01, 0.01])
        self.assertShares(
            powerOfTwoFactory.build({}), backends, {"a": 0.0, "b": 0.5, "c": 0.5}
        )

    def test_loadTimesLatency(self) -> None:
        """
        Cost is C{(activeConnections + 1) * latency / weight}.
        """
        # 2 * 0.1 = 0.2 against 4 * 0.04 = 0.16.
        backends = makeBackends(
            ["a", "b"], activeConnections=[1, 3], latencies=[0.1, 0.04]
        )
        self.assertEqual(self.choose(backends), "b")
        # 4 * 0.04 / 1 = 0.16 against 2 * 0.1 / 2 = 0.1.
        backends[0].weight = 2
        self.assertEqual(self.choose(backends), "a")

    def test_weightAdjusted(self) -> None:
        """
        Load is compared per unit of weight.
        """
        # (3 + 1) / 4 = 1 against (1 + 1) / 1 = 2.
        backends = makeBackends(["a", "b"], weights=[4, 1], activeConnections=[3, 1])
        self.assertEqual(self.choose(backends), "a")

    def test_unknownLatencyComparedOnLoad(self) -> None:
        """
        A backend without a latency yet is compared with its pair on load
        alone, however fast or slow the other one is.
        """
        backends = makeBackends(
            ["a", "b"], activeConnections=[0, 1], latencies=[None, 0.0001]
        )
        self.assertEqual(self.choose(backends), "a")
        backends = makeBackends(
            ["a", "b"], activeConnections=[2, 1], latencies=[None, 10.0]
        )
        self.assertEqual(self.choose(backends), "b")

    def test_latencyIgnoredWhenDisabled(self) -> None:
        """
        With C{use_latency = false}, only load per weight counts.
        """
        backends = makeBackends(
            ["a", "b"], activeConnections=[1, 2], latencies=[10.0, 0.001]
        )
        self.assertEqual(self.choose(backends), "b")
        self.assertEqual(self.choose(backends, use_latency=False), "a")
        even = makeBackends(["a", "b"], latencies=[10.0, 0.001])
        self.assertShares(
            powerOfTwoFactory.build({"use_latency": False}),
            even,
            {"a": 0.5, "b": 0.5},
        )
