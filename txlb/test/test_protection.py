"""
Tests for L{txlb.protection}: outlier detection and circuit breakers, on
real L{Pool}s and L{Backend}s driven by a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txlb.config import BreakerConfig, OutlierConfig
from txlb.pool import Backend, Pool
from txlb.protection import BreakerState, CircuitBreaker, OutlierDetector
from txlb.strategies.roundrobin import RoundRobin


def makePool(clock: Clock, count: int, **kw: object) -> Pool:
    """
    A round-robin pool of C{count} backends called C{b0}, C{b1} ...

    @param kw: given to every L{Backend}.
    """
    backends = [
        Backend(
            name=f"b{i}",
            address="127.0.0.1",
            port=1000 + i,
            endpoint=f"tcp:host=127.0.0.1:port={1000 + i}",
            **kw,
        )
        for i in range(count)
    ]
    return Pool(
        name="p",
        algorithm="round_robin",
        strategy=RoundRobin(),
        clock=clock,
        backends=backends,
    )


def messages(observer: EventLoggingObserver) -> list[str]:
    """
    The formatted messages logged to C{observer}.
    """
    return [formatEvent(event) for event in observer]


class OutlierDetectorTests(SynchronousTestCase):
    """
    L{OutlierDetector} ejects backends that fail in a row, for longer each
    time, within the pool's ejection budget.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def detect(self, count: int = 4, **kw: object) -> tuple[Pool, OutlierDetector]:
        """
        A pool of C{count} backends watched by a detector with 3 failures in
        a row, 10 s base and 25 s maximum ejection, and C{kw}.
        """
        pool = makePool(self.clock, count)
        settings: dict[str, object] = dict(
            consecutiveFailures=3, baseEjectionTime=10.0, maxEjectionTime=25.0
        )
        settings.update(kw)
        detector = OutlierDetector(pool, OutlierConfig(**settings), self.clock)
        for backend in pool.backends:
            backend.passive = detector
        self.addCleanup(detector.stop)
        return pool, detector

    def fail(self, backend: Backend, times: int = 3) -> None:
        """
        Record C{times} connect failures of C{backend}.
        """
        for _ in range(times):
            backend.recordFailure("connection refused")

    def eject(self, backend: Backend) -> float:
        """
        Fail C{backend} until it is ejected.

        @return: how long the ejection lasts.
        """
        self.fail(backend)
        self.assertTrue(backend.ejected)
        until = backend.passive.describe(backend)["until"]
        return until - self.clock.seconds()

    def test_ejectsAfterConsecutiveFailures(self):
        """
        The C{consecutiveFailures}-th failure in a row ejects the backend,
        which is then never picked, and logs why and for how long.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        self.fail(b0, 2)
        self.assertFalse(b0.ejected)
        b0.recordFailure("timeout")
        self.assertTrue(b0.ejected)
        self.assertEqual((detector.ejections, detector.ejectionsActive), (1, 1))
        self.assertNotIn(b0, [pool.pick() for _ in range(6)])
        self.assertEqual(
            messages(self.log),
            ["pool p: backend b0 ejected for 10 s after 3 failures in a row "
             "(last: timeout)"],
        )

    def test_fiveHundredsCount(self):
        """
        A completed exchange that counts as failed (an L7 5xx) is a failure.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        for _ in range(3):
            b0.recordSuccess(0.01, ok=False)
        self.assertTrue(b0.ejected)

    def test_successResetsCount(self):
        """
        A success between failures starts the count over.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        self.fail(b0, 2)
        b0.recordSuccess(0.01)
        self.fail(b0, 2)
        self.assertFalse(b0.ejected)
        self.assertEqual(detector.describe(b0)["consecutive_failures"], 2)
        b0.recordFailure("refused")
        self.assertTrue(b0.ejected)

    def test_returnsAfterEjectionTime(self):
        """
        An ejected backend is back after C{baseEjectionTime}, picked again,
        and its failures start over.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        self.fail(b0)
        self.clock.advance(9.9)
        self.assertTrue(b0.ejected)
        self.clock.advance(0.1)
        self.assertFalse(b0.ejected)
        self.assertEqual(detector.ejectionsActive, 0)
        self.assertIn(b0, [pool.pick() for _ in range(4)])
        self.assertEqual(detector.describe(b0)["consecutive_failures"], 0)
        self.assertEqual(messages(self.log)[-1], "pool p: backend b0 back from ejection")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failuresWhileEjectedIgnored(self):
        """
        Outcomes reported while ejected (of requests the backend took before)
        do not count towards the next ejection.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        self.fail(b0)
        self.fail(b0, 5)
        self.assertEqual(detector.ejections, 1)
        self.clock.advance(10)
        self.fail(b0, 2)
        self.assertFalse(b0.ejected)

    def test_backOffGrowsToMaximum(self):
        """
        Ejected again right after coming back, a backend stays out for the
        base time, twice, then three times as long, capped at the maximum.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        durations = []
        for _ in range(4):
            durations.append(self.eject(b0))
            self.clock.advance(durations[-1])
        self.assertEqual(durations, [10.0, 20.0, 25.0, 25.0])
        self.assertEqual(detector.ejections, 4)

    def test_backOffDecays(self):
        """
        Each full C{baseEjectionTime} back in rotation without an ejection
        forgives one ejection in a row, down to none.
        """
        pool, detector = self.detect(maxEjectionTime=100.0)
        b0 = pool.backends[0]
        for expected in (10.0, 20.0, 30.0):
            self.assertEqual(self.eject(b0), expected)
            self.clock.advance(expected)
        self.assertEqual(detector.describe(b0)["ejections_in_a_row"], 3)
        self.clock.advance(19.9)
        self.assertEqual(detector.describe(b0)["ejections_in_a_row"], 2)
        self.assertEqual(self.eject(b0), 30.0)
        self.clock.advance(30.0)
        self.clock.advance(30.0)
        self.assertEqual(detector.describe(b0)["ejections_in_a_row"], 0)
        self.assertEqual(self.eject(b0), 10.0)

    def test_atMostMaxEjectionPercent(self):
        """
        At most C{maxEjectionPercent} of the backends are ejected at once:
        further ejections are refused, counted and logged once, and retried
        at the backend's next failure.
        """
        pool, detector = self.detect(count=4, maxEjectionPercent=50)
        b0, b1, b2, b3 = pool.backends
        self.fail(b0)
        self.clock.advance(5)
        self.fail(b1)
        self.fail(b2, 4)
        self.assertEqual([b.ejected for b in pool.backends], [True, True, False, False])
        self.assertEqual((detector.ejectionsActive, detector.ejectionsRefused), (2, 2))
        refusals = [m for m in messages(self.log) if "not ejected" in m]
        self.assertEqual(
            refusals,
            ["pool p: backend b2 not ejected after 3 failures in a row (last: "
             "connection refused): 2 of 4 backends ejected already "
             "(max_ejection_percent 50)"],
        )
        self.clock.advance(5)
        self.assertFalse(b0.ejected)
        b2.recordFailure("refused")
        self.assertTrue(b2.ejected)
        self.assertEqual(detector.ejectionsActive, 2)

    def test_alwaysOneOfSeveral(self):
        """
        In a pool of two or more, one backend may be ejected whatever the
        percentage; a second only within it.
        """
        pool, detector = self.detect(count=3, maxEjectionPercent=10)
        b0, b1, b2 = pool.backends
        self.fail(b0)
        self.fail(b1)
        self.assertEqual([b.ejected for b in pool.backends], [True, False, False])
        self.assertEqual(detector.ejectionsRefused, 1)

    def test_singleBackendOnlyAtHundredPercent(self):
        """
        The only backend of a pool is ejected only when
        C{maxEjectionPercent} is 100.
        """
        pool, detector = self.detect(count=1, maxEjectionPercent=99)
        self.fail(pool.backends[0], 10)
        self.assertFalse(pool.backends[0].ejected)
        pool, detector = self.detect(count=1, maxEjectionPercent=100)
        self.fail(pool.backends[0])
        self.assertTrue(pool.backends[0].ejected)

    def test_returnWakesQueue(self):
        """
        A connection waiting in the pool's queue gets the backend that comes
        back from ejection.
        """
        pool = makePool(self.clock, 2, maxConnections=1)
        pool.maxQueue = 5
        pool.queueTimeout = 60.0
        detector = OutlierDetector(pool, OutlierConfig(consecutiveFailures=1), self.clock)
        self.addCleanup(detector.stop)
        b0, b1 = pool.backends
        for backend in pool.backends:
            backend.passive = detector
        b0.acquire()
        b1.recordFailure("refused")
        self.assertTrue(b1.ejected)
        self.assertIsNone(pool.pick())
        self.assertTrue(pool.queueable())
        waiting = pool.wait()
        self.assertNoResult(waiting)
        self.clock.advance(30)
        self.assertIs(self.successResultOf(waiting), b1)

    def test_forget(self):
        """
        A backend forgotten (it left the pool) is returned to rotation, its
        timer cancelled and its record dropped.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        self.fail(b0)
        b1 = pool.backends[1]
        self.fail(b1, 2)
        pool.removeBackend("b0")
        detector.forget(b0)
        detector.forget(b0)
        self.assertFalse(b0.ejected)
        self.assertEqual(detector.ejectionsActive, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            detector.describe(b0),
            dict(ejected=False, until=None, ejections_in_a_row=0,
                 consecutive_failures=0),
        )
        self.assertEqual(detector.describe(b1)["consecutive_failures"], 2)
        self.assertNotIn(b0, detector._watches)

    def test_lateFailureOfRemovedBackend(self):
        """
        Failures of a backend that left the pool (requests it took before
        ending late) are not watched: no record, no ejection.
        """
        pool, detector = self.detect()
        b0 = pool.removeBackend("b0")
        detector.forget(b0)
        self.fail(b0, 5)
        self.assertFalse(b0.ejected)
        self.assertEqual(detector._watches, {})

    def test_stop(self):
        """
        stop cancels every timer and returns the ejected backends.
        """
        pool, detector = self.detect(count=4, maxEjectionPercent=100)
        for backend in pool.backends[:3]:
            self.fail(backend)
        detector.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([b.ejected for b in pool.backends], [False] * 4)
        self.assertEqual(detector.ejectionsActive, 0)

    def test_notOursNotTouched(self):
        """
        A backend ejected by something else is neither ejected again nor
        returned.
        """
        pool, detector = self.detect()
        b0 = pool.backends[0]
        b0.ejected = True
        self.fail(b0, 5)
        self.assertEqual(detector.ejections, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        detector.stop()
        self.assertTrue(b0.ejected)

    def test_describe(self):
        """
        describe tells whether and until when a backend is ejected, how many
        times in a row, and its failures in a row.
        """
        pool, detector = self.detect()
        b0, b1 = pool.backends[:2]
        self.fail(b0)
        self.fail(b1, 1)
        self.assertEqual(
            detector.describe(b0),
            dict(ejected=True, until=1010.0, ejections_in_a_row=1,
                 consecutive_failures=0),
        )
        self.assertEqual(
            detector.describe(b1),
            dict(ejected=False, until=None, ejections_in_a_row=0,
                 consecutive_failures=1),
        )


class CircuitBreakerTests(SynchronousTestCase):
    """
    L{CircuitBreaker} opens when too many recent requests fail, and closes
    again after probes succeed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def breaker(self, **kw: object) -> CircuitBreaker:
        """
        A breaker opening at half of at least 4 of the last 10 outcomes
        failed, for 5 s, then letting 2 probes through; and C{kw}.
        """
        settings: dict[str, object] = dict(
            failureRatio=0.5, window=10, minRequests=4, openTime=5.0,
            halfOpenRequests=2,
        )
        settings.update(kw)
        breaker = CircuitBreaker(BreakerConfig(**settings), self.clock, name="b0")
        self.addCleanup(breaker.stop)
        return breaker

    def trip(self, breaker: CircuitBreaker) -> None:
        """
        Fail C{breaker} until it opens.
        """
        while breaker.state is BreakerState.closed:
            breaker.failed()

    def halfOpen(self, breaker: CircuitBreaker) -> None:
        """
        Open C{breaker} and let its open time pass.
        """
        self.trip(breaker)
        self.clock.advance(breaker.config.openTime)
        self.assertIs(breaker.state, BreakerState.half_open)

    def test_opensAtFailureRatio(self):
        """
        With at least C{minRequests} outcomes, a failure share of
        C{failureRatio} opens the breaker, which then allows nothing; the
        transition is logged with the counts.
        """
        breaker = self.breaker()
        breaker.succeeded()
        breaker.failed()
        breaker.failed()
        self.assertIs(breaker.state, BreakerState.closed)
        self.assertTrue(breaker.allows())
        breaker.failed()
        self.assertIs(breaker.state, BreakerState.open)
        self.assertFalse(breaker.allows())
        self.assertEqual(breaker.opened, 1)
        self.assertEqual(
            messages(self.log),
            ["circuit breaker of backend b0: closed -> open (3 of 4 failed)"],
        )

    def test_belowRatioStaysClosed(self):
        """
        Failures below C{failureRatio} of the window leave it closed.
        """
        breaker = self.breaker()
        for _ in range(20):
            breaker.succeeded()
            breaker.succeeded()
            breaker.failed()
        self.assertIs(breaker.state, BreakerState.closed)

    def test_windowSlides(self):
        """
        Only the last C{window} outcomes count: old failures slide out.
        """
        breaker = self.breaker(window=4, minRequests=4)
        for ok in (False, True, True, True, True, False):
            (breaker.succeeded if ok else breaker.failed)()
        self.assertIs(breaker.state, BreakerState.closed)
        self.assertEqual(breaker.describe()["failures"], 1)
        breaker.failed()
        self.assertIs(breaker.state, BreakerState.open)
        self.assertEqual(messages(self.log)[-1][-len("(2 of 4 failed)"):],
                         "(2 of 4 failed)")

    def test_halfOpenAfterOpenTime(self):
        """
        After C{openTime} the breaker is half-open and allows requests.
        """
        breaker = self.breaker()
        self.trip(breaker)
        self.clock.advance(4.9)
        self.assertFalse(breaker.allows())
        self.clock.advance(0.1)
        self.assertIs(breaker.state, BreakerState.half_open)
        self.assertTrue(breaker.allows())
        self.assertEqual(
            messages(self.log)[-1],
            "circuit breaker of backend b0: open -> half_open (5 s passed)",
        )

    def test_probesLimited(self):
        """
        Half-open, it allows C{halfOpenRequests} attempts, no more; asking
        changes nothing.
        """
        breaker = self.breaker()
        self.halfOpen(breaker)
        for _ in range(2):
            self.assertTrue(breaker.allows())
            self.assertTrue(breaker.allows())
            breaker.attempt()
        self.assertFalse(breaker.allows())
        self.assertIs(breaker.state, BreakerState.half_open)

    def test_probesSucceedCloses(self):
        """
        When every probe succeeded it closes, with an empty window.
        """
        breaker = self.breaker()
        self.halfOpen(breaker)
        breaker.attempt()
        breaker.succeeded()
        self.assertIs(breaker.state, BreakerState.half_open)
        breaker.attempt()
        breaker.succeeded()
        self.assertIs(breaker.state, BreakerState.closed)
        self.assertEqual(breaker.describe()["window"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            messages(self.log)[-1],
            "circuit breaker of backend b0: half_open -> closed (2 probes succeeded)",
        )
        # A fresh window: one failure does not reopen it.
        breaker.failed()
        self.assertIs(breaker.state, BreakerState.closed)

    def test_probeFailureReopens(self):
        """
        A failure while half-open opens it again at once, for C{openTime}.
        """
        breaker = self.breaker()
        self.halfOpen(breaker)
        breaker.attempt()
        breaker.succeeded()
        breaker.attempt()
        breaker.failed()
        self.assertIs(breaker.state, BreakerState.open)
        self.assertEqual(breaker.opened, 2)
        self.assertEqual(breaker.describe()["until"], self.clock.seconds() + 5.0)
        self.clock.advance(5)
        self.assertIs(breaker.state, BreakerState.half_open)
        self.assertTrue(breaker.allows())

    def test_lateOutcomesIgnoredWhileOpen(self):
        """
        Outcomes that arrive while open (of requests started before) change
        nothing.
        """
        breaker = self.breaker()
        self.trip(breaker)
        before = breaker.describe()
        for _ in range(10):
            breaker.succeeded()
            breaker.failed()
            breaker.attempt()
        self.assertEqual(breaker.describe(), before)
        self.clock.advance(5)
        self.assertEqual(breaker.describe()["probes"], 0)

    def test_successWithoutProbeNotCounted(self):
        """
        Half-open, a success counts only for a probe let through: late
        successes of older requests do not close it.
        """
        breaker = self.breaker()
        self.halfOpen(breaker)
        for _ in range(5):
            breaker.succeeded()
        self.assertIs(breaker.state, BreakerState.half_open)
        self.assertEqual(breaker.describe()["probes_succeeded"], 0)

    def test_lostProbesProbedAgain(self):
        """
        Probes that never report do not keep it half-open and shut for ever:
        after C{openTime} a new round of probes may go.
        """
        calls = []
        breaker = self.breaker(halfOpenRequests=1)
        breaker.onAvailable = lambda: calls.append(self.clock.seconds())
        self.halfOpen(breaker)
        breaker.attempt()
        self.assertFalse(breaker.allows())
        self.clock.advance(5)
        self.assertTrue(breaker.allows())
        self.assertIs(breaker.state, BreakerState.half_open)
        self.assertEqual(calls, [5.0, 10.0])

    def test_idleHalfOpenQuiet(self):
        """
        Half-open with no traffic, the breaker sets no timer and logs
        nothing more.
        """
        breaker = self.breaker()
        self.halfOpen(breaker)
        logged = len(self.log)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.log), logged)
        self.assertTrue(breaker.allows())

    def test_onAvailable(self):
        """
        onAvailable is called whenever the breaker starts allowing requests
        again: half-open, and closed after the probes.
        """
        calls = []
        breaker = self.breaker()
        breaker.onAvailable = lambda: calls.append((breaker.state, breaker.allows()))
        self.trip(breaker)
        self.assertEqual(calls, [])
        self.clock.advance(5)
        self.assertEqual(calls, [(BreakerState.half_open, True)])
        breaker.attempt()
        breaker.attempt()
        breaker.succeeded()
        breaker.succeeded()
        self.assertEqual(calls[1:], [(BreakerState.closed, True)])

    def test_stop(self):
        """
        stop cancels the breaker's timer.
        """
        breaker = self.breaker()
        self.trip(breaker)
        breaker.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(breaker.describe()["until"])

    def test_describe(self):
        """
        describe gives the state's name and the counts.
        """
        breaker = self.breaker()
        breaker.succeeded()
        breaker.failed()
        self.assertEqual(
            breaker.describe(),
            dict(state="closed", opened=0, window=2, failures=1, probes=0,
                 probes_succeeded=0, until=None),
        )


