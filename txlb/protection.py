"""
Passive protection of a pool's backends from live traffic: outlier
detection and circuit breakers.

An L{OutlierDetector} watches every backend of one pool (it is each
backend's C{passive}) and ejects a backend that fails too many times in a
row, for longer each time it does so again.  A L{CircuitBreaker} watches one
backend (it is the backend's C{breaker}) and stops traffic to it while too
large a share of its recent requests fails, then lets a few probes through
before trusting it again.

Both are driven by L{txlb.pool.Backend.recordSuccess} and
L{txlb.pool.Backend.recordFailure}, and time only passes for them through
the injected clock.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txlb._configvalues import BreakerConfig, OutlierConfig
from txlb.pool import AdminState

if TYPE_CHECKING:
    from txlb.pool import Backend, Pool


@attrs.define(eq=False)
class _Watch:
    """
    What an L{OutlierDetector} knows of one backend.

    @ivar failures: failures in a row since the last success or ejection.
    @ivar inARow: ejections in a row, before decay since C{returnedAt}.
    @ivar returnedAt: when the backend last came back from an ejection, or
        C{None}.
    @ivar until: when the current ejection ends, or C{None}.
    @ivar timer: the call that ends it.
    @ivar refusalLogged: a refused ejection was logged since the last
        success or ejection.
    """

    failures: int = 0
    inARow: int = 0
    returnedAt: float | None = None
    until: float | None = None
    timer: IDelayedCall | None = None
    refusalLogged: bool = False


@attrs.define(eq=False)
class OutlierDetector:
    """
    Eject a pool's backends that fail live traffic, Envoy style.

    Set it as the C{passive} of every backend of C{pool}.  After
    C{config.consecutiveFailures} failures in a row (connect failures,
    timeouts, 5xx responses: whatever the backend records), the backend is
    ejected (C{backend.ejected = True}) for C{baseEjectionTime * n}
    seconds, at most C{maxEjectionTime}, where C{n} counts its ejections in
    a row.  C{n} decays: each full C{baseEjectionTime} the backend spends
    back in rotation without being ejected lowers it by one, down to 0.
    C{n} stops growing once the ejection time reaches C{maxEjectionTime}, so
    that a backend that recovers is forgiven in a bounded time.  Outcomes
    reported while a backend is ejected (of requests it took before) do not
    count.

    At most C{maxEjectionPercent} of the pool's backends are ejected at
    once, except that in a pool of two or more backends one may always be
    ejected, as in Envoy.  A pool of one backend is the exception to the
    exception: its backend is ejected only when C{maxEjectionPercent} is
    100, because unlike Envoy (whose panic threshold routes to ejected
    backends when too few are left) a txlb pool without C{panic} would
    refuse every connection meanwhile, turning a flaky backend into a sure
    outage.  A refused ejection is counted in C{ejectionsRefused} and
    retried at the backend's next failure.

    @ivar pool: the L{txlb.pool.Pool} watched; its C{backends} are what the
        percentage is of, and its C{availabilityChanged()}, when it has
        one, is called whenever a backend comes back.
    @ivar config: the L{OutlierConfig}.
    @ivar clock: the L{IReactorTime} that ends ejections.
    @ivar ejections: backends ejected, ever.
    @ivar ejectionsActive: backends ejected now.
    @ivar ejectionsRefused: ejections refused by C{maxEjectionPercent}.
    """

    pool: Pool
    config: OutlierConfig
    clock: IReactorTime
    ejections: int = attrs.field(default=0, init=False)
    ejectionsActive: int = attrs.field(default=0, init=False)
    ejectionsRefused: int = attrs.field(default=0, init=False)
    _watches: dict[Backend, _Watch] = attrs.field(factory=dict, init=False, repr=False)

    _log = Logger()

    def succeeded(self, backend: Backend) -> None:
        """
        C{backend} served a request: its failures in a row start over.
        """
        watch = self._watches.get(backend)
        if watch is not None:
            watch.failures = 0
            watch.refusalLogged = False

    def failed(self, backend: Backend, reason: str) -> None:
        """
        C{backend} failed a request for C{reason}; eject it when that makes
        C{consecutiveFailures} in a row.
        """
        if backend.state is not AdminState.active:
            # Draining or disabled: it is leaving or out already; ejecting
            # it would only use up the pool's ejection budget.
            return
        watch = self._watches.get(backend)
        if watch is None:
            if backend.pool is not self.pool:
                # A request of a backend that left the pool ended late:
                # watching it again would leak, and could use up the
                # pool's ejection budget.
                return
            watch = self._watches[backend] = _Watch()
        if watch.until is not None:
            return
        watch.failures += 1
        if watch.failures >= self.config.consecutiveFailures:
            self._eject(backend, watch, reason)

    def _mayEject(self) -> bool:
        """
        Whether one more backend may be ejected now.
        """
        total = len(self.pool.backends)
        active = self.ejectionsActive
        if (active + 1) * 100 <= self.config.maxEjectionPercent * total:
            return True
        return active == 0 and total >= 2

    def _decayed(self, watch: _Watch, now: float) -> int:
        """
        The ejections in a row of C{watch} once decay up to C{now} is
        applied.
        """
        if watch.returnedAt is None or watch.inARow == 0:
            return watch.inARow
        steps = math.floor((now - watch.returnedAt) / self.config.baseEjectionTime)
        return max(0, watch.inARow - max(0, steps))

    def _eject(self, backend: Backend, watch: _Watch, reason: str) -> None:
        if backend.ejected:
            # Someone else took it out of rotation; not ours to end.
            return
        if not self._mayEject():
            self.ejectionsRefused += 1
            if not watch.refusalLogged:
                watch.refusalLogged = True
                self._log.warn(
                    "pool {pool}: backend {backend} not ejected after {failures} "
                    "failures in a row (last: {reason}): {active} of {total} "
                    "backends ejected already (max_ejection_percent "
                    "{percent})",
                    pool=self.pool.name,
                    backend=backend.name,
                    failures=watch.failures,
                    reason=reason,
                    active=self.ejectionsActive,
                    total=len(self.pool.backends),
                    percent=self.config.maxEjectionPercent,
                )
            return
        config = self.config
        now = self.clock.seconds()
        inARow = self._decayed(watch, now)
        if config.baseEjectionTime * inARow < config.maxEjectionTime:
            inARow += 1
        duration = min(config.baseEjectionTime * inARow, config.maxEjectionTime)
        failures = watch.failures
        watch.inARow = inARow
        watch.failures = 0
        watch.refusalLogged = False
        watch.returnedAt = None
        watch.until = now + duration
        watch.timer = self.clock.callLater(duration, self._return, backend, watch)
        backend.ejected = True
        self.ejections += 1
        self.ejectionsActive += 1
        self._log.warn(
            "pool {pool}: backend {backend} ejected for {duration:g} s after "
            "{failures} failures in a row (last: {reason})",
            pool=self.pool.name,
            backend=backend.name,
            duration=duration,
            failures=failures,
            reason=reason,
        )

    def _unwatch(self, backend: Backend, watch: _Watch) -> None:
        """
        End C{watch}'s ejection, if any, without waking anybody.
        """
        timer, watch.timer = watch.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if watch.until is None:
            return
        watch.until = None
        watch.returnedAt = self.clock.seconds()
        self.ejectionsActive -= 1
        backend.ejected = False

    def _return(self, backend: Backend, watch: _Watch) -> None:
        watch.timer = None
        self._unwatch(backend, watch)
        self._log.info(
            "pool {pool}: backend {backend} back from ejection",
            pool=self.pool.name,
            backend=backend.name,
        )
        wake: Callable[[], None] | None = getattr(
            self.pool, "availabilityChanged", None
        )
        if wake is not None:
            wake()

    def forget(self, backend: Backend) -> None:
        """
        Stop watching C{backend} (it left the pool): cancel its ejection
        timer and drop what is known of it.  When it was ejected it is
        returned to rotation at once, since nothing would end its ejection
        otherwise.
        """
        watch = self._watches.pop(backend, None)
        if watch is not None:
            self._unwatch(backend, watch)

    def stop(self) -> None:
        """
        Cancel every timer (service stop, or a reload that replaces this
        detector); the backends ejected are returned to rotation at once and
        nothing is watched any more.  Queued waiters are not woken.
        """
        watches, self._watches = self._watches, {}
        for backend, watch in watches.items():
            self._unwatch(backend, watch)

    def describe(self, backend: Backend) -> dict[str, Any]:
        """
        What is known of C{backend}, for the API.

        @return: a C{dict} with C{ejected} (by this detector), C{until} (the
            clock time its ejection ends, or C{None}), C{ejections_in_a_row}
            (after decay: what the next ejection's length is based on) and
            C{consecutive_failures}.
        """
        watch = self._watches.get(backend)
        if watch is None:
            watch = _Watch()
        return {
            "ejected": watch.until is not None,
            "until": watch.until,
            "ejections_in_a_row": self._decayed(watch, self.clock.seconds()),
            "consecutive_failures": watch.failures,
        }


class BreakerState(enum.Enum):
    """
    The states of a L{CircuitBreaker}.

    @cvar closed: traffic flows; outcomes are counted.
    @cvar open: no traffic, until C{openTime} has passed.
    @cvar half_open: a few probes may go through.
    """

    closed = "closed"
    open = "open"
    half_open = "half_open"


@attrs.define(eq=False)
class CircuitBreaker:
    """
    Stop traffic to one backend while too many of its requests fail.

    Closed, it keeps the last C{config.window} outcomes and opens when at
    least C{minRequests} are known and the share of failures among them is
    at least C{failureRatio}.  Open, L{allows} is C{False}; outcomes that
    arrive meanwhile (of requests started before it opened) are ignored.
    After C{openTime} it is half-open: L{allows} is C{True} until
    C{halfOpenRequests} probes were let through (L{attempt} counts one).  A
    failure opens it again at once; when as many probes have succeeded, it
    closes with an empty window.

    Outcomes carry no mark of the request they belong to, so a success
    while half-open counts as a probe's only while fewer probes have
    succeeded than were let through.  A probe that never reports (its
    client left) must not keep the breaker half-open and shut for ever:
    when the last probe has been let through and they have not all
    reported within C{openTime}, a new round of probes starts.

    @ivar config: the L{BreakerConfig}.
    @ivar clock: the L{IReactorTime} that ends the open state.
    @ivar name: what the log calls the backend.
    @ivar onAvailable: called with no arguments whenever L{allows} turns
        C{True} again (open to half-open, a new round of probes, half-open
        to closed), e.g. a pool's C{availabilityChanged} to wake its
        queue; or C{None}.
    @ivar state: the L{BreakerState}.
    @ivar opened: times it opened.
    """

    config: BreakerConfig
    clock: IReactorTime
    name: str = ""
    onAvailable: Callable[[], None] | None = None
    state: BreakerState = attrs.field(default=BreakerState.closed, init=False)
    opened: int = attrs.field(default=0, init=False)
    # A ring buffer of the last outcomes (True: success).
    _outcomes: list[bool] = attrs.field(factory=list, init=False, repr=False)
    _next: int = attrs.field(default=0, init=False, repr=False)
    _failures: int = attrs.field(default=0, init=False, repr=False)
    _probes: int = attrs.field(default=0, init=False, repr=False)
    _probed: int = attrs.field(default=0, init=False, repr=False)
    _until: float | None = attrs.field(default=None, init=False, repr=False)
    _timer: IDelayedCall | None = attrs.field(default=None, init=False, repr=False)

    _log = Logger()

    def allows(self) -> bool:
        """
        Whether a new request may go to the backend now.  Changes nothing.
        """
        state = self.state
        if state is BreakerState.closed:
            return True
        if state is BreakerState.open:
            return False
        return self._probes < self.config.halfOpenRequests

    def attempt(self) -> None:
        """
        A request was sent to the backend (it was picked).
        """
        if self.state is BreakerState.half_open:
            self._probes += 1
            if self._probes == self.config.halfOpenRequests:
                # Every probe is out; allows() is False until they report.
                self._schedule(self.config.openTime, self._probesLate)

    def succeeded(self) -> None:
        """
        A request to the backend succeeded.
        """
        state = self.state
        if state is BreakerState.closed:
            self._record(True)
        elif state is BreakerState.half_open and self._probed < self._probes:
            self._probed += 1
            if self._probed >= self.config.halfOpenRequests:
                self._close()

    def failed(self) -> None:
        """
        A request to the backend failed.
        """
        state = self.state
        if state is BreakerState.closed:
            self._record(False)
            seen = len(self._outcomes)
            if (
                seen >= self.config.minRequests
                and self._failures >= self.config.failureRatio * seen
            ):
                self._open(f"{self._failures} of {seen} failed")
        elif state is BreakerState.half_open:
            self._open("a probe failed")

    def _record(self, ok: bool) -> None:
        outcomes = self._outcomes
        if len(outcomes) < self.config.window:
            outcomes.append(ok)
        else:
            index = self._next
            if not outcomes[index]:
                self._failures -= 1
            outcomes[index] = ok
            self._next = (index + 1) % len(outcomes)
        if not ok:
            self._failures += 1

    def _transition(self, new: BreakerState, why: str) -> None:
        self._log.info(
            "circuit breaker of backend {name}: {old} -> {new} ({why})",
            name=self.name,
            old=self.state.value,
            new=new.value,
            why=why,
        )
        self.state = new

    def _schedule(self, seconds: float, f: Callable[[], None]) -> None:
        self._cancelTimer()
        self._until = self.clock.seconds() + seconds
        self._timer = self.clock.callLater(seconds, f)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        self._until = None
        if timer is not None and timer.active():
            timer.cancel()

    def _open(self, why: str) -> None:
        self._transition(BreakerState.open, why)
        self.opened += 1
        self._schedule(self.config.openTime, self._halfOpen)

    def _available(self) -> None:
        if self.onAvailable is not None:
            self.onAvailable()

    def _halfOpen(self) -> None:
        self._timer = None
        self._until = None
        self._transition(
            BreakerState.half_open, f"{self.config.openTime:g} s passed"
        )
        self._probes = 0
        self._probed = 0
        self._available()

    def _probesLate(self) -> None:
        self._timer = None
        self._until = None
        self._log.info(
            "circuit breaker of backend {name}: {probed} of {probes} probes "
            "reported within {seconds:g} s; probing again",
            name=self.name,
            probed=self._probed,
            probes=self._probes,
            seconds=self.config.openTime,
        )
        self._probes = 0
        self._probed = 0
        self._available()

    def _close(self) -> None:
        self._cancelTimer()
        self._transition(
            BreakerState.closed, f"{self._probed} probes succeeded"
        )
        self._outcomes = []
        self._next = 0
        self._failures = 0
        self._probes = 0
        self._probed = 0
        self._available()

    def stop(self) -> None:
        """
        Cancel the timer (service stop, or a reload that replaces this
        breaker); the state stays as it is.
        """
        self._cancelTimer()

    def describe(self) -> dict[str, Any]:
        """
        The breaker's state for the API.

        @return: a C{dict} with C{state} (its value), C{opened}, C{window}
            (outcomes counted, when closed), C{failures} (failures among
            them), C{probes} (let through, when half-open), C{probes_succeeded},
            and C{until}: the clock time the open state ends (or, when
            every probe is out, a new round of probes starts), or C{None}.
        """
        return {
            "state": self.state.value,
            "opened": self.opened,
            "window": len(self._outcomes),
            "failures": self._failures,
            "probes": self._probes,
            "probes_succeeded": self._probed,
            "until": self._until,
        }
