"""
One backend server's runtime state: whether it may take traffic (health,
the operator's state, ejection, limits, circuit breaker, slow start), its
counters, and what active health checks found.

A L{txlb.pool.Pool} owns its backends; protocols account for each
connection or request with L{Backend.acquire} and L{Backend.release}.
"""

from __future__ import annotations

import collections
import enum
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import implementer

from txlb.interfaces import IBackend

if TYPE_CHECKING:
    from txlb.pool import Pool

# Weight given to each new latency sample in the moving average.
LATENCY_ALPHA = 0.3

# Upper bounds (seconds) of the latency histogram's buckets; the last is +Inf.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    float("inf"),
)
_LAST_BOUND = LATENCY_BUCKETS[-1]


@attrs.define(eq=False)
class LatencyHistogram:
    """
    Cumulative-ready counts of latencies, in the shape Prometheus exports.

    @ivar counts: observations per bucket of L{LATENCY_BUCKETS} (not
        cumulative).
    @ivar total: the sum of all observations, in seconds.
    """

    counts: list[int] = attrs.field(factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one observation.
        """
        self.total += seconds
        if seconds <= LATENCY_BUCKETS[-1]:
            # The first bucket whose bound is not below it, found in C.
            self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    @property
    def count(self) -> int:
        """
        Observations in all.
        """
        return sum(self.counts)


# Health-check results kept per backend for the API.
RESULTS_KEPT = 10

# During slow start a backend's effective weight is at least this share of
# its configured weight (Envoy's default minimum is 10% too).
SLOW_START_FLOOR = 0.1


@attrs.frozen
class CheckResult:
    """
    The outcome of one active health check.

    @ivar at: when it finished (reactor seconds).
    @ivar ok: whether it passed.
    @ivar reason: why it failed, or what passed (e.g. C{"HTTP 200"}).
    @ivar duration: seconds it took.
    """

    at: float
    ok: bool
    reason: str
    duration: float


@attrs.define(eq=False)
class HealthRecord:
    """
    What active health checking knows of one backend.

    It lives on the L{Backend}, so it survives a reload that keeps the
    server, and is what the API reports.

    @ivar results: the last L{RESULTS_KEPT} L{CheckResult}s, oldest first.
    @ivar successes: consecutive passed checks (0 after a failure).
    @ivar failures: consecutive failed checks (0 after a pass).
    @ivar checked: whether any check has finished.
    @ivar passed: checks passed, ever.
    @ivar failed: checks failed, ever.
    """

    results: collections.deque[CheckResult] = attrs.field(
        factory=lambda: collections.deque(maxlen=RESULTS_KEPT)
    )
    successes: int = 0
    failures: int = 0
    checked: bool = False
    passed: int = 0
    failed: int = 0

    @property
    def last(self) -> CheckResult | None:
        """
        The most recent result, or C{None}.
        """
        return self.results[-1] if self.results else None


class AdminState(enum.Enum):
    """
    What the operator (config, reload, API) wants of a backend.

    @cvar active: takes new traffic when healthy.
    @cvar draining: takes no new traffic; what is in flight finishes.
    @cvar disabled: takes no new traffic (in-flight traffic is not cut).
    """

    active = "active"
    draining = "draining"
    disabled = "disabled"


@implementer(IBackend)
@attrs.define(eq=False)
class Backend:
    """
    One backend server and its live counters.

    @ivar name: identity within the pool.
    @ivar address: host for TCP backends, else C{None}.
    @ivar port: port for TCP backends, else C{None}.
    @ivar endpoint: Twisted client endpoint string used to connect.
    @ivar configuredWeight: the weight from the configuration.
    @ivar maxConnections: at most this many in flight; C{None} is unlimited.
    @ivar activeConnections: in flight now.
    @ivar totalConnections: ever started.
    @ivar failures: connect failures ever recorded.
    @ivar consecutiveFailures: connect failures since the last success.
    @ivar latency: moving average of latency in seconds, or C{None}.
    @ivar healthy: last verdict of health checking (C{True} with none
        configured; C{False} until the first check passes with one).
    @ivar health: the L{HealthRecord} of active checks.
    @ivar state: the operator's L{AdminState}.
    @ivar ejected: taken out of rotation by outlier detection.
    @ivar breaker: the backend's circuit breaker, or C{None}: an object
        with C{allows()}, C{attempt()}, C{succeeded()}, C{failed()}.
    @ivar passive: the pool's outlier detector, or C{None}: an object with
        C{succeeded(backend)} and C{failed(backend, reason)}.
    @ivar slowStart: seconds over which the effective weight ramps up after
        the backend comes (back) up; 0 for none.
    @ivar rampOnUp: whether the next change to healthy starts slow start
        (C{False} for servers present at startup, whose first verdict is
        not a recovery).
    @ivar responses: L7 responses by status class (index 1 for 1xx ... 5
        for 5xx; index 0 for requests that got no response).
    @ivar responseTimes: L7 response times.
    """

    name: str
    address: str | None
    port: int | None
    endpoint: str
    configuredWeight: int = 1
    # What decides whether the backend is usable is kept behind properties
    # (below), whose setters tell the pool: it caches its usable backends.
    _maxConnections: int | None = attrs.field(default=None, alias="maxConnections")
    activeConnections: int = 0
    totalConnections: int = 0
    failures: int = 0
    consecutiveFailures: int = 0
    lastFailureReason: str | None = None
    latency: float | None = None
    _healthy: bool = attrs.field(default=True, alias="healthy")
    health: HealthRecord = attrs.field(factory=HealthRecord)
    _state: AdminState = attrs.field(default=AdminState.active, alias="state")
    responses: list[int] = attrs.field(factory=lambda: [0] * 6)
    responseTimes: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    _ejected: bool = attrs.field(default=False, alias="ejected")
    _breaker: Any = attrs.field(default=None, alias="breaker")
    passive: Any = None
    slowStart: float = 0.0
    rampOnUp: bool = False
    pool: Pool | None = attrs.field(default=None, repr=False)
    _rampStart: float | None = attrs.field(default=None, init=False, repr=False)

    def _availabilityChanged(self) -> None:
        """
        Something L{usable} depends on changed: the pool's cache of usable
        backends is stale.
        """
        pool = self.pool
        if pool is not None:
            pool._usable = None

    @property
    def maxConnections(self) -> int | None:
        """
        At most this many in flight; C{None} is unlimited.
        """
        return self._maxConnections

    @maxConnections.setter
    def maxConnections(self, value: int | None) -> None:
        self._maxConnections = value
        self._availabilityChanged()

    @property
    def healthy(self) -> bool:
        """
        The last verdict of health checking (see L{setHealthy}).
        """
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy = value
        self._availabilityChanged()

    @property
    def state(self) -> AdminState:
        """
        The operator's L{AdminState}.
        """
        return self._state

    @state.setter
    def state(self, value: AdminState) -> None:
        self._state = value
        self._availabilityChanged()

    @property
    def ejected(self) -> bool:
        """
        Taken out of rotation by outlier detection.
        """
        return self._ejected

    @ejected.setter
    def ejected(self, value: bool) -> None:
        self._ejected = value
        self._availabilityChanged()

    @property
    def breaker(self) -> Any:
        """
        The circuit breaker, or C{None}.
        """
        return self._breaker

    @breaker.setter
    def breaker(self, value: Any) -> None:
        self._breaker = value
        self._availabilityChanged()

    def recordResponse(self, status: int, seconds: float) -> None:
        """
        An L7 response with C{status} finished after C{seconds}; status 0
        counts a request that got no response from this backend.
        """
        self.responses[min(status // 100, 5)] += 1
        self.responseTimes.observe(seconds)

    @property
    def weight(self) -> float:
        """
        The effective weight: the configured one, except during slow start,
        when it grows linearly from L{SLOW_START_FLOOR} of it to all of it
        (a C{float} then).
        """
        start = self._rampStart
        if start is None:
            return self.configuredWeight
        pool = self.pool
        elapsed = pool.clock.seconds() - start if pool is not None else self.slowStart
        if elapsed >= self.slowStart:
            self._rampStart = None
            return self.configuredWeight
        return self.configuredWeight * max(SLOW_START_FLOOR, elapsed / self.slowStart)

    @property
    def rampedShare(self) -> float:
        """
        The share of the configured weight in effect now (1.0 outside slow
        start).
        """
        return self.weight / self.configuredWeight

    def startSlowStart(self) -> None:
        """
        Begin slow start now, when the backend has one and a clock.
        """
        if self.slowStart > 0 and self.pool is not None:
            self._rampStart = self.pool.clock.seconds()

    def setHealthy(self, healthy: bool) -> bool:
        """
        Record health checking's verdict.

        A change to healthy of a backend that was down (or that was added
        at runtime) starts slow start.

        @return: whether the verdict changed.
        """
        if healthy == self.healthy:
            return False
        self.healthy = healthy
        if healthy:
            if self.rampOnUp:
                self.startSlowStart()
            self.rampOnUp = True
        else:
            self.rampOnUp = True
            self._rampStart = None
        if self.pool is not None:
            self.pool.availabilityChanged()
        return True

    @property
    def full(self) -> bool:
        """
        C{True} when at C{maxConnections}.
        """
        return (
            self._maxConnections is not None
            and self.activeConnections >= self._maxConnections
        )

    @property
    def usable(self) -> bool:
        """
        C{True} when this backend may take a new connection now.
        """
        return (
            self._healthy
            and self._state is AdminState.active
            and not self._ejected
            and not self.full
            and (self._breaker is None or self._breaker.allows())
        )

    @property
    def admitting(self) -> bool:
        """
        C{True} when the operator lets this backend take new traffic and it
        is not at its connection limit, whatever its health: what a pool
        in panic (every backend down) chooses from.
        """
        return self.state is AdminState.active and not self.full

    def acquire(self) -> None:
        """
        Count one more connection or request in flight.
        """
        self.activeConnections += 1
        self.totalConnections += 1

    def release(self) -> None:
        """
        Count one fewer in flight.  Callers release exactly once per acquire.
        """
        if self.activeConnections <= 0:
            raise RuntimeError(f"backend {self.name} released more than acquired")
        self.activeConnections -= 1
        pool = self.pool
        if pool is not None and pool._waiting:
            pool._wake()

    def recordSuccess(self, seconds: float | None = None, ok: bool = True) -> None:
        """
        A connect (or request) succeeded, optionally taking C{seconds}.

        @param ok: C{False} when the exchange completed but counts as a
            failure for passive checks (an L7 5xx response).
        """
        if seconds is not None:
            if self.latency is None:
                self.latency = seconds
            else:
                self.latency += LATENCY_ALPHA * (seconds - self.latency)
        if not ok:
            self._passiveFailure("5xx response")
            return
        self.consecutiveFailures = 0
        breaker = self._breaker
        if breaker is not None:
            breaker.succeeded()
        passive = self.passive
        if passive is not None:
            passive.succeeded(self)

    def recordFailure(self, reason: str, heldAgainst: bool = True) -> None:
        """
        A connect or an exchange failed or timed out, for C{reason}.

        @param heldAgainst: whether it says something of the backend: when
            C{False} (an L7 retry cut short by the request's overall
            deadline) it is counted, but neither in the consecutive
            failures nor by the passive checks (breaker, outlier detection).
        """
        self.failures += 1
        self.lastFailureReason = reason
        if heldAgainst:
            self.consecutiveFailures += 1
            self._passiveFailure(reason)

    def _passiveFailure(self, reason: str) -> None:
        breaker = self.breaker
        if breaker is not None:
            breaker.failed()
        passive = self.passive
        if passive is not None:
            passive.failed(self, reason)
