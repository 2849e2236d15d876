"""
Tests for L{txlb.testing}, the public kit for strategy plugin authors.

The conformance mixin is tested the way a kit of tests must be: it passes a
correct strategy, and each of its checks fails a strategy broken in the way
that check is for.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    IMembershipAware,
    IStrategy,
    IStrategyFactory,
)
from txlb.testing import (
    FakeBackend,
    StrategyConformanceMixin,
    countChoices,
    makeBackends,
    makeContext,
)


@implementer(IPlugin, IStrategyFactory)
@attrs.frozen
class ExampleFactory:
    """
    A strategy factory for these tests: builds C{strategyType()}, and
    rejects unknown options unless told not to.
    """

    name: str
    strategyType: Callable[[], Any]
    description: str = "A strategy for testing the conformance kit."
    checkOptions: bool = True

    def build(self, options: Mapping[str, Any]) -> Any:
        """
        A new strategy.

        @raise ValueError: any option, when checking.
        """
        if self.checkOptions and options:
            raise ValueError(f"unknown option {sorted(options)[0]!r}")
        return self.strategyType()


@implementer(IStrategy)
class Rotate:
    """
    A correct strategy: round robin by index.
    """

    def __init__(self) -> None:
        self.next = 0

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        The next candidate by index.
        """
        self.next = (self.next + 1) % len(candidates)
        return candidates[self.next]


@implementer(IStrategy)
class Outsider:
    """
    Broken: chooses a backend that is not a candidate.
    """

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        A stranger.
        """
        return FakeBackend("stranger")


@implementer(IStrategy)
class Sorter:
    """
    Broken: sorts the candidate list in place.
    """

    def choose(self, candidates: Any, context: Any) -> IBackend:
        """
        The least loaded, by sorting the caller's list.
        """
        if isinstance(candidates, list):
            candidates.sort(key=lambda b: b.activeConnections)
        return candidates[0]


@implementer(IStrategy)
class LoadCounter:
    """
    Broken: counts its picks on the backends themselves.
    """

    def choose(self, candidates: Sequence[Any], context: Any) -> IBackend:
        """
        The first candidate, one more connection on it.
        """
        candidates[0].activeConnections += 1
        return candidates[0]


@implementer(IStrategy)
class GlobalRandom:
    """
    Broken: uses the global C{random} module.
    """

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        A random candidate, from the wrong randomness.
        """
        return random.choice(candidates)


