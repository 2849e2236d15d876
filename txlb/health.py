"""
Active health checking: one L{PoolHealthChecker} service per pool.

Every C{interval} seconds the checker starts a round that checks each
backend of the pool in parallel, each after its own random delay (the
jitter) and each bounded by C{timeout}.  A TCP check passes when a
connection opens; an HTTP check passes when C{GET path} answers with a
status in C{expected_status}.  Every outcome, failures included, becomes a
L{CheckResult} on the backend's L{HealthRecord}; a round never fails, so
the loop never dies.

The verdict (L{Backend.healthy}) follows these rules, applied by
L{applyResult} after each check; L{healthState} names the three states:

  - B{Pending}: a backend that is unhealthy and has not failed C{fall}
    checks in a row since it was added (a new server, or every server when
    txlb starts) takes no traffic, and comes up on its B{first} passing
    check, without waiting for C{rise} passes (as Envoy and HAProxy treat
    a first check).  While its checks fail it stays pending; once C{fall}
    have failed in a row it is simply down.  (The record keeps
    L{RESULTS_KEPT} results, so pending also ends after that many
    failures, whatever C{fall} is.)
  - B{Up}: a healthy backend goes down after C{fall} consecutive failed
    checks.
  - B{Down}: an unhealthy backend that is not pending comes back up after
    C{rise} consecutive passed checks.

Each change of verdict is logged as one line, e.g. C{backend web1 of pool
app is DOWN: connection refused (3 checks failed)}, and so is a pending
backend found down.

What talks to the backend (the TCP probe, the HTTP check's bounded body,
the reasons) is in L{txlb._healthprobe}.
"""

from __future__ import annotations

import enum
import random as _random
import re
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from txlb._healthprobe import (
    _BackendEndpoint,
    _BoundedBody,
    _CheckerError,
    _describe,
    _oneLine,
    _Probe,
    _TimedOut,
)
from txlb.pool import RESULTS_KEPT, Backend, CheckResult, Pool

if TYPE_CHECKING:
    from txlb.config import HealthCheckConfig

#: Bytes of an HTTP check's response body read at most; the rest is
#: dropped by closing the connection.
MAX_BODY = 64 * 1024

#: The User-Agent of HTTP checks, so backends can tell them from traffic.
USER_AGENT = b"txlb-health-check"

# A host[:port] that any URL parser takes as it is.
_PLAIN_HOST = re.compile(r"[A-Za-z0-9._-]+(:[0-9]+)?\Z")



class HealthState(enum.Enum):
    """
    Where a backend stands in the rules of this module's docstring.

    @cvar pending: not yet passed a check, and fewer than C{fall} failed.
    @cvar up: healthy.
    @cvar down: unhealthy and not pending.
    """

    pending = "pending"
    up = "up"
    down = "down"


def healthState(backend: Backend, config: HealthCheckConfig) -> HealthState:
    """
    The L{HealthState} of C{backend}, from its verdict and its record.
    """
    if backend.healthy:
        return HealthState.up
    health = backend.health
    kept = health.results.maxlen or RESULTS_KEPT
    # Every check failed exactly when the consecutive failures count all
    # the results, which the record can tell while it is not full.
    if health.failures < min(config.fall, kept) and health.failures == len(
        health.results
    ):
        return HealthState.pending
    return HealthState.down


def applyResult(
    backend: Backend, result: CheckResult, config: HealthCheckConfig
) -> bool:
    """
    Record C{result} on C{backend.health} and update C{backend}'s verdict
    by the rules of this module's docstring.

    No I/O and no clock: the state machine alone.

    @param backend: the backend checked.
    @param result: the outcome of one check.
    @param config: the C{rise} and C{fall} thresholds.
    @return: whether the verdict changed.
    """
    state = healthState(backend, config)
    health = backend.health
    health.results.append(result)
    health.checked = True
    if result.ok:
        health.successes += 1
        health.failures = 0
        health.passed += 1
    else:
        health.failures += 1
        health.successes = 0
        health.failed += 1
    if state is HealthState.up:
        healthy = health.failures < config.fall
    elif state is HealthState.pending:
        healthy = result.ok
    else:
        healthy = health.successes >= config.rise
    return backend.setHealthy(healthy)


