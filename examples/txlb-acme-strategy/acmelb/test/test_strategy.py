"""
Tests for L{acmelb.strategy}.
"""

from twisted.trial.unittest import SynchronousTestCase

from acmelb.strategy import FastestFactory
from txlb.plugin import findStrategy
from txlb.testing import (
    StrategyConformanceMixin,
    countChoices,
    makeBackends,
    makeContext,
)


class FastestConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{acme_fastest} keeps the strategy contract.
    """

    factory = FastestFactory()
    options = {"explore": 0.1}


class FastestTests(SynchronousTestCase):
    """
    Tests for C{acme_fastest}.
    """

    def test_fastest(self):
        """
        Without exploring, the backend with the lowest latency is chosen.
        """
        backends = makeBackends(["a", "b", "c"], latencies=[0.3, 0.1, 0.2])
        strategy = FastestFactory().build({"explore": 0})
        counts = countChoices(strategy, backends, makeContext(), 100)
        self.assertEqual(counts, {"b": 100})

    def test_unmeasuredFirst(self):
        """
        A backend without a latency yet is chosen first, to measure it.
        """
        backends = makeBackends(["a", "b"], latencies=[0.001, None])
        strategy = FastestFactory().build({"explore": 0})
        self.assertEqual(strategy.choose(backends, makeContext()).name, "b")

    def test_explores(self):
        """
        With C{explore = 0.5}, about a third of picks go to each of two slow
        backends out of three (half explore, a third of that each).
        """
        backends = makeBackends(["a", "b", "c"], latencies=[0.3, 0.1, 0.2])
        strategy = FastestFactory().build({"explore": 0.5})
        counts = countChoices(strategy, backends, makeContext(seed=1), 6000)
        self.assertLess(abs(counts["a"] / 6000 - 1 / 6), 0.02)
        self.assertLess(abs(counts["c"] / 6000 - 1 / 6), 0.02)

    def test_badOptions(self):
        """
        Unknown options and bad values are rejected, naming the option.
        """
        factory = FastestFactory()
        for options in ({"explor": 0.1}, {"explore": 2}, {"explore": "lots"}):
            error = self.assertRaises(ValueError, factory.build, options)
            self.assertIn(min(options), str(error))

    def test_discoverable(self):
        """
        Once installed, txlb finds the plugin by name.
        """
        self.assertIsInstance(findStrategy("acme_fastest"), FastestFactory)