@implementer(IStrategy)
class NeedsTwo:
    """
    Broken: fails with a single candidate.
    """

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        A random candidate other than the first.
        """
        return candidates[context.random.randrange(1, len(candidates))]


@implementer(IStrategy, IMembershipAware)
class Stale:
    """
    Broken: chooses from the membership it was told, ignoring candidates.
    """

    def __init__(self) -> None:
        self.members: Sequence[IBackend] = ()

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Remember the pool.
        """
        self.members = backends

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        The first member, usable or not.
        """
        return self.members[0] if self.members else candidates[0]


@implementer(IStrategy, IMembershipAware)
class Forgetful:
    """
    Broken: claims L{IMembershipAware} without its method.
    """

    def choose(self, candidates: Sequence[IBackend], context: Any) -> IBackend:
        """
        The first candidate.
        """
        return candidates[0]


class ShortCircuitedFactory(ExampleFactory):
    """
    Broken: builds one strategy and hands it to every pool.
    """

    def build(self, options: Mapping[str, Any]) -> Any:
        """
        The same strategy every time.
        """
        return _shared


_shared = Rotate()


@implementer(IStrategyFactory)
@attrs.frozen
class NotAPlugin:
    """
    Broken: a factory that does not provide L{IPlugin}.
    """

    name: str = "not_a_plugin"
    description: str = "Never discovered."

    def build(self, options: Mapping[str, Any]) -> Any:
        """
        A correct strategy.
        """
        return Rotate()


class StrategyConformanceMixinTests(SynchronousTestCase):
    """
    L{StrategyConformanceMixin} passes a correct strategy and fails broken
    ones.
    """

    def runConformance(
        self, factory: Any, options: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """
        Run every conformance test on C{factory}.

        @return: the outcome of each test, by method name: C{"ok"},
            C{"failure"} or C{"error"}.
        """
        attributes: dict[str, Any] = {"factory": factory}
        if options is not None:
            attributes["options"] = options
        case = type(
            "Conformance", (StrategyConformanceMixin, SynchronousTestCase), attributes
        )
        names = sorted(
            n for n in dir(StrategyConformanceMixin) if n.startswith("test_")
        )
        outcomes = {}
        for name in names:
            result = TestResult()
            case(name).run(result)
            if result.failures:
                outcomes[name] = "failure"
            elif result.errors:
                outcomes[name] = "error"
            else:
                self.assertEqual(result.successes, 1, name)
                outcomes[name] = "ok"
        return outcomes

    def assertCaught(self, factory: Any, *tests: str) -> None:
        """
        The conformance tests C{tests} fail or error on C{factory}.
        """
        outcomes = self.runConformance(factory)
        for test in tests:
            self.assertNotEqual(outcomes[test], "ok", test)

    def test_correctStrategyPasses(self) -> None:
        """
        A correct strategy passes every conformance test.
        """
        outcomes = self.runConformance(ExampleFactory("rotate", Rotate))
        self.assertGreaterEqual(len(outcomes), 12)
        self.assertEqual(set(outcomes.values()), {"ok"}, outcomes)

    def test_optionsUsed(self) -> None:
        """
        The subclass's C{options} are what the strategy is built with.
        """
        outcomes = self.runConformance(
            ExampleFactory("rotate", Rotate), options={"surprise": 1}
        )
        self.assertEqual(outcomes["test_choosesACandidate"], "error")

    def test_nonCandidateCaught(self) -> None:
        """
        Choosing a backend that is not a candidate is caught.
        """
        self.assertCaught(
            ExampleFactory("outsider", Outsider),
            "test_choosesACandidate",
            "test_singleCandidate",
            "test_subsetsOfMembership",
            "test_inARealPool",
        )

    def test_mutationCaught(self) -> None:
        """
        Reordering the candidates or changing the backends is caught.
        """
        self.assertCaught(ExampleFactory("sorter", Sorter), "test_candidatesNotMutated")
        self.assertCaught(
            ExampleFactory("counter", LoadCounter), "test_candidatesNotMutated"
        )

    def test_globalRandomCaught(self) -> None:
        """
        Using the global C{random} module is caught.
        """
        self.assertCaught(
            ExampleFactory("global", GlobalRandom),
            "test_globalRandomUntouched",
            "test_deterministicWithSeededRandom",
        )

    def test_singleCandidateCaught(self) -> None:
        """
        Failing with one candidate is caught.
        """
        self.assertCaught(ExampleFactory("two", NeedsTwo), "test_singleCandidate")

    def test_staleMembershipCaught(self) -> None:
        """
        Choosing among the pool's members rather than the candidates is
        caught.
        """
        self.assertCaught(
            ExampleFactory("stale", Stale),
            "test_subsetsOfMembership",
            "test_inARealPool",
        )

    def test_brokenOptionalInterfaceCaught(self) -> None:
        """
        Claiming an optional interface without implementing it is caught.
        """
        self.assertCaught(
            ExampleFactory("forgetful", Forgetful), "test_strategyProvidesInterfaces"
        )

    def test_unknownOptionsAcceptedCaught(self) -> None:
        """
        Accepting options the strategy does not know is caught.
        """
        self.assertCaught(
            ExampleFactory("lenient", Rotate, checkOptions=False),
            "test_unknownOptionRejected",
        )

    def test_sharedStrategyCaught(self) -> None:
        """
        Handing one strategy to several pools is caught.
        """
        self.assertCaught(
            ShortCircuitedFactory("shared", Rotate), "test_buildMakesNewStrategies"
        )

    def test_notAPluginCaught(self) -> None:
        """
        A factory that does not provide L{IPlugin}, and so would never be
        discovered, is caught.
        """
        self.assertCaught(NotAPlugin(), "test_factoryProvidesInterfaces")

    def test_multilineDescriptionCaught(self) -> None:
        """
        A description of more than one line is caught.
        """
        self.assertCaught(
            ExampleFactory("wordy", Rotate, description="One.\nTwo."),
            "test_factoryProvidesInterfaces",
        )


class FakeBackendTests(SynchronousTestCase):
    """
    Tests for L{FakeBackend} and L{makeBackends}.
    """

    def test_providesIBackend(self) -> None:
        """
        A L{FakeBackend} provides L{IBackend}.
        """
        self.assertTrue(verifyObject(IBackend, FakeBackend("a")))

    def test_defaults(self) -> None:
        """
        A new fake has weight 1, no connections and no latency.
        """
        backend = FakeBackend("a")
        self.assertEqual(
            (backend.weight, backend.activeConnections, backend.latency),
            (1, 0, None),
        )

    def test_identity(self) -> None:
        """
        Two fakes with equal fields are different backends.
        """
        self.assertNotEqual(FakeBackend("a"), FakeBackend("a"))
        self.assertNotIn(FakeBackend("a"), [FakeBackend("a")])

    def test_settable(self) -> None:
        """
        A test sets a fake's state directly.
        """
        backend = FakeBackend("a")
        backend.weight = 3
        backend.activeConnections = 7
        backend.latency = 0.25
        self.assertEqual(
            (backend.weight, backend.activeConnections, backend.latency),
            (3, 7, 0.25),
        )

    def test_makeBackendsByCount(self) -> None:
        """
        Given a count, L{makeBackends} names the backends C{b0}, C{b1}, ...
        """
        self.assertEqual([b.name for b in makeBackends(3)], ["b0", "b1", "b2"])

    def test_makeBackendsWithState(self) -> None:
        """
        L{makeBackends} sets names, weights, loads and latencies in order.
        """
        a, b = makeBackends(
            ["a", "b"], weights=[2, 3], activeConnections=[4, 5], latencies=[None, 0.5]
        )
        self.assertEqual(
            [(x.name, x.weight, x.activeConnections, x.latency) for x in (a, b)],
            [("a", 2, 4, None), ("b", 3, 5, 0.5)],
        )

    def test_makeBackendsLengthMismatch(self) -> None:
        """
        A list of values of the wrong length is an error, not a truncation.
        """
        error = self.assertRaises(ValueError, makeBackends, 3, weights=[1, 2])
        self.assertIn("weight", str(error))


class MakeContextTests(SynchronousTestCase):
    """
    Tests for L{makeContext}.
    """

    def test_providesIChoiceContext(self) -> None:
        """
        The context provides L{IChoiceContext}, with an L{IReactorTime}
        clock.
        """
        context = makeContext("192.0.2.1")
        self.assertTrue(verifyObject(IChoiceContext, context))
        self.assertTrue(IReactorTime.providedBy(context.clock))

    def test_ipv4(self) -> None:
        """
        An IPv4 client host gives an L{IPv4Address}.
        """
        context = makeContext("192.0.2.1", clientPort=1234)
        self.assertEqual(context.clientAddress, IPv4Address("TCP", "192.0.2.1", 1234))
        self.assertEqual(context.clientHost, "192.0.2.1")

    def test_ipv6(self) -> None:
        """
        An IPv6 client host gives an L{IPv6Address}.
        """
        context = makeContext("2001:db8::1")
        self.assertIsInstance(context.clientAddress, IPv6Address)
        self.assertEqual(context.clientHost, "2001:db8::1")

    def test_noClient(self) -> None:
        """
        Without a client host there is no address and no host.
        """
        context = makeContext(hashKey=b"k")
        self.assertIsNone(context.clientAddress)
        self.assertIsNone(context.clientHost)
        self.assertEqual(context.hashKey, b"k")

    def test_seeded(self) -> None:
        """
        The context's C{random} is seeded with C{seed}.
        """
        self.assertEqual(makeContext(seed=5).random.random(), random.Random(5).random())
        self.assertNotEqual(
            makeContext(seed=5).random.random(), makeContext(seed=6).random.random()
        )

    def test_given(self) -> None:
        """
        A given C{random}, clock and request are used as they are.
        """
        rng = random.Random()
        clock = Clock()
        request = object()
        context = makeContext(random=rng, clock=clock, request=request)
        self.assertIs(context.random, rng)
        self.assertIs(context.clock, clock)
        self.assertIs(context.request, request)


class CountChoicesTests(SynchronousTestCase):
    """
    Tests for L{countChoices}.
    """

    def test_counts(self) -> None:
        """
        L{countChoices} counts each backend's picks by name.
        """
        backends = makeBackends(["a", "b", "c"])
        counts = countChoices(Rotate(), backends, makeContext(), 9)
        self.assertEqual(counts, {"a": 3, "b": 3, "c": 3})
