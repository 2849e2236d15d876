"""
Test helpers for strategy plugin authors (and for txlb's own tests).

A strategy's tests need backends whose load, weight and latency they set,
contexts with a seeded C{random} and a fake clock, and the checks every
strategy must pass whatever it does.  This module is public API:

    - L{FakeBackend} and L{makeBackends}: L{IBackend}s with settable state.
    - L{makeContext}: an L{IChoiceContext} for one client, seeded.
    - L{countChoices}: how often each backend is chosen over many picks.
    - L{StrategyConformanceMixin}: mix into a trial C{TestCase}, set
      C{factory} (and C{options}), and inherit the conformance tests.

For example::

    from twisted.trial.unittest import SynchronousTestCase
    from txlb.testing import StrategyConformanceMixin

    class FastestConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
        factory = fastestFactory
        options = {"explore": 0.1}
"""

from __future__ import annotations

import copy
import itertools
import random as _random
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    ILatencyObserver,
    IMembershipAware,
    IStrategy,
    IStrategyFactory,
)
from txlb.plugin import normalizeName
from txlb.pool import Backend, ChoiceContext, Pool

__all__ = [
    "FakeBackend",
    "StrategyConformanceMixin",
    "countChoices",
    "makeBackends",
    "makeContext",
]


@implementer(IBackend)
@attrs.define(eq=False)
class FakeBackend:
    """
    An L{IBackend} whose state a test sets directly.

    Compared by identity, as the pool's backends are: two fakes with the
    same fields are still two backends.

    @ivar name: the backend's name, unique within a pool.
    @ivar weight: its effective weight.
    @ivar activeConnections: connections in flight.
    @ivar latency: moving average latency in seconds, or C{None}.
    @ivar address: host, or C{None}.
    @ivar port: port, or C{None}.
    """

    name: str
    weight: int = 1
    activeConnections: int = 0
    latency: float | None = None
    address: str | None = None
    port: int | None = None


def makeBackends(
    names: int | Iterable[str],
    weights: Sequence[int] | None = None,
    activeConnections: Sequence[int] | None = None,
    latencies: Sequence[float | None] | None = None,
) -> list[FakeBackend]:
    """
    Make several L{FakeBackend}s at once.

    @param names: their names, or how many to make (named C{"b0"},
        C{"b1"}, ...).
    @param weights: their weights, in order; 1 each by default.
    @param activeConnections: their loads, in order; 0 each by default.
    @param latencies: their latencies, in order; C{None} each by default.
    @return: a new list of new backends.
    """
    if isinstance(names, int):
        names = [f"b{i}" for i in range(names)]
    backends = [FakeBackend(name) for name in names]
    for field, values in (
        ("weight", weights),
        ("activeConnections", activeConnections),
        ("latency", latencies),
    ):
        if values is not None:
            if len(values) != len(backends):
                raise ValueError(f"{len(backends)} backends but {len(values)} {field}")
            for backend, value in zip(backends, values, strict=True):
                setattr(backend, field, value)
    return backends


def makeContext(
    clientHost: str | None = None,
    hashKey: bytes | None = None,
    seed: Any = 0,
    clock: IReactorTime | None = None,
    random: _random.Random | None = None,
    request: Any = None,
    clientPort: int = 40000,
) -> IChoiceContext:
    """
    Make the context the pool would pass to C{choose}.

    A context's C{random} is stateful: reuse one context for a stream of
    picks (as one pool reuses its C{random}), or make a new one with the
    same C{seed} to replay the same stream.

    @param clientHost: the client's IP address (an IPv6 one if it contains
        C{":"}); C{None} for a client without one, such as a UNIX socket's.
    @param hashKey: the affinity key the pool would have extracted.
    @param seed: seeds a new C{random.Random} when C{random} is not given.
    @param clock: the clock; a new L{Clock} by default.
    @param random: the C{random.Random} to use instead of a seeded one.
    @param request: the L7 request, if any.
    @param clientPort: the client's port in its address.
    """
    if clientHost is None:
        address = None
    elif ":" in clientHost:
        address = IPv6Address("TCP", clientHost, clientPort)
    else:
        address = IPv4Address("TCP", clientHost, clientPort)
    return ChoiceContext(
        clientAddress=address,
        random=_random.Random(seed) if random is None else random,
        clock=Clock() if clock is None else clock,
        request=request,
        hashKey=hashKey,
    )


