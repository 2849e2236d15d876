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
