"""
Tests for L{txlb.health}: the rise/fall state machine, TCP and HTTP checks,
and the loop of rounds, all on a fake clock with in-memory connections.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txlb.config import HealthCheckConfig
from txlb.health import (
    MAX_BODY,
    HealthState,
    PoolHealthChecker,
    applyResult,
    healthState,
)
from txlb.pool import RESULTS_KEPT, Backend, CheckResult, Pool
from txlb.strategies.roundrobin import RoundRobin


def makeBackend(
    name: str = "a",
    address: str | None = "10.0.0.1",
    port: int | None = 80,
    healthy: bool = True,
    endpoint: str | None = None,
) -> Backend:
    """
    A backend called C{name} at C{address}:C{port}.
    """
    if endpoint is None:
        endpoint = f"tcp:host={address}:port={port}"
    return Backend(
        name=name, address=address, port=port, endpoint=endpoint, healthy=healthy
    )


def makePool(clock: Any, *backends: Backend) -> Pool:
    """
    A pool called C{app} of C{backends}.
    """
    return Pool(
        name="app",
        algorithm="round_robin",
        strategy=RoundRobin(),
        clock=clock,
        backends=list(backends),
    )


def tcpConfig(**kw: Any) -> HealthCheckConfig:
    """
    A TCP check every 5 s, timeout 2 s, no jitter unless given.
    """
    kw.setdefault("jitter", 0.0)
    return HealthCheckConfig(type="tcp", **kw)


def httpConfig(**kw: Any) -> HealthCheckConfig:
    """
    An HTTP check every 5 s, timeout 2 s, no jitter unless given.
    """
    kw.setdefault("jitter", 0.0)
    return HealthCheckConfig(type="http", **kw)


class FixedRandom:
    """
    A C{random.Random} stand-in returning the given values in turn.
    """

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def accept(reactor: MemoryReactorClock, index: int = -1) -> StringTransport:
    """
    Complete the C{index}th TCP connect attempt; return its transport.
    """
    host, port, factory, _, _ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return transport


def refuse(reactor: MemoryReactorClock, index: int = -1) -> None:
    """
    Fail the C{index}th TCP connect attempt with "connection refused".
    """
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(
        reactor.connectors[index], Failure(ConnectionRefusedError())
    )


def verdicts(sequence: str, healthy: bool, rise: int = 2, fall: int = 3) -> list[bool]:
    """
    The verdict after each result of C{sequence} (C{P}ass or C{F}ail) for
    a never-checked backend that starts C{healthy}.
    """
    backend = makeBackend(healthy=healthy)
    config = tcpConfig(rise=rise, fall=fall)
    out = []
    for i, c in enumerate(sequence):
        applyResult(backend, CheckResult(float(i), c == "P", c, 0.0), config)
        out.append(backend.healthy)
    return out


class ApplyResultTests(SynchronousTestCase):
    """
    L{applyResult}: the rise/fall state machine alone.
    """

    def test_table(self) -> None:
        """
        Each sequence of results gives the documented verdicts.
        """
        T, F = True, False
        table = [
            # Pending (unhealthy, never checked): up on the first pass ...
            ("P", F, 2, 3, [T]),
            ("PP", F, 5, 3, [T, T]),
            # ... also after failures, while fewer than fall failed ...
            ("FFP", F, 2, 3, [F, F, T]),
            ("FP", F, 3, 2, [F, T]),
            # ... but after fall failures it is down and needs rise passes.
            ("FFFPP", F, 2, 3, [F, F, F, F, T]),
            ("FPP", F, 2, 1, [F, F, T]),
            ("FFFPFPP", F, 2, 3, [F, F, F, F, F, F, T]),
            # Up: down after fall consecutive failures only.
            ("FFF", T, 2, 3, [T, T, F]),
            ("FFPFFF", T, 2, 3, [T, T, T, T, T, F]),
            ("F", T, 2, 1, [F]),
            # Down, then back after rise consecutive passes.
            ("FFFPPF", T, 2, 3, [T, T, F, F, T, T]),
            ("FFFPFPP", T, 2, 3, [T, T, F, F, F, F, T]),
            ("FPFP", T, 1, 1, [F, T, F, T]),
            ("FPPP", T, 3, 1, [F, F, F, T]),
        ]
        for sequence, healthy, rise, fall, expected in table:
            self.assertEqual(
                verdicts(sequence, healthy, rise, fall),
                expected,
                f"{sequence} from healthy={healthy} rise={rise} fall={fall}",
            )

    def test_pendingEndsWhenRecordIsFull(self) -> None:
        """
        With C{fall} above the results kept, pending ends after
        L{RESULTS_KEPT} failures: the record cannot tell more.
        """
        seq = "F" * RESULTS_KEPT + "P"
        self.assertFalse(verdicts(seq, False, rise=2, fall=50)[-1])
        seq = "F" * (RESULTS_KEPT - 1) + "P"
        self.assertTrue(verdicts(seq, False, rise=2, fall=50)[-1])

    def test_states(self) -> None:
        """
        L{healthState} names pending, up and down as results arrive.
        """
        backend = makeBackend(healthy=False)
        config = tcpConfig(rise=2, fall=2)
        states = [healthState(backend, config)]
        for ok in (False, False, True, True, False, False):
            applyResult(backend, CheckResult(0.0, ok, "", 0.0), config)
            states.append(healthState(backend, config))
        P, U, D = HealthState.pending, HealthState.up, HealthState.down
        self.assertEqual(states, [P, P, D, D, U, U, D])

    def test_returnsWhetherChanged(self) -> None:
        """
        The return value says whether the verdict changed.
        """
        backend = makeBackend(healthy=True)
        config = tcpConfig(rise=1, fall=2)
        changes = [
            applyResult(backend, CheckResult(0.0, ok, "", 0.0), config)
            for ok in (False, False, False, True, True)
        ]
        self.assertEqual(changes, [False, True, False, True, False])

    def test_counters(self) -> None:
        """
        Consecutive successes and failures are counted, C{checked} is set
        and each result is kept, oldest first, at most L{RESULTS_KEPT}.
        """
        backend = makeBackend()
        config = tcpConfig()
        self.assertFalse(backend.health.checked)
        for i in range(12):
            applyResult(backend, CheckResult(float(i), i >= 9, str(i), 0.1), config)
        health = backend.health
        self.assertTrue(health.checked)
        self.assertEqual((health.successes, health.failures), (3, 0))
        self.assertEqual(
            [r.reason for r in health.results], [str(i) for i in range(2, 12)]
        )
        applyResult(backend, CheckResult(12.0, False, "x", 0.1), config)
        self.assertEqual((health.successes, health.failures), (0, 1))


class CheckerMixin:
    """
    Builds checkers over a L{MemoryReactorClock}.
    """

    reactor: MemoryReactorClock

    def checker(
        self,
        config: HealthCheckConfig,
        *backends: Backend,
        httpClientFactory: Callable[[Backend], Any] | None = None,
        rng: Any = None,
    ) -> PoolHealthChecker:
        self.reactor = MemoryReactorClock()
        return PoolHealthChecker(
            makePool(self.reactor, *backends),
            config,
            self.reactor,
            httpClientFactory=httpClientFactory,
            random=rng,
        )


class TCPCheckTests(CheckerMixin, SynchronousTestCase):
    """
    TCP checks connect with the backend's endpoint string.
    """

    def test_connectPasses(self) -> None:
        """
        A connection that opens passes, and is closed at once.
        """
        b = makeBackend(healthy=False)
        checker = self.checker(tcpConfig(), b)
        d = checker.round()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.1", 80))
        self.reactor.advance(0.25)
        transport = accept(self.reactor)
        self.successResultOf(d)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            b.health.last,
            CheckResult(at=0.25, ok=True, reason="connected", duration=0.25),
        )
        self.assertTrue(b.healthy)

    def test_connectRefused(self) -> None:
        """
        A refused connection fails with a one-line reason.
        """
        b = makeBackend()
        checker = self.checker(tcpConfig(), b)
        d = checker.round()
        refuse(self.reactor)
        self.successResultOf(d)
        self.assertEqual(b.health.last.reason, "connection refused")
        self.assertFalse(b.health.last.ok)

    def test_blackholeTimesOutAlone(self) -> None:
        """
        A connect that never completes is cancelled and fails at the
        timeout, while another backend's result is recorded at once.
        """
        slow, fast = makeBackend("slow"), makeBackend("fast", "10.0.0.2")
        checker = self.checker(tcpConfig(timeout=2.0), slow, fast)
        d = checker.round()
        accept(self.reactor, 1)
        self.assertEqual(fast.health.last.at, 0.0)
        self.assertTrue(fast.health.last.ok)
        self.reactor.advance(1.99)
        self.assertNoResult(d)
        self.assertFalse(slow.health.checked)
        self.reactor.advance(0.01)
        self.successResultOf(d)
        self.assertEqual(slow.health.last.reason, "timed out after 2 s")
        self.assertEqual(slow.health.last.duration, 2.0)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_otherEndpoints(self) -> None:
        """
        The endpoint string decides how to connect: a UNIX socket here.
        """
        b = makeBackend("sock", None, None, endpoint="unix:path=/run/app.sock")
        checker = self.checker(tcpConfig(), b)
        checker.round()
        self.assertEqual(self.reactor.unixClients[0][0], "/run/app.sock")


class Status(Resource):
    """
    Answers every request with a status and records the request headers.

    @ivar requests: the C{(path, Host, User-Agent)} of each request.
    """

    isLeaf = True

    def __init__(self, code: int = 200, body: bytes = b"ok") -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.requests: list[tuple[bytes, bytes | None, bytes | None]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(
            (
                request.uri,
                request.getHeader(b"host"),
                request.getHeader(b"user-agent"),
            )
        )
        request.setResponseCode(self.code)
        return self.body


class Hanging(Resource):
    """
    Never answers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class HTTPCheckTests(CheckerMixin, SynchronousTestCase):
    """
    HTTP checks over an injected client (L{StubTreq}).
    """

    def httpChecker(
        self,
        config: HealthCheckConfig,
        resources: dict[str, Resource],
        *backends: Backend,
    ) -> PoolHealthChecker:
        stubs = {name: StubTreq(r) for name, r in resources.items()}
        return self.checker(
            config, *backends, httpClientFactory=lambda b: stubs[b.name]
        )

    def check(
        self, config: HealthCheckConfig, resource: Resource, b: Backend
    ) -> CheckResult:
        checker = self.httpChecker(config, {b.name: resource}, b)
        return self.successResultOf(checker.checkNow(b))

    def test_expectedStatusRanges(self) -> None:
        """
        A status passes when within the expected range, both ends included;
        redirects are judged, not followed.
        """
        table = [
            ((200, 399), 200, True, "HTTP 200"),
            ((200, 399), 399, True, "HTTP 399"),
            ((200, 399), 301, True, "HTTP 301"),
            ((200, 399), 503, False, "HTTP 503, expected 200-399"),
            ((200, 399), 404, False, "HTTP 404, expected 200-399"),
            ((200, 299), 301, False, "HTTP 301, expected 200-299"),
            ((204, 204), 204, True, "HTTP 204"),
            ((204, 204), 200, False, "HTTP 200, expected 204"),
            ((100, 599), 503, True, "HTTP 503"),
        ]
        for expected, code, ok, reason in table:
            result = self.check(
                httpConfig(expectedStatus=expected), Status(code), makeBackend()
            )
            self.assertEqual((result.ok, result.reason), (ok, reason), (expected, code))

    def test_requestSent(self) -> None:
        """
        The check GETs the configured path with the backend's address and
        port as Host and txlb's User-Agent.
        """
        resource = Status()
        self.check(httpConfig(path="/ready?deep=1"), resource, makeBackend())
        self.assertEqual(
            resource.requests,
            [(b"/ready?deep=1", b"10.0.0.1:80", b"txlb-health-check")],
        )

    def test_hostHeader(self) -> None:
        """
        The Host is the configured one, else the backend's address and port
        (IPv6 in brackets), else its name.
        """
        cases = [
            (httpConfig(host="app.example"), makeBackend(), b"app.example"),
            (httpConfig(), makeBackend(port=8080), b"10.0.0.1:8080"),
            (
                httpConfig(),
                makeBackend(address="2001:db8::1", endpoint="tcp:h:1"),
                b"[2001:db8::1]:80",
            ),
            (
                httpConfig(),
                makeBackend("api", None, None, endpoint="unix:path=/s"),
                b"api",
            ),
        ]
        for config, backend, host in cases:
            resource = Status()
            self.check(config, resource, backend)
            self.assertEqual(resource.requests[0][1], host)

    def test_hangingRequestTimesOut(self) -> None:
        """
        A request that never gets an answer fails at the timeout; the other
        backends' results arrive on time.
        """
        slow, fast = makeBackend("slow"), makeBackend("fast", "10.0.0.2")
        hanging = Hanging()
        checker = self.httpChecker(
            httpConfig(timeout=2.0), {"slow": hanging, "fast": Status()}, slow, fast
        )
        d = checker.round()
        self.assertEqual(len(hanging.requests), 1)
        self.assertEqual(fast.health.last, CheckResult(0.0, True, "HTTP 200", 0.0))
        self.reactor.advance(1.5)
        self.assertNoResult(d)
        self.reactor.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(
            slow.health.last, CheckResult(2.0, False, "timed out after 2 s", 2.0)
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopServiceCancelsRequests(self) -> None:
        """
        Stopping cancels a request in flight without recording a result.
        """
        b = makeBackend()
        checker = self.httpChecker(httpConfig(), {"a": Hanging()}, b)
        checker.startService()
        self.successResultOf(checker.stopService())
        self.assertFalse(b.health.checked)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class DefaultHTTPClientTests(CheckerMixin, SynchronousTestCase):
    """
    HTTP checks with the default client: treq over an L{Agent} that
    connects with the backend's endpoint string.
    """

    def start(
        self, b: Backend, **kw: Any
    ) -> tuple[Deferred[CheckResult], Any, StringTransport]:
        """
        Check C{b} and accept the connection.

        @return: the check, the client protocol and its transport.
        """
        checker = self.checker(httpConfig(**kw), b)
        d = checker.checkNow(b)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), (b.address, b.port))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return d, protocol, transport

    def test_request(self) -> None:
        """
        The request goes to the backend's endpoint, one connection per check.
        """
        d, protocol, transport = self.start(makeBackend(port=8080), path="/hc")
        sent = transport.value()
        self.assertTrue(sent.startswith(b"GET /hc HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: 10.0.0.1:8080\r\n", sent)
        self.assertIn(b"User-Agent: txlb-health-check\r\n", sent)
        self.assertIn(b"Connection: close\r\n", sent)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.successResultOf(d).reason, "HTTP 200")

    def test_bodyReadIsBounded(self) -> None:
        """
        At most L{MAX_BODY} bytes of the body are read; then the connection
        stops and the status decides.
        """
        d, protocol, transport = self.start(makeBackend())
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        chunk = b"x" * 16384
        for _ in range(MAX_BODY // len(chunk) - 1):
            protocol.dataReceived(chunk)
        self.assertNoResult(d)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(chunk)
        self.assertEqual(transport.producerState, "stopped")
        self.assertEqual(self.successResultOf(d).reason, "HTTP 200")

    def test_bodyErrorCountsByStatus(self) -> None:
        """
        A body cut short after the status is known is judged by the status.
        """
        for status, ok in ((b"200 OK", True), (b"503 Unavailable", False)):
            d, protocol, transport = self.start(makeBackend())
            protocol.dataReceived(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 100\r\n\r\npartial"
            )
            self.assertNoResult(d)
            protocol.connectionLost(Failure(ConnectionLost()))
            self.assertEqual(self.successResultOf(d).ok, ok)

    def test_slowBodyCountsByStatus(self) -> None:
        """
        A body still arriving at the timeout is dropped and the status
        decides.
        """
        d, protocol, transport = self.start(makeBackend(), timeout=2.0)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.reactor.advance(2.0)
        self.assertEqual(
            self.successResultOf(d), CheckResult(2.0, True, "HTTP 200", 2.0)
        )
        self.assertEqual(transport.producerState, "stopped")

    def test_noResponse(self) -> None:
        """
        A connection closed before any response fails with a one-line reason.
        """
        d, protocol, transport = self.start(makeBackend())
        protocol.connectionLost(Failure(ConnectionLost()))
        result = self.successResultOf(d)
        self.assertFalse(result.ok)
        self.assertEqual(result.reason, "no response: connection lost")

    def test_unixEndpoint(self) -> None:
        """
        A backend behind a UNIX socket is checked through it, with its name
        as Host.
        """
        b = makeBackend("api", None, None, endpoint="unix:path=/run/api.sock")
        checker = self.checker(httpConfig(), b)
        checker.checkNow(b)
        self.assertEqual(self.reactor.unixClients[0][0], "/run/api.sock")

    def test_stopServiceClosesPool(self) -> None:
        """
        Stopping aborts the request in flight and fires once the client's
        connections are closed.
        """
        b = makeBackend()
        checker = self.checker(httpConfig(), b)
        checker.startService()
        protocol = self.reactor.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIn(b"GET /health", transport.value())
        self.successResultOf(checker.stopService())
        self.assertTrue(transport.disconnecting)
        self.assertFalse(b.health.checked)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class LoopTests(CheckerMixin, SynchronousTestCase):
    """
    The service: rounds every interval, jitter, checkNow, stopping, and a
    loop that survives anything.
    """

    def test_name(self) -> None:
        """
        The service is named after its pool.
        """
        self.assertEqual(self.checker(tcpConfig()).name, "health-app")

    def test_roundsEveryInterval(self) -> None:
        """
        The first round starts at once, the next ones every interval.
        """
        b = makeBackend()
        self.checker(tcpConfig(interval=5.0), b).startService()
        times = []
        for _ in range(3):
            times.append(self.reactor.seconds())
            refuse(self.reactor)
            self.reactor.advance(5.0)
        self.assertEqual(times, [0.0, 5.0, 10.0])
        self.assertEqual(len(self.reactor.tcpClients), 4)

    def test_roundsNeverOverlap(self) -> None:
        """
        A round that takes longer than the interval delays the next one.
        """
        b = makeBackend()
        checker = self.checker(tcpConfig(interval=1.0, timeout=3.5), b)
        checker.startService()
        self.reactor.pump([0.5] * 6)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.5)
        self.assertEqual(b.health.last.reason, "timed out after 3.5 s")
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_deadBackendOutWithinFallIntervals(self) -> None:
        """
        A backend that stops answering is down within C{fall} intervals
        (plus jitter and timeout).
        """
        b = makeBackend()
        config = tcpConfig(interval=0.5, timeout=0.25, fall=2, jitter=0.1)
        checker = self.checker(config, b, rng=random.Random(7))
        checker.startService()
        while b.healthy and self.reactor.seconds() < 10:
            self.reactor.advance(0.01)
        self.assertFalse(b.healthy)
        self.assertLess(self.reactor.seconds(), 3.0)
        self.assertEqual(b.health.failures, 2)

    def test_loopSurvivesExceptionInCheck(self) -> None:
        """
        An exception raised by the checker's own code is logged with its
        traceback, fails the check, and the next round still runs.
        """
        b = makeBackend()
        calls = []

        def factory(backend: Backend) -> Any:
            calls.append(backend)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return StubTreq(Status())

        checker = self.checker(httpConfig(interval=5.0), b, httpClientFactory=factory)
        checker.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(b.health.last.reason, "internal error: RuntimeError: boom")
        self.reactor.advance(5.0)
        self.assertEqual(len(calls), 2)
        self.assertEqual(b.health.last.reason, "HTTP 200")

    def test_loopSurvivesExceptionApplying(self) -> None:
        """
        An exception applying a verdict is logged and the loop goes on.
        """

        class Exploding(Backend):
            def setHealthy(self, healthy: bool) -> bool:
                raise ValueError("no")

        b = Exploding(name="x", address="10.0.0.1", port=80, endpoint="tcp:h:1")
        self.checker(tcpConfig(interval=5.0), b).startService()
        refuse(self.reactor)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.reactor.advance(5.0)
        refuse(self.reactor)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_loopSurvivesExceptionInRound(self) -> None:
        """
        Even a pool that raises when asked for its backends does not stop
        the loop.
        """

        class BrokenPool:
            name = "app"
            calls = 0

            @property
            def backends(self) -> tuple[Backend, ...]:
                BrokenPool.calls += 1
                if BrokenPool.calls == 1:
                    raise KeyError("nope")
                return (makeBackend(),)

        self.reactor = MemoryReactorClock()
        checker = PoolHealthChecker(BrokenPool(), tcpConfig(), self.reactor)  # type: ignore[arg-type]
        checker.startService()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.reactor.advance(5.0)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_unexpectedFailureLogged(self) -> None:
        """
        A check failing with an error no network check raises is logged
        with its traceback and recorded as a failed check.
        """
        b = makeBackend()

        class Client:
            def get(self, url: str, **kw: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                d.errback(ZeroDivisionError("odd"))
                return d

        checker = self.checker(httpConfig(), b, httpClientFactory=lambda b: Client())
        result = self.successResultOf(checker.checkNow(b))
        self.assertEqual(result.reason, "ZeroDivisionError: odd")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_badResponseIsFailedCheck(self) -> None:
        """
        A bug while judging a response (here a response without a status)
        is logged and fails the check; the next round still runs.
        """
        b = makeBackend()
        answers: list[Any] = [object(), None]

        class Client:
            def get(self, url: str, **kw: Any) -> Deferred[Any]:
                answer = answers.pop(0)
                if answer is None:
                    return StubTreq(Status()).get(url, **kw)
                d: Deferred[Any] = Deferred()
                d.callback(answer)
                return d

        self.checker(
            httpConfig(interval=5.0), b, httpClientFactory=lambda b: Client()
        ).startService()
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertFalse(b.health.last.ok)
        self.assertTrue(b.health.last.reason.startswith("AttributeError: "))
        self.reactor.advance(5.0)
        self.assertEqual(b.health.last.reason, "HTTP 200")

    def test_jitterDelaysEachCheck(self) -> None:
        """
        Each check of a round starts after its own delay of C{random()}
        times C{jitter * interval}; the round waits for them all.
        """
        a, b = makeBackend("a"), makeBackend("b", "10.0.0.2")
        config = tcpConfig(interval=10.0, timeout=2.0, jitter=0.5)
        checker = self.checker(config, a, b, rng=FixedRandom(0.5, 0.0))
        d = checker.round()
        self.assertEqual([c[0] for c in self.reactor.tcpClients], ["10.0.0.2"])
        refuse(self.reactor)
        self.reactor.advance(2.49)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        self.assertEqual(self.reactor.tcpClients[1][0], "10.0.0.1")
        refuse(self.reactor)
        self.successResultOf(d)

    def test_jitterClampedToFitTimeout(self) -> None:
        """
        A delay never leaves less than the timeout before the next round.
        """
        config = tcpConfig(interval=10.0, timeout=4.0, jitter=0.9)
        checker = self.checker(config, makeBackend(), rng=FixedRandom(0.99))
        checker.round()
        self.reactor.advance(5.99)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_jitterBounds(self) -> None:
        """
        With real randomness the starts spread over C{[0, jitter *
        interval)}.
        """
        backends = [makeBackend(f"b{i}", f"10.0.0.{i}") for i in range(20)]
        config = tcpConfig(interval=5.0, timeout=1.0, jitter=0.2)
        checker = self.checker(config, *backends, rng=random.Random(1))
        d = checker.round()
        starts = []
        while len(starts) < 20:
            for _ in range(len(self.reactor.tcpClients) - len(starts)):
                starts.append(self.reactor.seconds())
                refuse(self.reactor, len(starts) - 1)
            self.reactor.advance(0.01)
        self.successResultOf(d)
        self.assertTrue(all(0 <= t < 1.0 for t in starts), starts)
        self.assertGreater(len(set(starts)), 10)

    def test_noJitterChecksAtOnce(self) -> None:
        """
        With jitter 0 every check starts when the round does.
        """
        backends = [makeBackend(f"b{i}", f"10.0.0.{i}") for i in range(3)]
        self.checker(tcpConfig(), *backends).round()
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_checkNow(self) -> None:
        """
        L{PoolHealthChecker.checkNow} checks a backend added at runtime at
        once: pending until the check passes; the loop keeps its pace.
        """
        first = makeBackend()
        checker = self.checker(tcpConfig(interval=5.0), first)
        checker.startService()
        accept(self.reactor)
        self.reactor.advance(1.0)
        added = makeBackend("new", "10.0.0.9", healthy=False)
        checker.pool.addBackend(added)
        d = checker.checkNow(added)
        self.assertEqual(self.reactor.tcpClients[-1][0], "10.0.0.9")
        self.assertFalse(added.healthy)
        accept(self.reactor)
        self.assertEqual(
            self.successResultOf(d), CheckResult(1.0, True, "connected", 0.0)
        )
        self.assertTrue(added.healthy)
        self.reactor.advance(3.99)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.tcpClients), 4)

    def test_checkNowCancelled(self) -> None:
        """
        A cancelled L{PoolHealthChecker.checkNow} records nothing.
        """
        b = makeBackend()
        checker = self.checker(tcpConfig(), b)
        d = checker.checkNow(b)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertFalse(b.health.checked)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_stopServiceCancelsChecks(self) -> None:
        """
        Stopping cancels checks in flight and those waiting for their
        jitter delay; nothing is recorded and no timer is left.
        """
        a, b = makeBackend("a"), makeBackend("b", "10.0.0.2")
        config = tcpConfig(interval=10.0, jitter=0.5)
        checker = self.checker(config, a, b, rng=FixedRandom(0.0, 0.5))
        checker.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.successResultOf(checker.stopService())
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(20.0)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertFalse(a.health.checked or b.health.checked)

    def test_whenReady(self) -> None:
        """
        L{PoolHealthChecker.whenReady} fires once the first whole round
        finished, and at once afterwards.
        """
        a, b = makeBackend("a", healthy=False), makeBackend("b", "10.0.0.2")
        checker = self.checker(tcpConfig(timeout=2.0), a, b)
        checker.startService()
        ready = checker.whenReady()
        accept(self.reactor, 0)
        self.assertTrue(a.healthy)
        self.assertNoResult(ready)
        self.reactor.advance(2.0)
        self.assertIsNone(self.successResultOf(ready))
        self.successResultOf(checker.whenReady())

    def test_whenReadyFiresOnStop(self) -> None:
        """
        L{PoolHealthChecker.whenReady} fires when the service stops before
        the first round finished.
        """
        checker = self.checker(tcpConfig(), makeBackend())
        checker.startService()
        ready = checker.whenReady()
        self.assertNoResult(ready)
        checker.stopService()
        self.successResultOf(ready)

    def test_stopServiceTwice(self) -> None:
        """
        Stopping again (as removing from a running parent then stopping
        does) is harmless, and the service can start again.
        """
        b = makeBackend()
        checker = self.checker(tcpConfig(interval=5.0), b)
        checker.startService()
        self.successResultOf(checker.stopService())
        self.successResultOf(checker.stopService())
        checker.startService()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_resultsKeptWithReasons(self) -> None:
        """
        The last L{RESULTS_KEPT} results are kept with their reasons and
        times.
        """
        b = makeBackend()
        self.checker(tcpConfig(interval=1.0), b).startService()
        for i in range(12):
            if i % 2:
                accept(self.reactor)
            else:
                refuse(self.reactor)
            self.reactor.advance(1.0)
        results = list(b.health.results)
        self.assertEqual(len(results), 10)
        self.assertEqual([r.at for r in results], [float(i) for i in range(2, 12)])
        self.assertEqual(
            [r.reason for r in results[:2]], ["connection refused", "connected"]
        )

    def test_transitionsLogged(self) -> None:
        """
        Each change of verdict is logged as one line under the module's
        namespace; results that change nothing are not.
        """
        b = makeBackend()
        self.checker(tcpConfig(interval=1.0, fall=2, rise=2), b).startService()
        with capturedLogs() as events:
            for ok in (False, False, False, True, True, True):
                accept(self.reactor) if ok else refuse(self.reactor)
                self.reactor.advance(1.0)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "backend a of pool app is DOWN: connection refused (2 checks failed)",
                "backend a of pool app is UP (connected, 2 checks passed)",
            ],
        )
        self.assertEqual(
            {e["log_namespace"] for e in events}, {"txlb.health.PoolHealthChecker"}
        )

    def test_pendingFoundDownLogged(self) -> None:
        """
        A pending backend is logged DOWN once, when C{fall} checks failed.
        """
        b = makeBackend(healthy=False)
        self.checker(tcpConfig(interval=1.0, fall=2), b).startService()
        with capturedLogs() as events:
            for _ in range(4):
                refuse(self.reactor)
                self.reactor.advance(1.0)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["backend a of pool app is DOWN: connection refused (2 checks failed)"],
        )


class ClockOnlyTests(SynchronousTestCase):
    """
    A plain L{Clock} is enough for everything but connecting.
    """

    def test_emptyPool(self) -> None:
        """
        A pool without backends has rounds that finish at once.
        """
        clock = Clock()
        checker = PoolHealthChecker(makePool(clock), tcpConfig(), clock)
        self.assertIsNone(self.successResultOf(checker.round()))
        checker.startService()
        self.successResultOf(checker.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