def countChoices(
    strategy: IStrategy,
    candidates: Sequence[IBackend],
    context: IChoiceContext,
    picks: int,
) -> Counter[str]:
    """
    Pick C{picks} times and count the choices by backend name.

    The backends' state is not changed between picks: to model load, change
    it yourself between calls.
    """
    counts: Counter[str] = Counter()
    for _ in range(picks):
        counts[strategy.choose(candidates, context).name] += 1
    return counts


def _snapshot(backends: Iterable[IBackend]) -> list[tuple[Any, ...]]:
    return [
        (b.name, b.weight, b.activeConnections, b.latency, b.address, b.port)
        for b in backends
    ]


if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase as _MixinBase
else:
    _MixinBase = object


class StrategyConformanceMixin(_MixinBase):
    """
    The tests every strategy plugin must pass, for a trial C{TestCase}.

    Mix it in before the C{TestCase} class and set C{factory}::

        class AcmeConformanceTests(StrategyConformanceMixin, SynchronousTestCase):
            factory = acmeFactory
            options = {"explore": 0.1}

    The strategy is exercised as a L{txlb.pool.Pool} would: built from
    C{options}, told its pool's membership first if it provides
    L{IMembershipAware}, then asked to choose among usable subsets of it,
    with contexts with and without a client address and an affinity key.

    @cvar factory: the L{IStrategyFactory} under test (the plugin instance).
    @cvar options: the C{algorithm_options} to build with.
    @cvar picks: how many picks each behavioural check makes.
    """

    factory: IStrategyFactory
    options: Mapping[str, Any] = {}
    picks = 200

    def buildStrategy(self, backends: Sequence[IBackend] = ()) -> IStrategy:
        """
        Build a strategy and, if it wants it, tell it the membership.

        @param backends: the pool's backends.
        """
        strategy = self.factory.build(dict(self.options))
        aware = IMembershipAware(strategy, None)
        if aware is not None:
            aware.membershipChanged(tuple(backends))
        return strategy

    def contexts(self, seed: int = 0) -> Iterable[IChoiceContext]:
        """
        An endless, reproducible variety of contexts sharing one C{random}.

        @param seed: seeds the shared C{random.Random}.
        """
        rng = _random.Random(seed)
        clock = Clock()
        variants = itertools.cycle(
            [
                {"clientHost": "192.0.2.1"},
                {"clientHost": "2001:db8::7"},
                {"clientHost": None},
                {"clientHost": "198.51.100.20", "hashKey": b"session-42"},
                {"clientHost": None, "hashKey": b"/cart"},
            ]
        )
        for n in itertools.count():
            variant = next(variants)
            if variant.get("clientHost") and n % 7 == 0:
                # Many clients, not only the five above.
                variant = {"clientHost": f"203.0.113.{n % 251}"}
            yield makeContext(random=rng, clock=clock, **variant)

    def variedBackends(self, count: int = 5) -> list[FakeBackend]:
        """
        Backends with different weights, loads and latencies (some unknown).
        """
        return makeBackends(
            [f"10.0.0.{i}:80" for i in range(1, count + 1)],
            weights=[1 + (i * 2) % 5 for i in range(count)],
            activeConnections=[(i * 3) % 7 for i in range(count)],
            latencies=[None if i % 3 == 0 else 0.01 * (i + 1) for i in range(count)],
        )

    def assertChoicesAmong(
        self,
        strategy: IStrategy,
        candidates: Sequence[IBackend],
        contexts: Iterable[IChoiceContext],
        picks: int,
    ) -> None:
        """
        Every one of C{picks} choices is one of C{candidates} (by identity).
        """
        contextIterator = iter(contexts)
        for _ in range(picks):
            chosen = strategy.choose(candidates, next(contextIterator))
            if not any(chosen is c for c in candidates):
                self.fail(
                    f"{self.factory.name} chose {chosen!r}, not one of "
                    f"{[c.name for c in candidates]}"
                )

    def test_factoryProvidesInterfaces(self) -> None:
        """
        The factory provides L{IPlugin} and L{IStrategyFactory}, with a
        usable name and a one-line description.
        """
        for interface in (IPlugin, IStrategyFactory):
            self.assertTrue(
                interface.providedBy(self.factory),
                f"{self.factory!r} does not provide {interface.__name__}, "
                f"so getPlugins would never find it",
            )
        self.assertTrue(verifyObject(IStrategyFactory, self.factory))
        self.assertIsInstance(self.factory.name, str)
        self.assertTrue(normalizeName(self.factory.name))
        self.assertIsInstance(self.factory.description, str)
        self.assertTrue(self.factory.description.strip())
        self.assertNotIn("\n", self.factory.description)

    def test_strategyProvidesInterfaces(self) -> None:
        """
        The built strategy provides L{IStrategy}, and any optional interface
        it claims it provides correctly.
        """
        strategy = self.buildStrategy(self.variedBackends())
        self.assertTrue(verifyObject(IStrategy, strategy))
        for optional in (IMembershipAware, ILatencyObserver):
            if optional.providedBy(strategy):
                self.assertTrue(verifyObject(optional, strategy))

    def test_buildMakesNewStrategies(self) -> None:
        """
        Each C{build} returns a new strategy: pools share no state.
        """
        first = self.factory.build(dict(self.options))
        second = self.factory.build(dict(self.options))
        self.assertIsNot(first, second)

    def test_buildDoesNotMutateOptions(self) -> None:
        """
        C{build} leaves the options table it was given unchanged.
        """
        options = copy.deepcopy(dict(self.options))
        self.factory.build(options)
        self.assertEqual(options, dict(self.options))

    def test_unknownOptionRejected(self) -> None:
        """
        An unknown option raises C{ValueError} naming it.
        """
        options = dict(self.options)
        options["surely_not_an_option"] = 1
        error = self.assertRaises(ValueError, self.factory.build, options)
        self.assertIn("surely_not_an_option", str(error))

    def test_choosesACandidate(self) -> None:
        """
        Every choice is one of the candidates, whatever their state.
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        self.assertChoicesAmong(strategy, backends, self.contexts(), self.picks)

    def test_candidatesNotMutated(self) -> None:
        """
        C{choose} changes neither the candidate sequence nor the backends.
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        candidates = list(backends)
        before = _snapshot(candidates)
        contexts = self.contexts()
        for _ in range(self.picks):
            strategy.choose(candidates, next(contexts))
            self.assertEqual(len(candidates), len(backends))
            self.assertTrue(
                all(c is b for c, b in zip(candidates, backends, strict=True))
            )
        self.assertEqual(_snapshot(candidates), before)

    def test_acceptsATuple(self) -> None:
        """
        Candidates may be any sequence, a tuple as well as a list.
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        self.assertChoicesAmong(strategy, tuple(backends), self.contexts(), 20)

    def test_deterministicWithSeededRandom(self) -> None:
        """
        Two strategies given the same membership, candidates and seeded
        contexts make the same choices: all randomness is the context's.
        """
        runs = []
        for _ in range(2):
            backends = self.variedBackends()
            strategy = self.buildStrategy(backends)
            contexts = self.contexts(seed=1234)
            choices = []
            for n in range(self.picks):
                candidates = backends if n % 3 else backends[1:]
                choices.append(strategy.choose(candidates, next(contexts)).name)
            runs.append(choices)
        for n, (first, second) in enumerate(zip(*runs, strict=True)):
            if first != second:
                self.fail(
                    f"pick {n} differs between two identically seeded runs: "
                    f"{first!r}, then {second!r}"
                )

    def test_globalRandomUntouched(self) -> None:
        """
        C{choose} uses the context's C{random}, never the global one.
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        contexts = self.contexts()
        state = _random.getstate()
        for _ in range(self.picks):
            strategy.choose(backends, next(contexts))
        self.assertEqual(_random.getstate(), state)

    def test_singleCandidate(self) -> None:
        """
        With one candidate, that candidate is chosen, every time.
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        contexts = self.contexts()
        for backend in backends:
            for _ in range(10):
                self.assertIs(strategy.choose([backend], next(contexts)), backend)

    def test_subsetsOfMembership(self) -> None:
        """
        When only some of the pool's backends are usable, every choice is
        among those (the others being down, draining or full).
        """
        backends = self.variedBackends()
        strategy = self.buildStrategy(backends)
        contexts = self.contexts()
        for size in range(1, len(backends)):
            for subset in itertools.combinations(backends, size):
                self.assertChoicesAmong(strategy, list(subset), contexts, 10)

    def test_membershipChanges(self) -> None:
        """
        After backends are added to and removed from the pool, choices are
        among the new candidates only.
        """
        backends = self.variedBackends(6)
        strategy = self.buildStrategy(backends[:3])
        contexts = self.contexts()
        self.assertChoicesAmong(strategy, backends[:3], contexts, 20)
        aware = IMembershipAware(strategy, None)
        for members in (backends, backends[2:], backends[4:5]):
            if aware is not None:
                aware.membershipChanged(tuple(members))
            self.assertChoicesAmong(strategy, list(members), contexts, 20)

    def test_manyCandidates(self) -> None:
        """
        A pool of 100 backends works.
        """
        backends = makeBackends(100, weights=[1 + i % 4 for i in range(100)])
        strategy = self.buildStrategy(backends)
        self.assertChoicesAmong(strategy, backends, self.contexts(), self.picks)
        self.assertChoicesAmong(strategy, backends[::7], self.contexts(), self.picks)

    def test_inARealPool(self) -> None:
        """
        In a L{txlb.pool.Pool}, with latency observed through the pool, picks
        only ever return usable backends, and the pool never has to correct
        the strategy.
        """
        servers = [
            Backend(
                name=f"10.1.0.{i}:8080",
                address=f"10.1.0.{i}",
                port=8080,
                endpoint=f"tcp:10.1.0.{i}:8080",
                configuredWeight=1 + i % 3,
                maxConnections=3,
            )
            for i in range(1, 6)
        ]
        pool = Pool(
            name="conformance",
            algorithm=self.factory.name,
            strategy=self.factory.build(dict(self.options)),
            clock=Clock(),
            random=_random.Random(7),
            backends=list(servers),
        )
        for n, server in enumerate(servers * 2):
            pool.observeLatency(server, 0.002 * (n % 4 + 1))
        servers[1].healthy = False
        errors: list[dict[str, Any]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_level") in (LogLevel.error, LogLevel.critical):
                errors.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        chosenByPool = []
        for n in range(60):
            address = IPv4Address("TCP", f"198.51.100.{n % 9}", 50000 + n)
            chosen = pool.pick(clientAddress=address, hashKey=b"k%d" % (n % 4))
            if chosen is None:
                break
            self.assertTrue(chosen.usable)
            chosenByPool.append(chosen)
            chosen.acquire()
        self.assertEqual(errors, [])
        # Four usable backends of three connections each: twelve picks,
        # then none is usable.
        self.assertEqual(len(chosenByPool), 12)
        self.assertEqual(pool.noBackend, 1)
