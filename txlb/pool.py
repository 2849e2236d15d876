"""
Runtime state of pools: which backend takes the next connection or request,
the queue of those waiting for one, and the record of recent decisions.

A L{Pool} owns its L{Backend}s (L{txlb.backend}, whose names this module
exports too) and one strategy.  Protocols ask the pool to L{pick
<Pool.pick>} a backend, then account for the connection with
L{Backend.acquire} and L{Backend.release}.
"""

from __future__ import annotations

import collections
import random as _random
from bisect import bisect_left
from typing import Any, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txlb.backend import (
    _LAST_BOUND,
    LATENCY_ALPHA,
    LATENCY_BUCKETS,
    RESULTS_KEPT,
    SLOW_START_FLOOR,
    AdminState,
    Backend,
    CheckResult,
    HealthRecord,
    LatencyHistogram,
)
from txlb.interfaces import (
    IChoiceContext,
    IChoiceExplainer,
    ILatencyObserver,
    IMembershipAware,
    IStrategy,
)

__all__ = [
    "DECISIONS_KEPT",
    "DECISION_SAMPLE",
    "LATENCY_ALPHA",
    "LATENCY_BUCKETS",
    "RESULTS_KEPT",
    "SLOW_START_FLOOR",
    "AdminState",
    "Backend",
    "CheckResult",
    "ChoiceContext",
    "Decision",
    "HealthRecord",
    "LatencyHistogram",
    "Pool",
    "QueueFull",
    "QueueTimeout",
]

# One pick in this many is recorded with its candidates for the admin API's
# recent decisions (besides every pick that found nothing or panicked).
DECISION_SAMPLE = 16
# Recorded decisions kept per pool.
DECISIONS_KEPT = 50

class QueueFull(Exception):
    """
    A pool's queue of waiting connections or requests is full.
    """


class QueueTimeout(Exception):
    """
    A connection or request waited in a pool's queue for longer than the
    pool's queue timeout.
    """


