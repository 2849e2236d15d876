"""
Runtime state of backends and pools: who may take traffic, and the counters.

A L{Pool} owns its L{Backend}s and one strategy.  Protocols ask the pool to
L{pick <Pool.pick>} a backend, then account for the connection with
L{Backend.acquire} and L{Backend.release}.
"""

from __future__ import annotations

import enum
import random as _random
from typing import Any, Iterable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    ILatencyObserver,
    IMembershipAware,
    IStrategy,
)

# Weight given to each new latency sample in the moving average.
LATENCY_ALPHA = 0.3

# Upper bounds (seconds) of the latency histogram's buckets; the last is +Inf.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    float("inf"),
)


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
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return

    @property
    def count(self) -> int:
        """
        Observations in all.
        """
        return sum(self.counts)


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
    @ivar healthy: last verdict of health checking (C{True} with none).
    @ivar state: the operator's L{AdminState}.
    @ivar responses: L7 responses by status class (index 1 for 1xx ... 5
        for 5xx; index 0 for requests that got no response).
    @ivar responseTimes: L7 response times.
    """

    name: str
    address: str | None
    port: int | None
    endpoint: str
    configuredWeight: int = 1
    maxConnections: int | None = None
    activeConnections: int = 0
    totalConnections: int = 0
    failures: int = 0
    consecutiveFailures: int = 0
    lastFailureReason: str | None = None
    latency: float | None = None
    healthy: bool = True
    state: AdminState = AdminState.active
    responses: list[int] = attrs.field(factory=lambda: [0] * 6)
    responseTimes: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    def recordResponse(self, status: int, seconds: float) -> None:
        """
        An L7 response with C{status} finished after C{seconds}; status 0
        counts a request that got no response from this backend.
        """
        self.responses[min(status // 100, 5)] += 1
        self.responseTimes.observe(seconds)

    @property
    def weight(self) -> int:
        """
        The effective weight (the configured one until slow start exists).
        """
        return self.configuredWeight

    @property
    def full(self) -> bool:
        """
        C{True} when at C{maxConnections}.
        """
        return (
            self.maxConnections is not None
            and self.activeConnections >= self.maxConnections
        )

    @property
    def usable(self) -> bool:
        """
        C{True} when this backend may take a new connection now.
        """
        return self.healthy and self.state is AdminState.active and not self.full

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

    def recordSuccess(self, seconds: float | None = None) -> None:
        """
        A connect (or request) succeeded, optionally taking C{seconds}.
        """
        self.consecutiveFailures = 0
        if seconds is not None:
            if self.latency is None:
                self.latency = seconds
            else:
                self.latency += LATENCY_ALPHA * (seconds - self.latency)

    def recordFailure(self, reason: str) -> None:
        """
        A connect failed or timed out, for C{reason}.
        """
        self.failures += 1
        self.consecutiveFailures += 1
        self.lastFailureReason = reason


@implementer(IChoiceContext)
@attrs.frozen
class ChoiceContext:
    """
    The L{IChoiceContext} handed to L{IStrategy.choose}.
    """

    clientAddress: Any
    random: _random.Random
    clock: IReactorTime
    request: Any = None
    hashKey: bytes | None = None

    @property
    def clientHost(self) -> str | None:
        """
        The client's IP address, when its address has one.
        """
        return getattr(self.clientAddress, "host", None)


@attrs.define(eq=False)
class Pool:
    """
    A named set of backends behind one strategy.

    @ivar name: the pool's name.
    @ivar algorithm: the canonical name of the strategy's factory.
    @ivar strategy: the L{IStrategy} in use.
    @ivar clock: the reactor, for contexts and timers.
    @ivar random: the randomness given to the strategy.
    @ivar noBackend: picks that found no usable backend.
    """

    name: str
    algorithm: str
    strategy: IStrategy
    clock: IReactorTime
    random: _random.Random = attrs.field(factory=_random.Random)
    _backends: list[Backend] = attrs.field(factory=list, alias="backends")
    noBackend: int = 0
    _observerFor: Any = attrs.field(default=None, init=False, repr=False)
    _observer: Any = attrs.field(default=None, init=False, repr=False)

    _log = Logger()

    def __attrs_post_init__(self) -> None:
        self._membershipChanged()

    @property
    def backends(self) -> Sequence[Backend]:
        """
        All backends, in configuration order.
        """
        return tuple(self._backends)

    def backend(self, name: str) -> Backend | None:
        """
        The backend called C{name}, or C{None}.
        """
        for b in self._backends:
            if b.name == name:
                return b
        return None

    def addBackend(self, backend: Backend) -> None:
        """
        Add C{backend} at the end.

        @raise ValueError: a backend of that name is already there.
        """
        if self.backend(backend.name) is not None:
            raise ValueError(f"pool {self.name}: duplicate server {backend.name}")
        self._backends.append(backend)
        self._membershipChanged()

    def removeBackend(self, name: str) -> Backend:
        """
        Remove and return the backend called C{name}.

        @raise KeyError: no such backend.
        """
        b = self.backend(name)
        if b is None:
            raise KeyError(name)
        self._backends.remove(b)
        self._membershipChanged()
        return b

    def setStrategy(self, algorithm: str, strategy: IStrategy) -> None:
        """
        Replace the strategy; counters and backends are kept.
        """
        self.algorithm = algorithm
        self.strategy = strategy
        self._membershipChanged()

    @property
    def _latencyObserver(self) -> ILatencyObserver | None:
        # Adapting on every response costs more than the rest of
        # observeLatency; the answer only changes with the strategy.
        strategy = self.strategy
        if self._observerFor is not strategy:
            self._observerFor = strategy
            self._observer = ILatencyObserver(strategy, None)
        return self._observer

    def _membershipChanged(self) -> None:
        aware = IMembershipAware(self.strategy, None)
        if aware is not None:
            aware.membershipChanged(tuple(self._backends))

    def candidates(self, exclude: Iterable[Backend] = ()) -> list[Backend]:
        """
        The backends that may take a new connection now, minus C{exclude}.
        """
        excluded = set(map(id, exclude))
        return [b for b in self._backends if b.usable and id(b) not in excluded]

    def pick(
        self,
        clientAddress: Any = None,
        request: Any = None,
        hashKey: bytes | None = None,
        exclude: Iterable[Backend] = (),
    ) -> Backend | None:
        """
        Ask the strategy for a usable backend.

        @param exclude: backends already tried for this connection.
        @return: the chosen L{Backend}, or C{None} when none is usable.
        """
        candidates = self.candidates(exclude)
        if not candidates:
            self.noBackend += 1
            return None
        context = ChoiceContext(
            clientAddress=clientAddress,
            random=self.random,
            clock=self.clock,
            request=request,
            hashKey=hashKey,
        )
        try:
            chosen = self.strategy.choose(candidates, context)
        except Exception:
            # A broken plugin must not take the listener down with it.
            self._log.failure(
                "strategy {algorithm} of pool {pool} failed; using the first candidate",
                algorithm=self.algorithm,
                pool=self.name,
            )
            return candidates[0]
        if chosen not in candidates:
            # A broken plugin must not route to an unusable backend.
            self._log.error(
                "strategy {algorithm} of pool {pool} returned a non-candidate "
                "{chosen!r}; using the first candidate",
                algorithm=self.algorithm,
                pool=self.name,
                chosen=chosen,
            )
            chosen = candidates[0]
        return chosen

    def observeLatency(self, backend: Backend, seconds: float) -> None:
        """
        Record a successful connect or response that took C{seconds}.
        """
        backend.recordSuccess(seconds)
        observer = self._latencyObserver
        if observer is not None:
            try:
                observer.latencyObserved(backend, seconds)
            except Exception:
                self._log.failure(
                    "strategy {algorithm} of pool {pool} failed to observe latency",
                    algorithm=self.algorithm,
                    pool=self.name,
                )