class _Check:
    """
    One health check of one backend in flight: an optional jitter delay,
    then one attempt bounded by the timeout, then its result applied.

    @ivar deferred: fires with the L{CheckResult} once applied; fails with
        L{CancelledError} when cancelled, and the result is then dropped.
    """

    def __init__(self, checker: PoolHealthChecker, backend: Backend) -> None:
        self._checker = checker
        self.backend = backend
        self._timer: IDelayedCall | None = None
        self._attempt: Deferred[CheckResult] | None = None
        self._cancelled = False
        self.deferred: Deferred[CheckResult] = Deferred(self._cancel)

    def start(self, delay: float) -> None:
        """
        Begin the attempt after C{delay} seconds (at once for 0).
        """
        if delay > 0:
            self._timer = self._checker._reactor.callLater(delay, self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        self._timer = None
        self._attempt = self._checker._attempt(self.backend)
        self._attempt.addCallback(self._finished)

    def _finished(self, result: CheckResult) -> None:
        if self._cancelled:
            return
        self._checker._record(self.backend, result)
        self.deferred.callback(result)

    def _cancel(self, d: Deferred[CheckResult]) -> None:
        self._cancelled = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._attempt is not None:
            self._attempt.cancel()


class PoolHealthChecker(Service):
    """
    Checks the backends of one pool every C{interval} seconds.

    @ivar pool: the L{Pool} checked.
    @ivar config: its L{HealthCheckConfig}.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        config: HealthCheckConfig,
        reactor: Any,
        httpClientFactory: Callable[[Backend], Any] | None = None,
        random: _random.Random | None = None,
    ) -> None:
        """
        @param pool: the pool whose backends to check.
        @param config: how to check them.
        @param reactor: the reactor: L{IReactorTime} and the connect
            interfaces the backends' endpoint strings need.
        @param httpClientFactory: for HTTP checks, called with a
            L{Backend} for each check, returns an object with treq's
            C{get(url, headers=..., unbuffered=..., allow_redirects=...,
            reactor=...)} that talks to that backend (a
            L{treq.testing.StubTreq} in tests).  By default a
            L{treq.client.HTTPClient} over an L{Agent} that connects with
            the backend's endpoint string.
        @param random: draws the jitter delays.
        """
        self.pool = pool
        self.config = config
        self._reactor = reactor
        self._random = random if random is not None else _random.Random()
        self._httpPool: HTTPConnectionPool | None = None
        if httpClientFactory is None:
            httpClientFactory = self._defaultHTTPClient
            if config.type == "http":
                # Not persistent: an Agent keys cached connections by URL
                # host, which every backend shares when a Host is set, and
                # an idle connection between checks is often closed by the
                # backend's keep-alive timeout just as the next check
                # reuses it: a false failure.  A new connection per check
                # also tests accepting, as HAProxy's checks do.
                self._httpPool = HTTPConnectionPool(reactor, persistent=False)
        self._httpClientFactory = httpClientFactory
        self._inFlight: set[_Check] = set()
        self._loop: LoopingCall | None = None
        # Waiters for the first whole round; None once it finished.
        self._waiting: list[Deferred[None]] | None = []
        self.setName(f"health-{pool.name}")

    def startService(self) -> None:
        """
        Start the rounds, the first at once.
        """
        super().startService()
        if self._waiting is None:
            self._waiting = []
        # Made here, not in __init__: LoopingCall() imports the global
        # reactor, which by now is installed (building the service tree
        # must not install the default one).
        self._loop = loop = LoopingCall(self.round)
        loop.clock = self._reactor
        loop.start(self.config.interval, now=True).addErrback(
            lambda f: self._log.failure(
                "health checking of pool {pool} stopped", f, pool=self.pool.name
            )
        )

    def stopService(self) -> Deferred[Any]:
        """
        Stop the rounds and cancel the checks in flight (their results
        are not recorded).

        @return: a L{Deferred} that fires when the HTTP client's cached
            connections are closed.
        """
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        for check in list(self._inFlight):
            check.deferred.cancel()
        self._roundFinished()
        if self._httpPool is not None:
            return self._httpPool.closeCachedConnections()
        return succeed(None)

    def round(self) -> Deferred[None]:
        """
        Check every backend the pool has now, in parallel.

        @return: a L{Deferred} that fires with C{None} when every check
            finished (or was cancelled); it never fails.
        """
        checks = []
        try:
            for backend in self.pool.backends:
                checks.append(self._start(backend, self._jitterDelay()))
        except Exception:
            self._log.failure(
                "health-check round of pool {pool} failed", pool=self.pool.name
            )
        d = DeferredList(checks, consumeErrors=True)
        return d.addCallback(lambda _: self._roundFinished())

    def whenReady(self) -> Deferred[None]:
        """
        Wait for the first whole round since the service started: then
        every backend present at its start has had its first check (the
        pending ones that passed take traffic).  A service tree can start
        its listeners after it, as Envoy warms a cluster, so that traffic
        arriving at startup does not find every backend still pending.

        @return: a L{Deferred} that fires with C{None} when that round
            finished (at once if it has) or the service stopped first.
        """
        if self._waiting is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _roundFinished(self) -> None:
        waiting, self._waiting = self._waiting, None
        for d in waiting or ():
            d.callback(None)

    def checkNow(self, backend: Backend) -> Deferred[CheckResult]:
        """
        Check C{backend} at once, outside the rounds (for a server just
        added), and apply the result.

        @return: a L{Deferred} that fires with the L{CheckResult}; it fails
            with L{CancelledError} only when cancelled or when the service
            stops first.
        """
        return self._start(backend, 0.0)

    def _jitterDelay(self) -> float:
        config = self.config
        if config.jitter <= 0:
            return 0.0
        delay = self._random.random() * config.jitter * config.interval
        # Leave the attempt its whole timeout within the interval.
        return max(0.0, min(delay, config.interval - config.timeout))

    def _start(self, backend: Backend, delay: float) -> Deferred[CheckResult]:
        check = _Check(self, backend)
        self._inFlight.add(check)

        def forget(result: Any) -> Any:
            self._inFlight.discard(check)
            return result

        check.deferred.addBoth(forget)
        check.start(delay)
        return check.deferred

    def _attempt(self, backend: Backend) -> Deferred[CheckResult]:
        """
        Check C{backend} once, within the timeout.

        @return: a L{Deferred} that fires with the L{CheckResult} and never
            fails.
        """
        clock = self._reactor
        started = clock.seconds()
        timeout = self.config.timeout
        try:
            d = self._probe(backend)
        except Exception as e:
            self._log.failure(
                "health check of backend {backend} of pool {pool} raised",
                backend=backend.name,
                pool=self.pool.name,
            )
            d = fail(_CheckerError(f"{type(e).__name__}: {e}"))

        def timedOut(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure):
                return Failure(_TimedOut())
            # Cancelling found the verdict already known (an HTTP status
            # whose body was still arriving): keep it.
            return result

        def passed(outcome: tuple[bool, str]) -> CheckResult:
            ok, reason = outcome
            now = clock.seconds()
            return CheckResult(at=now, ok=ok, reason=reason, duration=now - started)

        def failed(f: Failure) -> CheckResult:
            try:
                reason = _describe(f, timeout)
            except Exception:
                reason = None
            if reason is None:
                self._log.failure(
                    "unexpected error checking backend {backend} of pool {pool}",
                    f,
                    backend=backend.name,
                    pool=self.pool.name,
                )
                reason = _oneLine(f"{type(f.value).__name__}: {f.value}")
            now = clock.seconds()
            return CheckResult(at=now, ok=False, reason=reason, duration=now - started)

        d.addTimeout(timeout, clock, onTimeoutCancel=timedOut)
        # The errback comes after the callback so that any error, ours
        # included, is a failed check and never a round that does not end.
        return d.addCallback(passed).addErrback(failed)

    def _probe(self, backend: Backend) -> Deferred[tuple[bool, str]]:
        """
        Start one check of C{backend} of the configured type.

        @return: a L{Deferred} that fires with C{(passed, reason)} or fails
            with why the backend could not be reached.
        """
        kind = self.config.type
        if kind == "tcp":
            return self._tcpProbe(backend)
        if kind == "http":
            return self._httpProbe(backend)
        raise ValueError(f"unknown health check type {kind!r}")

    def _tcpProbe(self, backend: Backend) -> Deferred[tuple[bool, str]]:
        endpoint = clientFromString(self._reactor, backend.endpoint)
        d = endpoint.connect(Factory.forProtocol(_Probe))
        return d.addCallback(lambda _: (True, "connected"))

    def _defaultHTTPClient(self, backend: Backend) -> Any:
        # Imported here: treq is only needed when HTTP checks are used.
        from treq.client import HTTPClient

        agent = Agent.usingEndpointFactory(
            self._reactor,
            _BackendEndpoint(self._reactor, backend.endpoint),
            pool=self._httpPool,
        )
        return HTTPClient(agent)

    def _hostHeader(self, backend: Backend) -> str:
        """
        The I{Host} of C{backend}'s checks: the configured one, else the
        backend's address and port, else its name.
        """
        if self.config.host is not None:
            return self.config.host
        if backend.address is not None and backend.port is not None:
            if ":" in backend.address:
                return f"[{backend.address}]:{backend.port}"
            return f"{backend.address}:{backend.port}"
        return backend.name

    def _httpProbe(self, backend: Backend) -> Deferred[tuple[bool, str]]:
        config = self.config
        host = self._hostHeader(backend)
        try:
            rawHost = host.encode("ascii")
        except UnicodeEncodeError:
            rawHost = host.encode("idna")
        headers = Headers({b"Host": [rawHost], b"User-Agent": [USER_AGENT]})
        # The URL decides neither where to connect (the endpoint does) nor
        # the Host (set above); it carries the Host only when treq can
        # encode it, which it cannot for an IPv6 literal.
        urlHost = host if _PLAIN_HOST.match(host) else "localhost"
        client = self._httpClientFactory(backend)
        d = client.get(
            f"http://{urlHost}{config.path}",
            headers=headers,
            unbuffered=True,
            allow_redirects=False,
            reactor=self._reactor,
        )
        return d.addCallback(self._judge)

    def _judge(self, response: IResponse) -> Deferred[tuple[bool, str]]:
        """
        Judge C{response} by its status, once at most L{MAX_BODY} bytes of
        its body were read.
        """
        low, high = self.config.expectedStatus
        code = response.code
        if low <= code <= high:
            outcome = (True, f"HTTP {code}")
        else:
            expected = f"{low}" if low == high else f"{low}-{high}"
            outcome = (False, f"HTTP {code}, expected {expected}")
        body = _BoundedBody(MAX_BODY)
        response.deliverBody(body)
        return body.done.addCallback(lambda _: outcome)

    def _record(self, backend: Backend, result: CheckResult) -> None:
        """
        Apply C{result} to C{backend} and log a change of state: of
        verdict, or a pending backend found down.
        """
        try:
            before = healthState(backend, self.config)
            changed = applyResult(backend, result, self.config)
        except Exception:
            self._log.failure(
                "could not apply a health check result to backend {backend} "
                "of pool {pool}",
                backend=backend.name,
                pool=self.pool.name,
            )
            return
        health = backend.health
        if not changed and not (
            before is HealthState.pending
            and healthState(backend, self.config) is HealthState.down
        ):
            return
        if backend.healthy:
            self._log.info(
                "backend {backend} of pool {pool} is UP ({reason}, "
                "{successes} checks passed)",
                backend=backend.name,
                pool=self.pool.name,
                reason=result.reason,
                successes=health.successes,
            )
        else:
            self._log.warn(
                "backend {backend} of pool {pool} is DOWN: {reason} "
                "({failures} checks failed)",
                backend=backend.name,
                pool=self.pool.name,
                reason=result.reason,
                failures=health.failures,
            )
