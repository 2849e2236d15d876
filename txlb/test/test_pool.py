"""
Tests for L{txlb.pool}: backend counters and usability, and picks.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    ILatencyObserver,
    IMembershipAware,
    IStrategy,
)
from txlb.pool import AdminState, Backend, ChoiceContext, Pool


def backend(name: str, **kw: object) -> Backend:
    """
    A TCP backend called C{name}.
    """
    return Backend(name=name, address="127.0.0.1", port=1, endpoint="tcp:h:1", **kw)


@implementer(IStrategy, IMembershipAware, ILatencyObserver)
class Recording:
    """
    Picks the last candidate and records what it is told.
    """

    def __init__(self) -> None:
        self.memberships: list[tuple[str, ...]] = []
        self.latencies: list[tuple[str, float]] = []
        self.contexts: list[object] = []

    def choose(self, candidates, context):
        self.contexts.append(context)
        return candidates[-1]

    def membershipChanged(self, backends):
        self.memberships.append(tuple(b.name for b in backends))

    def latencyObserved(self, backend, seconds):
        self.latencies.append((backend.name, seconds))


@implementer(IStrategy)
class Broken:
    """
    Raises, or returns something that is not a candidate.
    """

    def __init__(self, result: object = None) -> None:
        self.result = result

    def choose(self, candidates, context):
        if self.result is None:
            raise RuntimeError("plugin bug")
        return self.result


class BackendTests(SynchronousTestCase):
    """
    L{Backend} counters and usability.
    """

    def test_providesIBackend(self):
        """
        A L{Backend} provides L{IBackend}.
        """
        self.assertTrue(verifyObject(IBackend, backend("a")))

    def test_acquireRelease(self):
        """
        Acquire counts in flight and in total; release only in flight.
        """
        b = backend("a")
        b.acquire()
        b.acquire()
        b.release()
        self.assertEqual((b.activeConnections, b.totalConnections), (1, 2))

    def test_releaseBelowZeroRaises(self):
        """
        Releasing more than acquired is a bug, reported, not hidden.
        """
        b = backend("a")
        self.assertRaises(RuntimeError, b.release)
        self.assertEqual(b.activeConnections, 0)

    def test_usable(self):
        """
        Usable means healthy, active and below max_connections.
        """
        b = backend("a", maxConnections=1)
        self.assertTrue(b.usable)
        b.acquire()
        self.assertFalse(b.usable)
        b.release()
        b.healthy = False
        self.assertFalse(b.usable)
        b.healthy = True
        for state in (AdminState.draining, AdminState.disabled):
            b.state = state
            self.assertFalse(b.usable)

    def test_latencyMovingAverage(self):
        """
        The first sample sets the latency; later ones move it by 0.3 of the
        difference.  A success resets consecutive failures.
        """
        b = backend("a")
        b.recordFailure("refused")
        b.recordFailure("timeout")
        self.assertEqual((b.failures, b.consecutiveFailures), (2, 2))
        self.assertEqual(b.lastFailureReason, "timeout")
        b.recordSuccess(1.0)
        self.assertEqual(b.latency, 1.0)
        b.recordSuccess(2.0)
        self.assertAlmostEqual(b.latency, 1.3)
        self.assertEqual((b.failures, b.consecutiveFailures), (2, 0))


class PoolTests(SynchronousTestCase):
    """
    L{Pool} picks among usable backends through its strategy.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.strategy = Recording()
        self.a, self.b, self.c = backend("a"), backend("b"), backend("c")
        self.pool = Pool(
            name="p", algorithm="recording", strategy=self.strategy, clock=self.clock,
            backends=[self.a, self.b, self.c],
        )

    def test_membershipToldAtStartAndOnChange(self):
        """
        The strategy hears the membership once at start and on every add or
        remove, never on a pick.
        """
        self.pool.pick()
        self.pool.addBackend(backend("d"))
        self.pool.removeBackend("a")
        self.assertEqual(
            self.strategy.memberships,
            [("a", "b", "c"), ("a", "b", "c", "d"), ("b", "c", "d")],
        )

    def test_duplicateAndMissing(self):
        """
        Adding a duplicate name or removing an unknown one raises.
        """
        self.assertRaises(ValueError, self.pool.addBackend, backend("a"))
        self.assertRaises(KeyError, self.pool.removeBackend, "zz")

    def test_pickSeesOnlyUsable(self):
        """
        Unusable and excluded backends are not offered to the strategy.
        """
        self.c.healthy = False
        self.assertIs(self.pool.pick(), self.b)
        self.assertIs(self.pool.pick(exclude=[self.b]), self.a)

    def test_noneUsableCounted(self):
        """
        With no usable backend, pick returns C{None} and counts it.
        """
        for b in (self.a, self.b, self.c):
            b.state = AdminState.draining
        self.assertIsNone(self.pool.pick())
        self.assertEqual(self.pool.noBackend, 1)

    def test_context(self):
        """
        The strategy gets the client address, key, pool randomness and clock.
        """
        from twisted.internet.address import IPv4Address

        addr = IPv4Address("TCP", "10.1.2.3", 5555)
        self.pool.pick(clientAddress=addr, hashKey=b"k")
        (context,) = self.strategy.contexts
        self.assertTrue(verifyObject(IChoiceContext, context))
        self.assertEqual(context.clientHost, "10.1.2.3")
        self.assertEqual(context.hashKey, b"k")
        self.assertIs(context.random, self.pool.random)
        self.assertIs(context.clock, self.clock)
        self.assertIsNone(ChoiceContext(None, self.pool.random, self.clock).clientHost)

    def test_brokenStrategyFallsBack(self):
        """
        A strategy that raises, or returns a non-candidate, is logged and the
        first candidate is used.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.pool.setStrategy("broken", Broken())
        self.assertIs(self.pool.pick(), self.a)
        self.pool.setStrategy("broken", Broken(result=backend("stranger")))
        self.assertIs(self.pool.pick(), self.a)
        self.assertEqual(len(events), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_observeLatency(self):
        """
        observeLatency records on the backend and tells an observer strategy.
        """
        self.pool.observeLatency(self.b, 0.25)
        self.assertEqual(self.b.latency, 0.25)
        self.assertEqual(self.strategy.latencies, [("b", 0.25)])

    def test_brokenObserverLogged(self):
        """
        An observer strategy that raises is logged, for a connect's latency
        and for an L7 response's alike, and the observation is still
        recorded on the backend.
        """
        def broken(backend, seconds):
            raise RuntimeError("broken observer")

        self.strategy.latencyObserved = broken
        self.pool.observeLatency(self.b, 0.25)
        self.pool.observeResponse(self.b, 200, 0.5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(self.b.responses[2], 1)
        self.assertIsNotNone(self.b.latency)


class _Breaker:
    """
    A circuit breaker whose answer the test sets.
    """

    def __init__(self) -> None:
        self.open = False

    def allows(self) -> bool:
        return not self.open

    def attempt(self) -> None:
        pass

    def succeeded(self) -> None:
        pass

    def failed(self) -> None:
        pass


class UsableCacheTests(SynchronousTestCase):
    """
    A pool keeps its usable backends between picks; whatever changes which
    backends are usable is seen by the next pick.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.offered: list[tuple[str, ...]] = []
        self.a, self.b, self.c = backend("a"), backend("b"), backend("c")
        self.pool = Pool(
            name="p", algorithm="recording", strategy=self, clock=self.clock,
            backends=[self.a, self.b, self.c],
        )

    def choose(self, candidates, context):
        """
        Record the candidates, choose the first.
        """
        self.offered.append(tuple(b.name for b in candidates))
        return candidates[0]

    def names(self) -> tuple[str, ...]:
        """
        @return: the names of the backends a pick offers the strategy now.
        """
        self.pool.pick()
        return self.offered[-1]

    def test_eachChangeSeen(self):
        """
        Health, state, ejection and membership changes made between picks
        change the next pick's candidates.
        """
        changes = [
            (lambda: setattr(self.a, "healthy", False), ("b", "c")),
            (lambda: self.a.setHealthy(True), ("a", "b", "c")),
            (lambda: setattr(self.b, "state", AdminState.draining), ("a", "c")),
            (lambda: setattr(self.b, "state", AdminState.active), ("a", "b", "c")),
            (lambda: setattr(self.c, "ejected", True), ("a", "b")),
            (lambda: setattr(self.c, "ejected", False), ("a", "b", "c")),
            (lambda: self.pool.addBackend(backend("d")), ("a", "b", "c", "d")),
            (lambda: self.pool.removeBackend("a"), ("b", "c", "d")),
            (lambda: self.pool.setBackends([self.a, self.c]), ("a", "c")),
        ]
        self.assertEqual(("a", "b", "c"), self.names())
        found = []
        for i, (change, expected) in enumerate(changes):
            change()
            got = self.names()
            if got != expected:
                found.append((i, expected, got))
        self.assertEqual([], found)

    def test_removedBackendChangesNothing(self):
        """
        A backend no longer in the pool may change without effect on it.
        """
        removed = self.pool.removeBackend("b")
        self.assertEqual(("a", "c"), self.names())
        removed.healthy = False
        removed.healthy = True
        self.assertEqual(("a", "c"), self.names())

    def test_connectionLimitFollowed(self):
        """
        Once a backend has a connection limit, every pick sees whether it
        is full now.
        """
        self.assertEqual(("a", "b", "c"), self.names())
        self.a.maxConnections = 1
        self.a.acquire()
        self.assertEqual(("b", "c"), self.names())
        self.a.release()
        self.assertEqual(("a", "b", "c"), self.names())
        self.a.maxConnections = None
        self.a.acquire()
        self.assertEqual(("a", "b", "c"), self.names())
        self.a.release()

    def test_breakerFollowed(self):
        """
        Once a backend has a breaker, every pick asks it.
        """
        self.assertEqual(("a", "b", "c"), self.names())
        breaker = _Breaker()
        self.c.breaker = breaker
        breaker.open = True
        self.assertEqual(("a", "b"), self.names())
        breaker.open = False
        self.assertEqual(("a", "b", "c"), self.names())

    def test_candidatesCannotBeChanged(self):
        """
        A strategy cannot change the candidates a later pick sees.
        """
        self.pool.pick()
        self.assertIsInstance(self.pool._usableNow(), tuple)