class BreakerInPoolTests(SynchronousTestCase):
    """
    L{CircuitBreaker}s on the backends of a L{Pool}: picks and backend
    outcomes drive them.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.config = BreakerConfig(
            failureRatio=0.5, window=4, minRequests=2, openTime=5.0,
            halfOpenRequests=2,
        )

    def makePool(self, count: int) -> Pool:
        """
        A pool of C{count} backends, each with its own breaker.
        """
        pool = makePool(self.clock, count)
        for backend in pool.backends:
            backend.breaker = CircuitBreaker(self.config, self.clock, backend.name)
            self.addCleanup(backend.breaker.stop)
        return pool

    def test_openBreakerNotPicked(self):
        """
        Failures recorded on a backend open its breaker; it is then no
        candidate.
        """
        pool = self.makePool(2)
        b0, b1 = pool.backends
        b0.recordFailure("refused")
        b0.recordFailure("refused")
        self.assertIs(b0.breaker.state, BreakerState.open)
        self.assertEqual([pool.pick() for _ in range(4)], [b1] * 4)

    def test_halfOpenPicksLimited(self):
        """
        A half-open backend is picked for C{halfOpenRequests} probes, then
        not until they report; their success closes the breaker.
        """
        pool = self.makePool(1)
        (b0,) = pool.backends
        b0.recordFailure("refused")
        b0.recordFailure("refused")
        self.assertIsNone(pool.pick())
        self.clock.advance(5)
        self.assertEqual([pool.pick() for _ in range(3)], [b0, b0, None])
        b0.recordSuccess(0.01)
        self.assertIsNone(pool.pick())
        b0.recordSuccess(0.01)
        self.assertIs(b0.breaker.state, BreakerState.closed)
        self.assertEqual([pool.pick() for _ in range(3)], [b0] * 3)