@implementer(IChoiceContext)
class ChoiceContext:
    """
    The L{IChoiceContext} handed to L{IStrategy.choose}: one per pick, not
    to be changed.

    A plain slotted class rather than a frozen attrs one: one is made for
    every request, and a frozen class's constructor costs four times as
    much.
    """

    __slots__ = ("clientAddress", "random", "clock", "request", "hashKey")

    def __init__(
        self,
        clientAddress: Any,
        random: _random.Random,
        clock: IReactorTime,
        request: Any = None,
        hashKey: bytes | None = None,
    ) -> None:
        self.clientAddress = clientAddress
        self.random = random
        self.clock = clock
        self.request = request
        self.hashKey = hashKey

    def __repr__(self) -> str:
        return (
            f"ChoiceContext(clientAddress={self.clientAddress!r}, "
            f"request={self.request!r}, hashKey={self.hashKey!r})"
        )

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
    @ivar panic: when no backend is usable, choose among every backend the
        operator has not drained or disabled, healthy or not (C{False}:
        fail fast).
    @ivar panics: picks made in panic.
    @ivar maxQueue: how many connections or requests may wait for a
        backend below its C{max_connections} (0: refuse at once).
    @ivar queueTimeout: seconds one may wait, or C{None} for no limit.
    @ivar dropped: refusals by reason (C{"no_backend"}, C{"queue_full"},
        C{"queue_timeout"}).
    @ivar outlierDetector: the pool's L{txlb.protection.OutlierDetector},
        or C{None}.
    """

    name: str
    algorithm: str
    strategy: IStrategy
    clock: IReactorTime
    random: _random.Random = attrs.field(factory=_random.Random)
    _backends: list[Backend] = attrs.field(factory=list, alias="backends")
    noBackend: int = 0
    panic: bool = False
    panics: int = 0
    maxQueue: int = 0
    queueTimeout: float | None = 5.0
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)
    outlierDetector: Any = None
    decisions: collections.deque[Decision] = attrs.field(
        factory=lambda: collections.deque(maxlen=DECISIONS_KEPT), repr=False
    )
    _sampleCountdown: int = attrs.field(default=0, init=False, repr=False)
    _waiting: collections.deque[_Waiter] = attrs.field(
        factory=collections.deque, init=False, repr=False
    )
    _observerFor: Any = attrs.field(default=None, init=False, repr=False)
    _observer: Any = attrs.field(default=None, init=False, repr=False)
    _explainerFor: Any = attrs.field(default=None, init=False, repr=False)
    _explainer: Any = attrs.field(default=None, init=False, repr=False)
    # The usable backends, kept between picks while nothing they depend on
    # changes without telling (the setters of Backend's health, state,
    # ejection, limit and breaker, and membership changes, reset it): None
    # when stale, and always None while some backend has a connection limit
    # or a breaker, whose answers change with every request.
    _usable: tuple[Backend, ...] | None = attrs.field(
        default=None, init=False, repr=False
    )

    _log = Logger()

    def __attrs_post_init__(self) -> None:
        for backend in self._backends:
            backend.pool = self
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
        backend.pool = self
        self._backends.append(backend)
        self._membershipChanged()
        self.availabilityChanged()

    def removeBackend(self, name: str) -> Backend:
        """
        Remove and return the backend called C{name}.

        @raise KeyError: no such backend.
        """
        b = self.backend(name)
        if b is None:
            raise KeyError(name)
        self._backends.remove(b)
        b.pool = None
        self._membershipChanged()
        return b

    def setBackends(self, backends: Iterable[Backend]) -> None:
        """
        Replace the backends with C{backends}, in that order (a reload):
        backends kept keep their state and counters; backends left out no
        longer belong to the pool (what they have in flight finishes).
        """
        new = list(backends)
        names = set()
        for b in new:
            if b.name in names:
                raise ValueError(f"pool {self.name}: duplicate server {b.name}")
            names.add(b.name)
        keep = set(map(id, new))
        for b in self._backends:
            if id(b) not in keep:
                b.pool = None
        for b in new:
            b.pool = self
        self._backends = new
        self._membershipChanged()
        self.availabilityChanged()

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

    @property
    def _choiceExplainer(self) -> IChoiceExplainer | None:
        # As for _latencyObserver.
        strategy = self.strategy
        if self._explainerFor is not strategy:
            self._explainerFor = strategy
            self._explainer = IChoiceExplainer(strategy, None)
        return self._explainer

    def _membershipChanged(self) -> None:
        self._usable = None
        aware = IMembershipAware(self.strategy, None)
        if aware is not None:
            aware.membershipChanged(tuple(self._backends))

    def candidates(self, exclude: Iterable[Backend] = ()) -> list[Backend]:
        """
        The backends that may take a new connection now, minus C{exclude}.
        """
        excluded = set(map(id, exclude))
        return [b for b in self._backends if b.usable and id(b) not in excluded]

    def _usableNow(self) -> tuple[Backend, ...]:
        """
        The usable backends, from the cache when it is valid; refill it when
        it may be kept.
        """
        usable = self._usable
        if usable is not None:
            return usable
        backends = self._backends
        usable = tuple(b for b in backends if b.usable)
        for b in backends:
            if b._maxConnections is not None or b._breaker is not None:
                return usable
        self._usable = usable
        return usable

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
        candidates: Sequence[Backend]
        if exclude:
            candidates = self.candidates(exclude)
        else:
            candidates = self._usable
            if candidates is None:
                candidates = self._usableNow()
        panicked = False
        if not candidates:
            if self.panic:
                candidates = self._panicCandidates(exclude)
            if not candidates:
                self.noBackend += 1
                self._record(clientAddress, None, (), "no usable backend")
                return None
            self.panics += 1
            panicked = True
        context = ChoiceContext(clientAddress, self.random, self.clock, request, hashKey)
        try:
            chosen = self.strategy.choose(candidates, context)
        except Exception:
            # A broken plugin must not take the listener down with it.
            self._log.failure(
                "strategy {algorithm} of pool {pool} failed; using the first candidate",
                algorithm=self.algorithm,
                pool=self.name,
            )
            chosen = candidates[0]
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
        breaker = chosen._breaker
        if breaker is not None:
            breaker.attempt()
        self._sampleCountdown -= 1
        if self._sampleCountdown <= 0 or panicked:
            self._sampleCountdown = DECISION_SAMPLE
            self._record(clientAddress, chosen, candidates, self._reason(
                chosen, candidates, context, panicked
            ))
        return chosen

    def _reason(
        self, chosen: Backend, candidates: Sequence[Backend], context: Any, panicked: bool
    ) -> str:
        explainer = self._choiceExplainer
        reason = None
        if explainer is not None:
            try:
                reason = explainer.explain(chosen, candidates, context)
            except Exception:
                reason = None
        if reason is None:
            reason = f"chosen by {self.algorithm}"
        if panicked:
            reason = "panic (no backend usable): " + reason
        return reason

    def _record(
        self, clientAddress: Any, chosen: Backend | None,
        candidates: Sequence[Backend], reason: str,
    ) -> None:
        # Positional arguments and a list: one pick in DECISION_SAMPLE pays
        # for this, and keywords and a generator cost half as much again.
        self.decisions.append(
            Decision(
                self.clock.seconds(),
                getattr(clientAddress, "host", None),
                chosen.name if chosen is not None else None,
                tuple([
                    (b.name, b.activeConnections, float(b.weight), b.latency)
                    for b in candidates
                ]),
                reason,
            )
        )

    def _panicCandidates(self, exclude: Iterable[Backend]) -> list[Backend]:
        # Panic only when nothing at all is usable: not when the usable
        # backends were all tried already by this connection.
        if any(b.usable for b in self._backends):
            return []
        excluded = set(map(id, exclude))
        return [b for b in self._backends if b.admitting and id(b) not in excluded]

    def queueable(self) -> bool:
        """
        Whether a connection that found no usable backend may wait for
        one: the pool has a queue and some backend is up but at its
        C{max_connections}.
        """
        if self.maxQueue <= 0:
            return False
        for b in self._backends:
            if (
                b.full
                and b.healthy
                and b.state is AdminState.active
                and not b.ejected
                and (b.breaker is None or b.breaker.allows())
            ):
                return True
        return False

    def wait(
        self,
        clientAddress: Any = None,
        request: Any = None,
        hashKey: bytes | None = None,
        exclude: Iterable[Backend] = (),
    ) -> Deferred[Backend]:
        """
        Wait in the pool's queue for a backend to free up, then
        L{pick} it.

        Call after L{pick} returned C{None} and L{queueable} is C{True}.
        The result is the picked backend (not yet acquired: acquire it in
        the callback, which runs as soon as a backend frees up).  It fails
        with L{QueueFull} at once when L{maxQueue} are waiting, with
        L{QueueTimeout} after L{queueTimeout}; cancelling it leaves the
        queue.
        """
        if len(self._waiting) >= self.maxQueue:
            self.dropped["queue_full"] += 1
            return fail(QueueFull(f"pool {self.name}: queue full ({self.maxQueue})"))
        waiter = _Waiter(self, (clientAddress, request, hashKey, tuple(exclude)))
        self._waiting.append(waiter)
        if self.queueTimeout is not None:
            waiter.timer = self.clock.callLater(self.queueTimeout, waiter.expire)
        return waiter.deferred

    @property
    def queued(self) -> int:
        """
        Connections or requests waiting in the queue now.
        """
        return len(self._waiting)

    def closeQueue(self, why: str) -> None:
        """
        The pool is going away (a reload removed it): every connection or
        request waiting in its queue gives up now, as if its queue timeout
        had passed (L{QueueTimeout} with C{why}), instead of waiting for it.
        """
        while self._waiting:
            self._waiting[0].giveUp(why)

    def availabilityChanged(self) -> None:
        """
        A backend may have become usable (health, ejection, breaker, a new
        backend): give queued connections or requests a chance.
        """
        if self._waiting:
            self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        while waiting:
            waiter = waiting[0]
            clientAddress, request, hashKey, exclude = waiter.arguments
            candidates = self.candidates(exclude)
            if not candidates:
                return
            backend = self.pick(clientAddress, request, hashKey, exclude)
            if backend is None:
                return
            waiting.popleft()
            waiter.finish(backend)

    def observeResponse(self, backend: Backend, status: int, seconds: float) -> None:
        """
        An L7 response from C{backend} with C{status} finished after
        C{seconds}: L{Backend.recordResponse}, then L{observeLatency} (a 5xx
        counts as a failure for passive checks), in one call.
        """
        # Backend.recordResponse and LatencyHistogram.observe, inline: this
        # runs for every response.
        backend.responses[status // 100 if status < 600 else 5] += 1
        times = backend.responseTimes
        times.total += seconds
        if seconds <= _LAST_BOUND:
            times.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if status < 500 and backend._breaker is None and backend.passive is None:
            # backend.recordSuccess(seconds), inline for a backend with no
            # breaker and no outlier detection.
            latency = backend.latency
            backend.latency = (
                seconds if latency is None else latency + LATENCY_ALPHA * (seconds - latency)
            )
            backend.consecutiveFailures = 0
        else:
            backend.recordSuccess(seconds, status < 500)
        # self._latencyObserver, inline: this runs for every response.
        strategy = self.strategy
        if self._observerFor is not strategy:
            self._observerFor = strategy
            self._observer = ILatencyObserver(strategy, None)
        observer = self._observer
        if observer is not None:
            self._tellObserver(observer, backend, seconds)

    def observeLatency(self, backend: Backend, seconds: float, ok: bool = True) -> None:
        """
        Record a completed connect or response that took C{seconds}.

        @param ok: C{False} for an exchange that completed but counts as a
            failure for passive checks (an L7 5xx response).
        """
        backend.recordSuccess(seconds, ok)
        observer = self._latencyObserver
        if observer is not None:
            self._tellObserver(observer, backend, seconds)

    def _tellObserver(
        self, observer: ILatencyObserver, backend: Backend, seconds: float
    ) -> None:
        """
        Give the strategy's latency observer one observation; a broken
        plugin is logged, and the pool goes on.
        """
        try:
            observer.latencyObserved(backend, seconds)
        except Exception:
            self._log.failure(
                "strategy {algorithm} of pool {pool} failed to observe latency",
                algorithm=self.algorithm,
                pool=self.name,
            )


@attrs.frozen
class Decision:
    """
    One routing decision, recorded for the admin API.

    @ivar at: when (reactor seconds).
    @ivar client: the client's IP address, if known.
    @ivar chosen: the chosen backend's name, or C{None} when none was.
    @ivar candidates: C{(name, in flight, effective weight, latency)} of
        each candidate when the strategy chose.
    @ivar reason: why this backend (the strategy's explanation, if it
        gives one).
    """

    at: float
    client: str | None
    chosen: str | None
    candidates: tuple[tuple[str, int, float, float | None], ...]
    reason: str


@attrs.define(eq=False)
class _Waiter:
    """
    One connection or request in a L{Pool}'s queue.
    """

    pool: Pool
    arguments: tuple[Any, Any, Any, tuple[Backend, ...]]
    deferred: Deferred[Backend] = attrs.field(init=False)
    timer: IDelayedCall | None = None

    def __attrs_post_init__(self) -> None:
        self.deferred = Deferred(self._cancelled)

    def _leave(self) -> None:
        try:
            self.pool._waiting.remove(self)
        except ValueError:
            pass
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancelled(self, d: Deferred[Backend]) -> None:
        self._leave()

    def expire(self) -> None:
        """
        The queue timeout passed.
        """
        self.timer = None
        self.giveUp(f"no backend free within {self.pool.queueTimeout:g} s")

    def giveUp(self, why: str) -> None:
        """
        Leave the queue without a backend: fail with L{QueueTimeout}
        saying C{why}, counted as a queue timeout.
        """
        self._leave()
        self.pool.dropped["queue_timeout"] += 1
        self.deferred.errback(QueueTimeout(f"pool {self.pool.name}: {why}"))

    def finish(self, backend: Backend) -> None:
        """
        A backend was picked for this waiter.
        """
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.deferred.callback(backend)
