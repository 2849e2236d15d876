"""
Tests for the protection parts of L{txlb.pool}: slow start, panic, the
bounded queue with its timeout, health verdicts and reload's
L{Pool.setBackends}; all on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txlb.pool import AdminState, Pool, QueueFull, QueueTimeout
from txlb.strategies.leastconn import LeastConnections
from txlb.strategies.roundrobin import RoundRobin
from txlb.test.test_pool import backend


def pool(clock: Clock, *backends, strategy=None, **kw) -> Pool:
    return Pool(
        name="app",
        algorithm="round_robin",
        strategy=strategy if strategy is not None else RoundRobin(),
        clock=clock,
        backends=list(backends),
        **kw,
    )


class SlowStartTests(SynchronousTestCase):
    """
    A backend that comes back up ramps its effective weight.
    """

    def test_rampAfterRecovery(self) -> None:
        """
        After going down and up again, the weight grows linearly from 10%
        to 100% over C{slowStart} seconds, then is the configured one (an
        C{int} again).
        """
        clock = Clock()
        b = backend("a", configuredWeight=10, slowStart=20.0)
        pool(clock, b)
        self.assertEqual(b.weight, 10)
        b.setHealthy(False)
        clock.advance(5)
        b.setHealthy(True)
        self.assertEqual(b.weight, 1.0)
        clock.advance(1)
        self.assertEqual(b.weight, 1.0)
        clock.advance(9)
        self.assertAlmostEqual(b.weight, 5.0)
        clock.advance(5)
        self.assertAlmostEqual(b.weight, 7.5)
        clock.advance(5)
        self.assertEqual(b.weight, 10)
        self.assertIsInstance(b.weight, int)

    def test_firstVerdictDoesNotRamp(self) -> None:
        """
        A server present at startup that passes its first check (pending
        to up) takes its full weight at once.
        """
        clock = Clock()
        b = backend("a", configuredWeight=4, slowStart=30.0, healthy=False)
        pool(clock, b)
        b.setHealthy(True)
        self.assertEqual(b.weight, 4)

    def test_addedAtRuntimeRamps(self) -> None:
        """
        A server added at runtime (C{rampOnUp}) ramps on its first pass.
        """
        clock = Clock()
        b = backend("a", configuredWeight=4, slowStart=30.0, healthy=False, rampOnUp=True)
        pool(clock, b)
        b.setHealthy(True)
        self.assertAlmostEqual(b.weight, 0.4)

    def test_leastConnectionsSharesByRamp(self) -> None:
        """
        A ramping backend gets a smaller share from a load-based strategy:
        at 10% of its weight, least_connections keeps sending to the other
        one until it has ten times the load.
        """
        clock = Clock()
        ramping = backend("new", slowStart=100.0)
        steady = backend("old")
        p = pool(clock, steady, ramping, strategy=LeastConnections())
        ramping.setHealthy(False)
        ramping.setHealthy(True)
        counts = {"new": 0, "old": 0}
        for _ in range(22):
            chosen = p.pick()
            chosen.acquire()
            counts[chosen.name] += 1
        self.assertEqual(counts, {"old": 20, "new": 2})

    def test_noSlowStart(self) -> None:
        """
        With C{slowStart} 0, recovery takes the full weight at once.
        """
        clock = Clock()
        b = backend("a", configuredWeight=3)
        pool(clock, b)
        b.setHealthy(False)
        b.setHealthy(True)
        self.assertEqual(b.weight, 3)


class PanicTests(SynchronousTestCase):
    """
    With every backend down, C{panic} picks among them anyway.
    """

    def test_failFastByDefault(self) -> None:
        clock = Clock()
        p = pool(clock, backend("a", healthy=False), backend("b", healthy=False))
        self.assertIsNone(p.pick())
        self.assertEqual(p.noBackend, 1)

    def test_panicPicksDownBackends(self) -> None:
        """
        Panic balances over every backend not drained or disabled, and
        counts its picks.
        """
        clock = Clock()
        a = backend("a", healthy=False)
        b = backend("b", ejected=True)
        c = backend("c", healthy=False, state=AdminState.draining)
        p = pool(clock, a, b, c, panic=True)
        picks = {p.pick().name for _ in range(4)}
        self.assertEqual(picks, {"a", "b"})
        self.assertEqual(p.panics, 4)

    def test_noPanicWhileOneIsUsable(self) -> None:
        """
        A connection that already tried every usable backend is not sent
        to a down one.
        """
        clock = Clock()
        a = backend("a")
        p = pool(clock, a, backend("b", healthy=False), panic=True)
        self.assertIsNone(p.pick(exclude=[a]))


class QueueTests(SynchronousTestCase):
    """
    When every usable backend is full, requests wait in a bounded queue.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.a = backend("a", maxConnections=1)
        self.pool = pool(self.clock, self.a, maxQueue=2, queueTimeout=3.0)
        self.a.acquire()

    def test_notQueueableWithoutQueue(self) -> None:
        self.pool.maxQueue = 0
        self.assertFalse(self.pool.queueable())

    def test_notQueueableWhenDown(self) -> None:
        """
        A down backend is nothing to wait for: refuse at once.
        """
        self.a.setHealthy(False)
        self.assertFalse(self.pool.queueable())

    def test_waitsForRelease(self) -> None:
        """
        Waiters get the backend in arrival order as it frees up.
        """
        self.assertTrue(self.pool.queueable())
        got: list[str] = []

        def take(b):
            b.acquire()
            got.append(b.name)

        self.pool.wait().addCallback(take)
        self.pool.wait().addCallback(take)
        self.assertEqual(self.pool.queued, 2)
        self.a.release()
        self.assertEqual(got, ["a"])
        self.assertEqual(self.pool.queued, 1)
        self.a.release()
        self.assertEqual(got, ["a", "a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full(self) -> None:
        """
        Past C{maxQueue} waiters, waiting fails at once with L{QueueFull}.
        """
        self.pool.wait()
        self.pool.wait()
        self.failureResultOf(self.pool.wait(), QueueFull)
        self.assertEqual(self.pool.dropped["queue_full"], 1)

    def test_timeout(self) -> None:
        """
        A waiter gives up after C{queueTimeout} with L{QueueTimeout}.
        """
        d = self.pool.wait()
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        f = self.failureResultOf(d, QueueTimeout)
        self.assertEqual(str(f.value), "pool app: no backend free within 3 s")
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(self.pool.dropped["queue_timeout"], 1)

    def test_closeQueue(self) -> None:
        """
        Closing the queue (the pool is removed) fails every waiter at once,
        as a timeout naming why, and leaves no timer.
        """
        first, second = self.pool.wait(), self.pool.wait()
        self.pool.closeQueue("removed by a reload")
        for d in (first, second):
            f = self.failureResultOf(d, QueueTimeout)
            self.assertEqual(str(f.value), "pool app: removed by a reload")
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(self.pool.dropped["queue_timeout"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelLeaves(self) -> None:
        """
        Cancelling a wait (the client left) leaves the queue and its timer.
        """
        d = self.pool.wait()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wokenByRecovery(self) -> None:
        """
        A backend coming up wakes the queue.
        """
        b = backend("b", healthy=False)
        self.pool.addBackend(b)
        d = self.pool.wait()
        b.setHealthy(True)
        self.assertIs(self.successResultOf(d), b)


class SetBackendsTests(SynchronousTestCase):
    """
    L{Pool.setBackends} replaces the membership, keeping what stays.
    """

    def test_replace(self) -> None:
        clock = Clock()
        a, b, c = backend("a"), backend("b"), backend("c")
        p = pool(clock, a, b)
        p.setBackends([b, c])
        self.assertEqual(p.backends, (b, c))
        self.assertIsNone(a.pool)
        self.assertIs(c.pool, p)

    def test_duplicateRefused(self) -> None:
        clock = Clock()
        p = pool(clock, backend("a"))
        self.assertRaises(ValueError, p.setBackends, [backend("x"), backend("x")])
