"""
Tests for what every built-in strategy shares: conformance to the strategy
contract (through L{txlb.testing.StrategyConformanceMixin}), option checking,
and the helpers of L{txlb.strategies.base}.

Each strategy's own behaviour is tested in C{test_strategy_*.py}.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txlb.interfaces import IStrategy, IStrategyFactory
from txlb.strategies.base import (
    Option,
    StrategyFactory,
    affinityKey,
    boolean,
    checkOptions,
    integerAtLeast,
    isCandidate,
    numberAbove,
    rehash,
    stableHash,
    totalWeight,
    weightedPick,
)
from txlb.strategies.hashing import consistentHashFactory, ipHashingFactory
from txlb.strategies.leastconn import leastConnectionsFactory
from txlb.strategies.maglev import maglevFactory
from txlb.strategies.p2c import powerOfTwoFactory
from txlb.strategies.randomized import randomFactory
from txlb.strategies.roundrobin import roundRobinFactory
from txlb.strategies.weighted import weightedRoundRobinFactory
from txlb.testing import StrategyConformanceMixin, makeBackends, makeContext

BUILTINS = {
    "round_robin": roundRobinFactory,
    "weighted_round_robin": weightedRoundRobinFactory,
    "least_connections": leastConnectionsFactory,
    "random": randomFactory,
    "power_of_two": powerOfTwoFactory,
    "ip_hashing": ipHashingFactory,
    "consistent_hash": consistentHashFactory,
    "maglev": maglevFactory,
}

# Each factory's options, with an acceptable value and bad ones.
OPTIONS = {
    "round_robin": {},
    "weighted_round_robin": {},
    "least_connections": {},
    "random": {},
    "power_of_two": {"use_latency": (False, [0, 1, "yes", None])},
    "ip_hashing": {},
    "consistent_hash": {
        "virtual_nodes": (40, [0, -1, 1.5, "160", True, None]),
        "bounded_load": (1.25, [1, 1.0, 0.5, "1.25", True, None]),
    },
    "maglev": {"table_size": (1009, [1000, 2, 1, 65537.0, "65537", True, 1_000_033])},
}


class RoundRobinConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{round_robin} conforms to the strategy contract.
    """

    factory = roundRobinFactory


class WeightedRoundRobinConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{weighted_round_robin} conforms to the strategy contract.
    """

    factory = weightedRoundRobinFactory


class LeastConnectionsConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{least_connections} conforms to the strategy contract.
    """

    factory = leastConnectionsFactory


class RandomConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{random} conforms to the strategy contract.
    """

    factory = randomFactory


class PowerOfTwoConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{power_of_two} conforms to the strategy contract.
    """

    factory = powerOfTwoFactory


class PowerOfTwoWithoutLatencyConformanceTests(
    StrategyConformanceMixin, SynchronousTestCase
):
    """
    C{power_of_two} with C{use_latency = false} conforms to the contract.
    """

    factory = powerOfTwoFactory
    options = {"use_latency": False}


class IPHashingConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{ip_hashing} conforms to the strategy contract.
    """

    factory = ipHashingFactory


class ConsistentHashConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{consistent_hash} conforms to the strategy contract.
    """

    factory = consistentHashFactory


class BoundedConsistentHashConformanceTests(
    StrategyConformanceMixin, SynchronousTestCase
):
    """
    C{consistent_hash} with bounded load conforms to the strategy contract.
    """

    factory = consistentHashFactory
    options = {"virtual_nodes": 50, "bounded_load": 1.25}


class MaglevConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{maglev} conforms to the strategy contract.
    """

    factory = maglevFactory


class SmallMaglevConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
    """
    C{maglev} with a small table conforms to the strategy contract.
    """

    factory = maglevFactory
    options = {"table_size": 1009}


class BuiltinFactoryTests(SynchronousTestCase):
    """
    The built-in factories' names, descriptions and options.
    """

    def test_names(self) -> None:
        """
        Each built-in factory has the name lb.toml uses for it.
        """
        for name, factory in BUILTINS.items():
            self.assertEqual(factory.name, name)

    def test_providesInterfaces(self) -> None:
        """
        Each built-in factory provides L{IPlugin} and L{IStrategyFactory},
        and builds an L{IStrategy} with no options.
        """
        for factory in BUILTINS.values():
            self.assertTrue(verifyObject(IPlugin, factory))
            self.assertTrue(verifyObject(IStrategyFactory, factory))
            self.assertTrue(verifyObject(IStrategy, factory.build({})))

    def test_documentedOptionsAccepted(self) -> None:
        """
        Each option a factory declares is accepted with a good value, and
        reaches the strategy.
        """
        for name, factory in BUILTINS.items():
            declared = {option.name for option in factory.options}
            self.assertEqual(declared, set(OPTIONS[name]), name)
            for option in factory.options:
                good, _ = OPTIONS[name][option.name]
                strategy = factory.build({option.name: good})
                self.assertEqual(getattr(strategy, option.argument), good)

    def test_badOptionValuesRejected(self) -> None:
        """
        A bad value for an option raises C{ValueError} naming the option and
        saying what it must be.
        """
        for name, factory in BUILTINS.items():
            for optionName, (_, bads) in OPTIONS[name].items():
                for bad in bads:
                    error = self.assertRaises(
                        ValueError, factory.build, {optionName: bad}
                    )
                    self.assertIn(repr(optionName), str(error))
                    self.assertIn(" must be ", str(error))

    def test_unknownOptionListsKnownOnes(self) -> None:
        """
        An unknown option raises C{ValueError} naming it and every option the
        strategy knows.
        """
        for name, factory in BUILTINS.items():
            error = self.assertRaises(ValueError, factory.build, {"wieght": 1})
            message = str(error)
            self.assertIn("'wieght'", message)
            for optionName in OPTIONS[name]:
                self.assertIn(optionName, message)
            if not OPTIONS[name]:
                self.assertIn("known options: none", message)

    def test_optionsNotATable(self) -> None:
        """
        Options that are not a mapping are rejected with C{ValueError}.
        """
        error = self.assertRaises(ValueError, maglevFactory.build, [("a", 1)])
        self.assertIn("must be a table", str(error))

    def test_defaults(self) -> None:
        """
        The documented defaults: 160 virtual nodes per unit of weight and no
        load bound for C{consistent_hash}, 65537 entries for C{maglev},
        latency used by C{power_of_two}.
        """
        ring = consistentHashFactory.build({})
        self.assertEqual((ring.virtualNodes, ring.boundedLoad), (160, None))
        self.assertEqual(maglevFactory.build({}).tableSize, 65537)
        self.assertTrue(powerOfTwoFactory.build({}).useLatency)


class CheckOptionsTests(SynchronousTestCase):
    """
    Tests for L{checkOptions} and the option checks.
    """

    accepted = (
        Option("virtual_nodes", "virtualNodes", 160, integerAtLeast(1)),
        Option("enabled", "enabled", True, boolean),
    )

    def test_defaultsFilledIn(self) -> None:
        """
        Absent options get their defaults, under their argument names.
        """
        self.assertEqual(
            checkOptions(self.accepted, {}), {"virtualNodes": 160, "enabled": True}
        )

    def test_valuesChecked(self) -> None:
        """
        Present options get the value their check returns.
        """
        self.assertEqual(
            checkOptions(self.accepted, {"virtual_nodes": 3, "enabled": False}),
            {"virtualNodes": 3, "enabled": False},
        )

    def test_messages(self) -> None:
        """
        Messages name the option, what it must be and what it was.
        """
        error = self.assertRaises(
            ValueError, checkOptions, self.accepted, {"virtual_nodes": 0}
        )
        self.assertEqual(
            str(error), "option 'virtual_nodes' must be an integer >= 1, not 0"
        )
        error = self.assertRaises(ValueError, checkOptions, self.accepted, {"x": 0})
        self.assertEqual(
            str(error), "unknown option 'x'; known options: enabled, virtual_nodes"
        )

    def test_didYouMean(self) -> None:
        """
        An unknown option close to a known one is suggested.
        """
        error = self.assertRaises(
            ValueError, checkOptions, self.accepted, {"virtual_node": 3}
        )
        self.assertEqual(
            str(error),
            "unknown option 'virtual_node' (did you mean 'virtual_nodes'?); "
            "known options: enabled, virtual_nodes",
        )

    def test_numberAbove(self) -> None:
        """
        L{numberAbove} accepts integers and floats strictly above its bound,
        as floats, and nothing else.
        """
        check = numberAbove(1.0)
        self.assertEqual(check(2), 2.0)
        self.assertIsInstance(check(2), float)
        self.assertEqual(check(1.5), 1.5)
        for bad in (1, 1.0, 0, True, "2", None):
            self.assertRaises(ValueError, check, bad)

    def test_factoryBuildsWithArguments(self) -> None:
        """
        L{StrategyFactory.build} calls C{strategyType} with the checked
        options as keyword arguments.
        """
        calls = []
        factory = StrategyFactory(
            name="spy",
            description="Records its arguments.",
            strategyType=lambda **kw: calls.append(kw) or object(),
            options=self.accepted,
        )
        factory.build({"enabled": False})
        self.assertEqual(calls, [{"virtualNodes": 160, "enabled": False}])


class StableHashTests(SynchronousTestCase):
    """
    Tests for L{stableHash} and L{rehash}.
    """

    def test_knownValues(self) -> None:
        """
        L{stableHash} gives the same values in every process and release
        (unlike the salted built-in C{hash()}): changing them would move
        every client of every hashing strategy on upgrade.
        """
        self.assertEqual(stableHash(b"192.0.2.1"), 0x11288B28CEFA74C8)
        self.assertEqual(stableHash(b"192.0.2.1", b"txlb-ring"), 0x1E8F00E56F9B9D2D)

    def test_personalized(self) -> None:
        """
        A personalization string derives an unrelated hash.
        """
        self.assertNotEqual(stableHash(b"x"), stableHash(b"x", b"other"))

    def test_rehash(self) -> None:
        """
        L{rehash} is deterministic, stays within 64 bits, and does not
        cycle quickly.
        """
        seen = set()
        value = 1
        for _ in range(1000):
            value = rehash(value)
            self.assertTrue(0 <= value < 2**64)
            seen.add(value)
        self.assertEqual(len(seen), 1000)
        self.assertEqual(rehash(1), rehash(1))


class HelperTests(SynchronousTestCase):
    """
    Tests for the small helpers the strategies share.
    """

    def test_affinityKeyPrefersHost(self) -> None:
        """
        For source-IP hashing the client host is the key, the hash key only
        when there is no host.
        """
        self.assertEqual(
            affinityKey(makeContext("192.0.2.9", b"k"), preferHost=True),
            b"192.0.2.9",
        )
        self.assertEqual(affinityKey(makeContext(None, b"k"), preferHost=True), b"k")
        self.assertIsNone(affinityKey(makeContext(None, None), preferHost=True))

    def test_affinityKeyPrefersHashKey(self) -> None:
        """
        For the other hashing strategies the pool's hash key is the key, the
        client host only when there is none.
        """
        self.assertEqual(
            affinityKey(makeContext("192.0.2.9", b"k"), preferHost=False), b"k"
        )
        self.assertEqual(
            affinityKey(makeContext("192.0.2.9", None), preferHost=False),
            b"192.0.2.9",
        )
        self.assertIsNone(affinityKey(makeContext(None, None), preferHost=False))

    def test_isCandidate(self) -> None:
        """
        L{isCandidate} is an identity test, whatever the position given.
        """
        a, b, c = makeBackends(3)
        self.assertTrue(isCandidate([a, b, c], 1, b))
        self.assertTrue(isCandidate([a, c], 2, c))
        self.assertTrue(isCandidate([c], 2, c))
        self.assertFalse(isCandidate([a, c], 1, b))
        twin = makeBackends(["b1"])[0]
        self.assertFalse(isCandidate([a, twin, c], 1, b))

    def test_weightedPick(self) -> None:
        """
        L{weightedPick} gives each candidate as many tickets as its weight,
        in order.
        """
        backends = makeBackends(3, weights=[3, 1, 2])
        self.assertEqual(totalWeight(backends), 6)
        owners = [weightedPick(backends, t).name for t in range(6)]
        self.assertEqual(owners, ["b0", "b0", "b0", "b1", "b2", "b2"])
