"""
Tests for L{txlb.protocols.http}, the L7 front, in memory.

Raw bytes are fed to an L{HTTPProxyProtocol} over a L{StringTransport} on a
L{MemoryReactorClock}; its backends are L{FakeUpstreamConnection}s handed
out by a L{FakeUpstreamPool} whose connects the tests complete by hand, so
every event order is chosen by the test.  After every test the client
connections are closed and the accounting must be back at rest: no request
in flight on any backend, nothing in the retry budget, no client slot
taken, no timer left.

Table tests run all their cases and report every case that failed at once,
each by its label.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txlb.accesslog import AccessLog
from txlb.config import RouteConfig
from txlb.limits import RetryBudget
from txlb.pool import AdminState, Backend, Pool
from txlb.protocols.headers import ForwardingPolicy, validateResponseHeaders
from txlb.protocols.http import (
    BODY_HIGH_WATER,
    MAX_PIPELINE,
    HTTPProxyFactory,
    HTTPSettings,
    L7Pool,
    RetryPolicy,
)
from txlb.protocols.upstream import ConnectionLostEarly, ResponseTimeout
from txlb.ratelimit import TokenBucketTable
from txlb.routing import Router
from txlb.test.fakeupstream import (
    CLIENT_ADDRESS,
    LISTENER_ADDRESS,
    ClientTransport,
    FakeUpstreamConnection,
    FakeUpstreamPool,
    RoundRobin,
)

CLIENT_IP = CLIENT_ADDRESS.host


@attrs.define
class Response:
    """
    One response as the client read it.

    @ivar status: the status code.
    @ivar headers: the header lines as written.
    @ivar body: the body, de-chunked.
    @ivar complete: the message ended (a close-delimited body never does
        here: the reader is never told of the close).
    """

    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> list[bytes]:
        """
        @return: the values of header C{name}, any letter case.
        """
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _readBody(response: Response, data: bytes) -> bytes:
    """
    Read C{response}'s body from C{data} as its head frames it.

    @return: what follows the body.
    """
    if response.status < 200 or response.status in (204, 304):
        response.complete = True
        return data
    if response.header(b"Transfer-Encoding") == [b"chunked"]:
        while True:
            lineEnd = data.find(b"\r\n")
            if lineEnd < 0:
                return b""
            size = int(data[:lineEnd], 16)
            chunk = data[lineEnd + 2:lineEnd + 2 + size]
            response.body += chunk
            if len(chunk) < size:
                return b""
            data = data[lineEnd + 2 + size:]
            if size == 0:
                response.complete = data.startswith(b"\r\n")
                return data[2:]
            data = data[2:]
    lengths = response.header(b"Content-Length")
    if lengths:
        length = int(lengths[0])
        response.body = data[:length]
        response.complete = len(response.body) == length
        return data[length:]
    # Close-delimited: never complete as far as this reader knows.
    response.body = data
    return b""


def parseResponses(data: bytes) -> list[Response]:
    """
    @return: the responses in C{data}, as a client reads them, including
        any written after one that said C{Connection: close} (a client
        would not read those; a test wants to see them).  Bytes after a
        101 are its body here.
    """
    responses = []
    while data:
        headEnd = data.find(b"\r\n\r\n")
        if headEnd < 0:
            responses.append(Response(status=-1, body=data))
            break
        statusLine, *lines = data[:headEnd].split(b"\r\n")
        data = data[headEnd + 4:]
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", statusLine)
        if match is None:
            responses.append(Response(status=-1, body=statusLine))
            break
        response = Response(int(match.group(1)))
        for line in lines:
            name, _, value = line.partition(b": ")
            response.headers.append((name, value))
        responses.append(response)
        if response.status == 101:
            response.body = data
            break
        data = _readBody(response, data)
    return responses


def statuses(data: bytes) -> list[int]:
    """
    @return: the status of each response in C{data}.
    """
    return [r.status for r in parseResponses(data)]


def get(
    target: bytes = b"/", host: bytes = b"example.com", headers: bytes = b"",
    method: bytes = b"GET", version: bytes = b"HTTP/1.1",
) -> bytes:
    """
    @return: a request head (C{headers} are extra CRLF-terminated lines).
    """
    hostLine = b"Host: " + host + b"\r\n" if host is not None else b""
    return method + b" " + target + b" " + version + b"\r\n" + hostLine + headers + b"\r\n"


def post(
    body: bytes, target: bytes = b"/upload", method: bytes = b"POST",
    headers: bytes = b"", length: int | None = None,
) -> bytes:
    """
    @return: a request with a C{Content-Length} body (C{length} may announce
        more than C{body}).
    """
    size = len(body) if length is None else length
    return get(target, method=method, headers=headers + b"Content-Length: %d\r\n" % size) + body


def requestIdOf(head: bytes) -> bytes:
    """
    @return: the X-Request-ID value of a forwarded head.
    """
    match = re.search(rb"\r\nX-Request-ID: ([^\r]*)\r\n", head)
    assert match is not None, head
    return match.group(1)


def _mismatches(
    cases: Iterable[tuple[Any, ...]], check: Callable[..., Any]
) -> list[tuple[str, Any, Any]]:
    """
    @param cases: C{(label, expected, *arguments)} rows.
    @param check: called with a row's arguments; returns what happened.
    @return: C{(label, expected, got)} for every row whose result differs.
    """
    found = []
    for label, expected, *arguments in cases:
        got = check(*arguments)
        if got != expected:
            found.append((label, expected, got))
    return found


class ProxyTestCase(SynchronousTestCase):
    """
    A listener with one pool C{web} of backends C{a}, C{b}, C{c} chosen in
    turn, fake upstream connections, and an access log kept in
    C{self.records}.  Cleanup closes every client and checks the
    accounting.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        # Request start times of 0 would read as "never started".
        self.reactor.advance(1000)
        self.strategy = RoundRobin()
        self.backends = [
            Backend(
                name=name, address=f"10.0.0.{i}", port=8000,
                endpoint=f"tcp:10.0.0.{i}:8000",
            )
            for i, name in enumerate("abc", 1)
        ]
        self.a, self.b, self.c = self.backends
        self.pool = Pool(
            name="web", algorithm="roundrobin", strategy=self.strategy,
            clock=self.reactor, backends=self.backends,
        )
        self.upstreams = FakeUpstreamPool()
        self.records: list[dict[str, Any]] = []
        self.clients: list[tuple[Any, ClientTransport]] = []
        self.factory: HTTPProxyFactory | None = None
        self.makeFactory()
        self.addCleanup(self.assertSettled)

    def makeFactory(
        self, settings: HTTPSettings | None = None,
        maxConnections: int | None = None, **l7: Any,
    ) -> HTTPProxyFactory:
        """
        (Re)build the listener's factory; C{l7} are L{L7Pool} arguments.
        """
        self.l7pool = L7Pool(pool=self.pool, upstreams=self.upstreams, **l7)
        self.factory = HTTPProxyFactory(
            pools={"web": self.l7pool},
            router=Router([], "web"),
            reactor=self.reactor,
            settings=settings or HTTPSettings(),
            maxConnections=maxConnections,
            accessLog=self.records.append,
        )
        return self.factory

    def connect(self) -> tuple[Any, ClientTransport]:
        """
        Accept a client connection.
        """
        proto = self.factory.buildProtocol(CLIENT_ADDRESS)
        transport = ClientTransport(
            peerAddress=CLIENT_ADDRESS, hostAddress=LISTENER_ADDRESS
        )
        proto.makeConnection(transport)
        self.clients.append((proto, transport))
        return proto, transport

    def lose(self, proto: Any, transport: ClientTransport,
             reason: Exception | None = None) -> None:
        """
        Deliver the end of a client connection the way a transport does:
        stop its producer, then tell the protocol.  Once only.
        """
        if getattr(transport, "lost", False):
            return
        transport.lost = True
        transport.connected = False
        producer, transport.producer = transport.producer, None
        if producer is not None:
            producer.stopProducing()
        proto.connectionLost(Failure(reason or ConnectionDone()))

    def assertSettled(self) -> None:
        """
        Close every client; then nothing may be left counted or scheduled,
        and no fake connection may have been misused.
        """
        for proto, transport in self.clients:
            self.lose(proto, transport)
        self.assertEqual(
            {b.name: 0 for b in self.backends},
            {b.name: b.activeConnections for b in self.backends},
        )
        budget = self.l7pool.budget
        self.assertEqual((0, 0), (budget.requests, budget.retries))
        self.assertEqual(0, self.factory.limit.active)
        self.assertEqual([], self.reactor.getDelayedCalls())
        self.assertEqual(
            [],
            [
                (attempt.backend.name, misuse)
                for attempt in self.upstreams.attempts
                if attempt.connection is not None
                for misuse in attempt.connection.misuse
            ],
        )

    def serve(self, data: bytes) -> tuple[Any, ClientTransport, FakeUpstreamConnection]:
        """
        Connect a client, send C{data}, and complete the backend connect.
        """
        proto, transport = self.connect()
        proto.dataReceived(data)
        return proto, transport, self.upstreams.last.succeed()

    def assertClosedWith(self, transport: ClientTransport, status: int) -> None:
        """
        The client got exactly one response, C{status} with
        C{Connection: close}, and its connection is closing.
        """
        responses = parseResponses(transport.value())
        self.assertEqual([status], [r.status for r in responses])
        self.assertEqual([b"close"], responses[0].header(b"Connection"))
        self.assertTrue(transport.disconnecting)


# ----------------------------------------------------------------- rejection

TIGHT = HTTPSettings(maxBodySize=10, maxTargetLength=64, maxHeaderSize=256)

# (label, status, request bytes, settings or None)
HEAD_REJECTED: list[tuple[str, int, bytes, HTTPSettings | None]] = [
    ("CL with TE", 400, get(method=b"POST", headers=(
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")) + b"0\r\n\r\n", None),
    ("TE with CL", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")) + b"0\r\n\r\n", None),
    ("two equal CL", 400, get(method=b"POST", headers=(
        b"Content-Length: 1\r\nContent-Length: 1\r\n")) + b"x", None),
    ("two different CL", 400, get(method=b"POST", headers=(
        b"Content-Length: 1\r\nContent-Length: 2\r\n")) + b"xx", None),
    ("CL list", 400, get(method=b"POST", headers=b"Content-Length: 1, 1\r\n") + b"x", None),
    ("CL not a number", 400, get(method=b"POST", headers=b"Content-Length: 1x\r\n"), None),
    ("CL negative", 400, get(method=b"POST", headers=b"Content-Length: -1\r\n"), None),
    ("CL plus", 400, get(method=b"POST", headers=b"Content-Length: +1\r\n") + b"x", None),
    ("CL 19 digits", 400, get(method=b"POST", headers=b"Content-Length: %s\r\n" % (
        b"1" * 19,)), None),
    ("TE gzip", 400, get(method=b"POST", headers=b"Transfer-Encoding: gzip\r\n"), None),
    ("TE gzip, chunked", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding: gzip, chunked\r\n")) + b"0\r\n\r\n", None),
    ("TE chunked, gzip", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding: chunked, gzip\r\n")), None),
    ("TE xchunked", 400, get(method=b"POST", headers=b"Transfer-Encoding: xchunked\r\n"),
     None),
    ("TE chunked twice", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")) + b"0\r\n\r\n",
     None),
    ("TE space before colon", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding : chunked\r\n")) + b"0\r\n\r\n", None),
    ("TE vertical tab", 400, get(method=b"POST", headers=(
        b"Transfer-Encoding: \x0bchunked\r\n")) + b"0\r\n\r\n", None),
    ("TE on HTTP/1.0", 400, get(method=b"POST", version=b"HTTP/1.0", headers=(
        b"Transfer-Encoding: chunked\r\n")) + b"0\r\n\r\n", None),
    ("obs-fold", 400, get(headers=b"X-A: one\r\n two\r\n"), None),
    ("obs-fold with tab", 400, get(headers=b"X-A: one\r\n\ttwo\r\n"), None),
    ("bare CR in value", 400, get(headers=b"X-A: one\rtwo\r\n"), None),
    ("bare CR line end", 400, b"GET / HTTP/1.1\rHost: example.com\r\n\r\n", None),
    ("bare LF line ends", 400, b"GET / HTTP/1.1\nHost: example.com\n\n", None),
    ("NUL in value", 400, get(headers=b"X-A: one\x00two\r\n"), None),
    ("DEL in value", 400, get(headers=b"X-A: one\x7ftwo\r\n"), None),
    ("name with parenthesis", 400, get(headers=b"X(: 1\r\n"), None),
    ("name with space", 400, get(headers=b"X Y: 1\r\n"), None),
    ("empty name", 400, get(headers=b": 1\r\n"), None),
    ("missing Host", 400, get(host=None), None),
    ("two Hosts", 400, get(headers=b"Host: other.example\r\n"), None),
    ("invalid Host", 400, get(host=b"exa mple.com"), None),
    ("Host with userinfo", 400, get(host=b"user@example.com"), None),
    ("Connection: host", 400, get(headers=b"Connection: host\r\n"), None),
    ("Connection: content-length", 400, get(method=b"POST", headers=(
        b"Connection: content-length\r\nContent-Length: 1\r\n")) + b"x", None),
    ("Connection: transfer-encoding", 400, get(method=b"POST", headers=(
        b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n")) + b"0\r\n\r\n",
     None),
    ("CONNECT", 405, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     None),
    ("HTTP/2 preface", 400, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    ("HTTP/2.0 request line", 505, get(version=b"HTTP/2.0"), None),
    ("HTTP/0.9 request", 505, b"GET /\r\n\r\n", None),
    ("HTTP/1.2", 400, get(version=b"HTTP/1.2"), None),
    ("TLS hello", 400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
    ("unknown expectation", 417, get(headers=b"Expect: teapot\r\n"), None),
    ("absolute-form with userinfo", 400, get(target=b"http://u@example.com/"), None),
    ("absolute-form not http", 400, get(target=b"ftp://example.com/"), None),
    ("target over maxTargetLength", 414, get(target=b"/" + b"a" * 64), TIGHT),
    ("target over maxTargetLength, no Host yet", 414, b"GET /" + b"a" * 100, TIGHT),
    ("headers over maxHeaderSize", 431, get(headers=b"X-A: %s\r\nX-B: %s\r\n" % (
        b"a" * 120, b"b" * 120)), TIGHT),
    ("too many header lines", 431, get(headers=b"".join(
        b"X-%d: 1\r\n" % i for i in range(101))), None),
    ("Content-Length over maxBodySize", 413, post(b"x" * 11), TIGHT),
    ("Content-Length over maxBodySize, body not sent", 413, post(b"", length=11), TIGHT),
]


class RejectionTests(ProxyTestCase):
    """
    What the issue's "What is rejected" section refuses is refused, closed,
    and never reaches a backend.
    """

    def rejected(self, data: bytes, settings: HTTPSettings | None) -> Any:
        """
        Feed C{data} on a new connection.

        @return: C{(statuses, "close" sent, closing, connects)}.
        """
        if settings is not None:
            self.makeFactory(settings=settings)
        proto, transport = self.connect()
        proto.dataReceived(data)
        responses = parseResponses(transport.value())
        return (
            [r.status for r in responses],
            all(r.header(b"Connection") == [b"close"] for r in responses),
            transport.disconnecting,
            len(self.upstreams.attempts),
        )

    def test_rejectedHeads(self) -> None:
        """
        Every malformed or refused request head gets exactly its status
        with C{Connection: close}, the connection closes, and no backend
        connect is attempted.
        """
        cases = [
            (label, ([status], True, True, 0), data, settings)
            for label, status, data, settings in HEAD_REJECTED
        ]
        self.assertEqual([], _mismatches(cases, self.rejected))

    def test_rejectedHeadsSplitByteByByte(self) -> None:
        """
        A malformed head gets the same status when it arrives one byte at a
        time.
        """

        def byteByByte(data: bytes, settings: HTTPSettings | None) -> Any:
            if settings is not None:
                self.makeFactory(settings=settings)
            proto, transport = self.connect()
            for i in range(len(data)):
                proto.dataReceived(data[i:i + 1])
            return statuses(transport.value()), len(self.upstreams.attempts)

        cases = [
            (label, ([status], 0), data, settings)
            for label, status, data, settings in HEAD_REJECTED
        ]
        self.assertEqual([], _mismatches(cases, byteByByte))

    def test_rejectedBodies(self) -> None:
        """
        A bad or overflowing chunk size, or a chunked body over
        C{maxBodySize}, gets its status and closes; the backend connect the
        head started is cancelled.
        """
        chunked = get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n")

        def check(body: bytes) -> Any:
            self.makeFactory(settings=HTTPSettings(maxBodySize=10))
            proto, transport = self.connect()
            proto.dataReceived(chunked)
            proto.dataReceived(body)
            return (
                statuses(transport.value()),
                transport.disconnecting,
                [attempt.cancelled for attempt in self.upstreams.attempts[-1:]],
            )

        cases = [
            ("chunk size not hex", ([400], True, [True]), b"zz\r\nxx\r\n0\r\n\r\n"),
            ("chunk size empty", ([400], True, [True]), b"\r\nxx\r\n0\r\n\r\n"),
            ("chunk size with space", ([400], True, [True]), b"1 1\r\nx\r\n0\r\n\r\n"),
            ("chunk size overflow", ([400], True, [True]), b"1" + b"0" * 16 + b"\r\n"),
            ("chunk size huge", ([400], True, [True]), b"f" * 40 + b"\r\n"),
            ("chunk without CRLF", ([400], True, [True]), b"2\r\nxxyy0\r\n\r\n"),
            ("chunked over maxBodySize", ([413], True, [True]),
             b"6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n0\r\n\r\n"),
        ]
        self.assertEqual([], _mismatches(cases, check))

    def test_chunkedOverLimitAfterConnect(self) -> None:
        """
        A chunked body that grows over C{maxBodySize} while it streams to a
        backend gets 413; the backend connection is aborted.
        """
        self.makeFactory(settings=HTTPSettings(maxBodySize=10))
        proto, transport, conn = self.serve(
            get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n")
        )
        proto.dataReceived(b"6\r\nxxxxxx\r\n")
        self.assertEqual(b"6\r\nxxxxxx\r\n", conn.body)
        proto.dataReceived(b"6\r\nyyyyyy\r\n")
        self.assertClosedWith(transport, 413)
        self.assertTrue(conn.aborted)

    def test_routingErrorAnswered(self) -> None:
        """
        A request whose routing fails inside txlb (a broken router) gets
        500 and the connection closes; it is not left unanswered.
        """

        class BrokenRouter(Router):
            def route(self, host: Any, target: Any, headers: Any) -> str:
                raise RuntimeError("broken router")

        self.makeFactory()
        self.factory.router = BrokenRouter([], "web")
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.assertClosedWith(transport, 500)
        self.assertEqual(1, len(self.flushLoggedErrors(RuntimeError)))

    def test_headerTimeout(self) -> None:
        """
        A head that has not all arrived within C{headerTimeout} gets 408 and
        the connection closes; no backend is tried.
        """
        self.makeFactory(settings=HTTPSettings(headerTimeout=10.0))
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: exa")
        self.reactor.advance(9.9)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(0.1)
        self.assertClosedWith(transport, 408)
        self.assertEqual([], self.upstreams.attempts)
        self.assertEqual(1, self.factory.counters["header_timeout"])

    def test_silentClientTimesOut(self) -> None:
        """
        A client that connects and sends nothing gets 408 at the header
        deadline.
        """
        self.makeFactory(settings=HTTPSettings(headerTimeout=10.0))
        proto, transport = self.connect()
        self.reactor.advance(10)
        self.assertClosedWith(transport, 408)

    def test_slowClientCutAtDeadline(self) -> None:
        """
        A client sending one byte a second is cut at the header deadline
        even though every byte arrives well within any per-byte timeout.
        """
        self.makeFactory(settings=HTTPSettings(headerTimeout=10.0))
        proto, transport = self.connect()
        data = get(headers=b"User-Agent: slow\r\n")
        for i in range(10):
            self.assertEqual(b"", transport.value(), f"after {i} bytes")
            proto.dataReceived(data[i:i + 1])
            self.reactor.advance(1)
        self.assertClosedWith(transport, 408)
        self.assertEqual([], self.upstreams.attempts)

    def test_headerDeadlineCountsFromConnection(self) -> None:
        """
        On a new connection the header deadline runs from the connection's
        start (as L{HTTPSettings.headerTimeout} says), not from the first
        byte: waiting before starting the head buys no time.
        """
        self.makeFactory(settings=HTTPSettings(headerTimeout=10.0))
        proto, transport = self.connect()
        self.reactor.advance(6)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.reactor.advance(4)
        self.assertClosedWith(transport, 408)

    def test_unterminatedHeaderLineOverLimit(self) -> None:
        """
        A header line that keeps growing past C{maxHeaderSize} without ever
        ending gets 431 once the limit is passed: the head is bounded in
        memory, not only once a line is complete.
        """
        self.makeFactory(settings=HTTPSettings(maxHeaderSize=1024))
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: ")
        for _ in range(8):
            proto.dataReceived(b"a" * 512)
        self.assertClosedWith(transport, 431)
        self.assertEqual([], self.upstreams.attempts)

    def test_rejectionAfterPipelinedRequest(self) -> None:
        """
        A malformed request pipelined behind a good one is answered after
        the good one's response, in order, and then the connection closes.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/first") + get(b"/second", host=None))
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual(b"", transport.value())
        conn = self.upstreams.last.succeed()
        conn.respond(200, body=b"first")
        responses = parseResponses(transport.value())
        self.assertEqual([200, 400], [r.status for r in responses])
        self.assertEqual(b"first", responses[0].body)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(1, len(self.upstreams.attempts))

    def test_rejectedCounted(self) -> None:
        """
        A refused request is counted in C{rejected}.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(host=None))
        self.assertEqual(1, self.factory.counters["rejected"])


class EarlyResponseTests(ProxyTestCase):
    """
    A response txlb makes before the request body was read closes the
    connection, so leftover body bytes are never read as a request.
    """

    def test_noBackendBeforeBody(self) -> None:
        """
        503 (no usable backend) before the body arrived closes; body bytes
        that look like a request are never parsed as one.
        """
        for backend in self.backends:
            backend.healthy = False
        proto, transport = self.connect()
        smuggled = get(b"/smuggled")
        proto.dataReceived(post(b"", length=len(smuggled)))
        self.assertClosedWith(transport, 503)
        proto.dataReceived(smuggled)
        self.assertEqual([503], statuses(transport.value()))
        self.assertEqual([], self.upstreams.attempts)
        self.assertEqual(1, self.factory.counters["no_backend"])

    def test_tooLargeBodyBytesNotParsed(self) -> None:
        """
        413 by Content-Length closes; the body, a request, is not parsed.
        """
        self.makeFactory(settings=HTTPSettings(maxBodySize=10))
        proto, transport = self.connect()
        smuggled = get(b"/smuggled")
        proto.dataReceived(post(smuggled))
        self.assertClosedWith(transport, 413)
        proto.dataReceived(smuggled)
        self.assertEqual([413], statuses(transport.value()))
        self.assertEqual([], self.upstreams.attempts)

    def test_closingResponseStopsParsing(self) -> None:
        """
        When txlb answers and closes while requests are still in the same
        read, the requests after are neither dispatched nor answered.
        """
        for backend in self.backends:
            backend.healthy = False
        proto, transport = self.connect()
        proto.dataReceived(
            get(b"/one", headers=b"Connection: close\r\n") + get(b"/two") + get(b"/three")
        )
        self.assertClosedWith(transport, 503)
        self.assertEqual(1, self.pool.noBackend)
        self.assertEqual(1, len(self.records))

    def test_closingResponseStopsParsingBody(self) -> None:
        """
        When txlb answers and closes before a body that arrived in the same
        read, a request pipelined after that body is not dispatched.
        """
        for backend in self.backends:
            backend.healthy = False
        proto, transport = self.connect()
        proto.dataReceived(post(b"hello") + get(b"/two"))
        self.assertClosedWith(transport, 503)
        self.assertEqual(1, self.pool.noBackend)


# ---------------------------------------------------------------- forwarding


class ForwardingTests(ProxyTestCase):
    """
    What is sent to the backend.
    """

    def test_requestHead(self) -> None:
        """
        The forwarded head is C{GET target HTTP/1.1}, Host first, without
        hop-by-hop headers or those C{Connection} names, with txlb's
        X-Forwarded-* (the untrusted client's replaced) and X-Request-ID.
        """
        proto, transport, conn = self.serve(
            b"GET /path?q=1 HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"Connection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"TE: trailers\r\n"
            b"Trailer: X-T\r\n"
            b"X-Secret: s\r\n"
            b"X-Forwarded-For: 10.9.9.9\r\n"
            b"X-Forwarded-Proto: https\r\n"
            b"Content_Length: 5\r\n"
            b"User-Agent: t\r\n"
            b"Accept: */*\r\n"
            b"Accept: text/html\r\n"
            b"\r\n"
        )
        [head] = conn.heads
        requestId = requestIdOf(head)
        self.assertRegex(requestId, rb"^[0-9a-f]{12}-[0-9a-f]+$")
        self.assertEqual(
            b"GET /path?q=1 HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"User-Agent: t\r\n"
            b"Accept: */*\r\n"
            b"Accept: text/html\r\n"
            b"X-Forwarded-For: 203.0.113.7\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: example.com\r\n"
            b"X-Request-ID: " + requestId + b"\r\n"
            b"\r\n",
            head,
        )
        self.assertEqual([b"GET"], conn.methods)
        self.assertEqual([RetryPolicy().perTryTimeout], conn.timeouts)
        self.assertEqual(1, conn.finishes)
        self.assertEqual(b"", conn.body)
        conn.respond(204, headers=[])

    def test_requestIdsDiffer(self) -> None:
        """
        Each request gets its own X-Request-ID.
        """
        proto, transport, conn = self.serve(get())
        conn.respond(204, headers=[])
        proto.dataReceived(get())
        second = self.upstreams.last.succeed()
        second.respond(204, headers=[])
        self.assertNotEqual(requestIdOf(conn.heads[0]), requestIdOf(second.heads[0]))

    def test_requestIdKept(self) -> None:
        """
        A valid client X-Request-ID is passed on as it is.
        """
        proto, transport, conn = self.serve(get(headers=b"X-Request-ID: abc-123\r\n"))
        self.assertEqual(b"abc-123", requestIdOf(conn.heads[0]))
        conn.respond(204, headers=[])

    def test_forwardedForAppendedFromTrustedProxy(self) -> None:
        """
        From a trusted peer, X-Forwarded-For is extended with the peer.
        """
        self.makeFactory(policy=ForwardingPolicy(
            trustedProxies=[ipaddress.ip_network("203.0.113.0/24")]
        ))
        proto, transport, conn = self.serve(
            get(headers=b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\n")
        )
        self.assertIn(
            b"\r\nX-Forwarded-For: 10.9.9.9, 10.8.8.8, 203.0.113.7\r\n", conn.heads[0]
        )
        conn.respond(204, headers=[])

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target is sent in origin form, and its authority
        is the Host (the client's Host is ignored, RFC 9112 3.2.2).
        """
        cases = [
            ("path and query", (b"/a/b?c=d", b"example.com:8080"),
             b"http://example.com:8080/a/b?c=d"),
            ("no path", (b"/", b"example.com"), b"http://example.com"),
            ("query only", (b"/?x", b"example.com"), b"http://example.com?x"),
            ("https, letter case", (b"/p", b"Example.com"), b"HTTPS://Example.com/p"),
        ]

        def check(target: bytes) -> Any:
            proto, transport, conn = self.serve(get(target, host=b"other.example"))
            head = conn.heads[0]
            conn.respond(204, headers=[])
            requestLine = head.split(b"\r\n", 1)[0]
            host = re.search(rb"\r\nHost: ([^\r]*)\r\n", head).group(1)
            return requestLine.split(b" ")[1], host

        self.assertEqual([], _mismatches(cases, check))

    def test_absoluteFormInvalidAuthority(self) -> None:
        """
        An absolute-form target whose authority is not a valid C{host[:port]}
        is refused like an invalid Host header, never sent on as the Host.
        """
        cases = [
            ("comma", ([400], 0), b"http://a,b/"),
            ("bad port", ([400], 0), b"http://example.com:99999/"),
            ("semicolon", ([400], 0), b"http://example.com;x=y/"),
        ]

        def check(target: bytes) -> Any:
            before = len(self.upstreams.attempts)
            proto, transport = self.connect()
            proto.dataReceived(get(target))
            return statuses(transport.value()), len(self.upstreams.attempts) - before

        self.assertEqual([], _mismatches(cases, check))

    def test_contentLengthBody(self) -> None:
        """
        A Content-Length body is sent as is after a canonical
        C{Content-Length}, and the request is finished after it.
        """
        proto, transport, conn = self.serve(
            get(method=b"PUT", headers=b"content-length: 10\r\n")
        )
        self.assertTrue(conn.heads[0].endswith(b"\r\nContent-Length: 10\r\n\r\n"))
        self.assertEqual(0, conn.finishes)
        proto.dataReceived(b"01234")
        self.assertEqual(b"01234", conn.body)
        proto.dataReceived(b"56789")
        self.assertEqual(b"0123456789", conn.body)
        self.assertEqual(1, conn.finishes)
        conn.respond(204, headers=[])

    def test_chunkedBodyReframed(self) -> None:
        """
        A chunked body is sent re-chunked canonically (no extensions, no
        trailers) after one canonical C{Transfer-Encoding: chunked}.
        """
        proto, transport, conn = self.serve(
            get(method=b"POST", headers=b"Transfer-Encoding: Chunked\r\n")
        )
        self.assertEqual(
            1, conn.heads[0].lower().count(b"transfer-encoding"), conn.heads[0]
        )
        self.assertTrue(
            conn.heads[0].endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        )
        proto.dataReceived(b"5;ext=1\r\nhello\r\n")
        self.assertEqual(b"5\r\nhello\r\n", conn.body)
        self.assertEqual(0, conn.finishes)
        proto.dataReceived(b"0\r\nX-Trailer: t\r\n\r\n")
        self.assertEqual(b"5\r\nhello\r\n0\r\n\r\n", conn.body)
        self.assertEqual(1, conn.finishes)
        conn.respond(204, headers=[])

    def test_bodyBufferedUntilConnected(self) -> None:
        """
        Body bytes that arrive before the backend connection is ready are
        sent, in order, once it is.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"hello ", length=11))
        proto.dataReceived(b"world")
        conn = self.upstreams.last.succeed()
        self.assertEqual(b"hello world", conn.body)
        self.assertEqual(1, conn.finishes)
        conn.respond(204, headers=[])

    def test_http10WithoutHost(self) -> None:
        """
        An HTTP/1.0 request without Host is accepted and sent as HTTP/1.1.
        """
        proto, transport, conn = self.serve(get(host=None, version=b"HTTP/1.0"))
        self.assertTrue(conn.heads[0].startswith(b"GET / HTTP/1.1\r\n"))
        conn.respond(204, headers=[])


# ----------------------------------------------------------------- responses


class ResponseTests(ProxyTestCase):
    """
    What is written to the client.
    """

    def test_contentLengthPassthrough(self) -> None:
        """
        A Content-Length response keeps its length, streams its body as it
        comes, and leaves the connection open.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"10")])
        self.assertEqual(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n",
            transport.value(),
        )
        transport.clear()
        conn.send(b"01234")
        self.assertEqual(b"01234", transport.value())
        conn.send(b"56789")
        conn.complete()
        self.assertEqual(b"0123456789", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_chunkedToHTTP11(self) -> None:
        """
        A chunked backend body is chunked to an HTTP/1.1 client, each piece
        as it comes, then the last chunk.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Transfer-Encoding", b"chunked")])
        [response] = parseResponses(transport.value())
        self.assertEqual([b"chunked"], response.header(b"Transfer-Encoding"))
        self.assertEqual([], response.header(b"Content-Length"))
        transport.clear()
        conn.send(b"hello")
        self.assertEqual(b"5\r\nhello\r\n", transport.value())
        conn.send(b"x" * 300)
        self.assertEqual(b"5\r\nhello\r\n12c\r\n" + b"x" * 300 + b"\r\n", transport.value())
        conn.complete()
        self.assertTrue(transport.value().endswith(b"\r\n0\r\n\r\n"))
        self.assertFalse(transport.disconnecting)

    def test_closeDelimitedToHTTP11(self) -> None:
        """
        A close-delimited backend body is chunked to an HTTP/1.1 client, so
        the client connection can stay open.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Content-Type", b"text/plain")])
        conn.send(b"abc")
        conn.complete()
        [response] = parseResponses(transport.value())
        self.assertEqual((b"abc", True), (response.body, response.complete))
        self.assertEqual([b"chunked"], response.header(b"Transfer-Encoding"))
        self.assertFalse(transport.disconnecting)

    def test_neverChunkedToHTTP10(self) -> None:
        """
        A chunked backend body goes to an HTTP/1.0 client (even one asking
        for keep-alive) close-delimited, raw, and the connection closes
        after it.
        """
        for label, extra in [("plain", b""), ("keep-alive", b"Connection: keep-alive\r\n")]:
            proto, transport, conn = self.serve(get(version=b"HTTP/1.0", headers=extra))
            conn.start(200, [(b"Transfer-Encoding", b"chunked")])
            head = transport.value()
            self.assertNotIn(b"transfer-encoding", head.lower(), label)
            self.assertIn(b"\r\nConnection: close\r\n", head, label)
            transport.clear()
            conn.send(b"hello")
            conn.send(b"world")
            self.assertEqual(b"helloworld", transport.value(), label)
            self.assertFalse(transport.disconnecting, label)
            conn.complete()
            self.assertEqual(b"helloworld", transport.value(), label)
            self.assertTrue(transport.disconnecting, label)

    def test_responseHopByHopRemoved(self) -> None:
        """
        Hop-by-hop response headers, and those the backend's Connection
        names, are not passed to the client; repeated headers are kept.
        """
        proto, transport, conn = self.serve(get())
        conn.respond(200, [
            (b"Connection", b"X-Internal"),
            (b"X-Internal", b"1"),
            (b"Keep-Alive", b"timeout=4"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"0"),
        ])
        self.assertEqual(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 0\r\n\r\n",
            transport.value(),
        )

    def test_interimResponses(self) -> None:
        """
        A 103 from the backend reaches an HTTP/1.1 client before the final
        response; an HTTP/1.0 client never sees a 1xx.
        """
        proto, transport, conn = self.serve(get())
        conn.interim(103, [(b"Link", b"</s.css>; rel=preload")])
        conn.respond(200, body=b"ok")
        self.assertEqual([103, 200], statuses(transport.value()))

        proto, transport, conn = self.serve(get(version=b"HTTP/1.0"))
        conn.interim(103, [(b"Link", b"</s.css>; rel=preload")])
        conn.respond(200, body=b"ok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_headResponse(self) -> None:
        """
        A response to HEAD passes its announced length on, and the next
        request follows on the same connection.
        """
        proto, transport, conn = self.serve(get(method=b"HEAD"))
        conn.start(200, [(b"Content-Length", b"1234")])
        conn.complete()
        self.assertEqual(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", transport.value())
        proto.dataReceived(get())
        self.assertEqual(2, len(self.upstreams.attempts))
        self.upstreams.last.succeed().respond(204, headers=[])


# ---------------------------------------------------------------- keep-alive


class KeepAliveTests(ProxyTestCase):
    """
    Several requests on one client connection.
    """

    def test_sequentialRequests(self) -> None:
        """
        Two requests one after the other on one connection are each
        dispatched (to the next backend in turn) and answered; the
        connection stays open.
        """
        proto, transport, conn = self.serve(get(b"/1"))
        conn.respond(200, body=b"one")
        proto.dataReceived(get(b"/2"))
        second = self.upstreams.last.succeed()
        second.respond(200, body=b"two")
        responses = parseResponses(transport.value())
        self.assertEqual([b"one", b"two"], [r.body for r in responses])
        self.assertEqual(["a", "b"], self.upstreams.triedNames())
        self.assertFalse(transport.disconnecting)

    def test_pipelinedInOrder(self) -> None:
        """
        Two requests in one read are answered in order; the second is not
        dispatched until the first's response is complete.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/1") + get(b"/2"))
        self.assertEqual(1, len(self.upstreams.attempts))
        first = self.upstreams.last.succeed()
        self.assertTrue(first.heads[0].startswith(b"GET /1 "))
        first.start(200, [(b"Content-Length", b"3")])
        first.send(b"one")
        self.assertEqual(1, len(self.upstreams.attempts))
        first.complete()
        self.assertEqual(2, len(self.upstreams.attempts))
        second = self.upstreams.last.succeed()
        self.assertTrue(second.heads[0].startswith(b"GET /2 "))
        second.respond(200, body=b"two")
        self.assertEqual(
            [b"one", b"two"], [r.body for r in parseResponses(transport.value())]
        )
        self.assertFalse(transport.disconnecting)

    def test_pipelinedBodyHeld(self) -> None:
        """
        A pipelined request's body, read while the first is answered, is
        sent once that request is dispatched.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/1") + post(b"payload"))
        first = self.upstreams.last.succeed()
        first.respond(204, headers=[])
        second = self.upstreams.last.succeed()
        self.assertEqual(b"payload", second.body)
        self.assertEqual(1, second.finishes)
        second.respond(204, headers=[])

    def test_pipelineBounded(self) -> None:
        """
        More than C{MAX_PIPELINE} requests waiting behind the one answered
        pause reading from the client, until the queue shrinks.
        """
        proto, transport = self.connect()
        proto.dataReceived(get() * MAX_PIPELINE)
        self.assertEqual("producing", transport.producerState)
        proto.dataReceived(get())
        self.assertEqual("paused", transport.producerState)
        self.upstreams.last.succeed().respond(204, headers=[])
        self.assertEqual("producing", transport.producerState)
        for _ in range(MAX_PIPELINE):
            self.upstreams.last.succeed().respond(204, headers=[])
        self.assertEqual([204] * (MAX_PIPELINE + 1), statuses(transport.value()))

    def test_http10ClosesAfterResponse(self) -> None:
        """
        An HTTP/1.0 request without keep-alive gets C{Connection: close}
        and the connection closes after the response.
        """
        proto, transport, conn = self.serve(get(version=b"HTTP/1.0"))
        conn.start(200, [(b"Content-Length", b"2")])
        self.assertFalse(transport.disconnecting)
        conn.send(b"ok")
        conn.complete()
        [response] = parseResponses(transport.value())
        self.assertEqual([b"close"], response.header(b"Connection"))
        self.assertTrue(transport.disconnecting)

    def test_http10KeepAlive(self) -> None:
        """
        An HTTP/1.0 request with C{Connection: keep-alive} and a length
        response keeps the connection, and says so.
        """
        proto, transport, conn = self.serve(
            get(version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n")
        )
        conn.respond(200, body=b"ok")
        [response] = parseResponses(transport.value())
        self.assertEqual([b"keep-alive"], response.header(b"Connection"))
        self.assertFalse(transport.disconnecting)

    def test_connectionCloseCloses(self) -> None:
        """
        C{Connection: close} from the client closes after the response,
        which says so.
        """
        proto, transport, conn = self.serve(get(headers=b"Connection: close\r\n"))
        self.assertNotIn(b"Connection:", conn.heads[0])
        conn.respond(200, body=b"ok")
        [response] = parseResponses(transport.value())
        self.assertEqual([b"close"], response.header(b"Connection"))
        self.assertTrue(transport.disconnecting)

    def test_idleTimeout(self) -> None:
        """
        A kept-alive connection with no next request is closed, silently,
        after C{idleTimeout}.
        """
        self.makeFactory(settings=HTTPSettings(idleTimeout=30.0, headerTimeout=10.0))
        proto, transport, conn = self.serve(get())
        conn.respond(204, headers=[])
        transport.clear()
        self.reactor.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(b"", transport.value())

    def test_headerDeadlineOnKeptAliveConnection(self) -> None:
        """
        On a kept-alive connection the next head must arrive within
        C{headerTimeout} of its first byte, else 408.
        """
        self.makeFactory(settings=HTTPSettings(idleTimeout=30.0, headerTimeout=10.0))
        proto, transport, conn = self.serve(get())
        conn.respond(204, headers=[])
        transport.clear()
        self.reactor.advance(20)
        proto.dataReceived(b"GET /2 HTTP/1.1\r\n")
        self.reactor.advance(9.9)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(0.1)
        self.assertClosedWith(transport, 408)

    def test_noTimeoutWhileAnswering(self) -> None:
        """
        A request the backend takes long to answer is not cut by the
        client's header or idle deadlines.
        """
        self.makeFactory(settings=HTTPSettings(idleTimeout=30.0, headerTimeout=10.0))
        proto, transport, conn = self.serve(get())
        self.reactor.advance(100)
        self.assertFalse(transport.disconnecting)
        conn.respond(200, body=b"late")
        self.assertEqual([200], statuses(transport.value()))


def answered(
    test: ProxyTestCase, proto: Any, data: bytes, pieces: int = 1
) -> FakeUpstreamConnection:
    """
    Send C{data} (in C{pieces} reads), complete the connect it makes, and
    answer 200 C{ok}.

    @return: the connection that answered.
    """
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        proto.dataReceived(data[i:i + step])
    conn = test.upstreams.last.succeed()
    conn.respond(200, body=b"ok")
    return conn


class KnownRequestTests(ProxyTestCase):
    """
    A read that is one whole, plain request head the listener has parsed
    before is not parsed again: it is the same request, and is forwarded
    and accounted as the first was.
    """

    def exchange(self, proto: Any, data: bytes, pieces: int = 1) -> FakeUpstreamConnection:
        """
        Send C{data} (in C{pieces} reads) and answer it.
        """
        return answered(self, proto, data, pieces)

    def test_sameRequestAgain(self) -> None:
        """
        The same bytes again are forwarded exactly as the first time, but
        for a request id of their own; each is answered and logged.
        """
        proto, transport = self.connect()
        data = get(b"/a?b=1", headers=(
            b"User-Agent: t\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: x-a\r\nX-A: 1\r\n"
        ))
        conns = [self.exchange(proto, data) for _ in range(3)]
        self.assertIn(data, self.factory.knownRequests)
        heads = [conn.heads[0] for conn in conns]
        ids = [requestIdOf(head) for head in heads]
        self.assertEqual(3, len(set(ids)))
        self.assertEqual(
            [heads[0].replace(ids[0], b"ID")] * 3,
            [head.replace(i, b"ID") for head, i in zip(heads, ids, strict=True)],
        )
        self.assertNotIn(b"X-A", heads[2])
        self.assertIn(b"X-Forwarded-For: 203.0.113.7\r\n", heads[2])
        self.assertEqual([200] * 3, statuses(transport.value()))
        self.assertEqual(
            [("GET", "/a?b=1", 200, "web")] * 3,
            [(r["method"], r["target"], r["status"], r["pool"]) for r in self.records],
        )
        self.assertEqual(3, self.factory.counters["requests"])
        self.assertEqual(self.factory.bytesIn, 3 * (self.factory.bytesIn // 3))

    def test_clientRequestIdKept(self) -> None:
        """
        A valid request id of the client's is passed on, every time.
        """
        proto, transport = self.connect()
        data = get(headers=b"X-Request-ID: abc-123\r\n")
        conns = [self.exchange(proto, data) for _ in range(2)]
        self.assertEqual([b"abc-123"] * 2, [requestIdOf(c.heads[0]) for c in conns])

    def test_eachConnectionItsOwnPeer(self) -> None:
        """
        A request remembered from one client is forwarded from another
        with that other's address.
        """
        data = get()
        proto, transport = self.connect()
        self.exchange(proto, data)
        other = self.factory.buildProtocol(CLIENT_ADDRESS)
        otherTransport = ClientTransport(
            peerAddress=IPv4Address("TCP", "198.51.100.9", 5000),
            hostAddress=LISTENER_ADDRESS,
        )
        other.makeConnection(otherTransport)
        self.clients.append((other, otherTransport))
        conn = self.exchange(other, data)
        self.assertIn(b"X-Forwarded-For: 198.51.100.9\r\n", conn.heads[0])

    def test_notRemembered(self) -> None:
        """
        Requests that are not plain, or that did not come as one read
        holding nothing else, are not remembered.
        """
        cases = [
            ("with a body", post(b"xyz"), 1),
            ("HTTP/1.0", get(version=b"HTTP/1.0"), 1),
            ("HTTP/1.0 keep-alive", get(
                version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n"), 1),
            ("Connection: close", get(headers=b"Connection: close\r\n"), 1),
            ("upgrade declined", get(headers=(
                b"Connection: upgrade\r\nUpgrade: websocket\r\n")), 1),
            ("h2c upgrade", get(headers=b"Connection: upgrade\r\nUpgrade: h2c\r\n"), 1),
            ("expect", get(headers=b"Expect: 100-continue\r\n"), 1),
            ("two reads", get(), 2),
            ("over 4 KiB", get(headers=b"X-Big: %s\r\n" % (b"b" * 4096,)), 1),
        ]
        found = []
        for label, data, pieces in cases:
            self.factory.knownRequests.clear()
            proto, transport = self.connect()
            self.exchange(proto, data, pieces)
            if data in self.factory.knownRequests:
                found.append(label)
        self.assertEqual([], found)

    def test_pipelinedNotRemembered(self) -> None:
        """
        Two requests in one read are not remembered (as one, or apart).
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/1") + get(b"/2"))
        self.upstreams.last.succeed().respond(200, body=b"ok")
        self.upstreams.last.succeed().respond(200, body=b"ok")
        self.assertEqual({}, self.factory.knownRequests)

    def test_newRoutesApply(self) -> None:
        """
        After the listener is reconfigured, a remembered request is routed
        by the new routes.
        """
        proto, transport = self.connect()
        data = get(b"/api")
        self.exchange(proto, data)
        otherBackend = Backend(name="z", address="10.0.1.1", port=8000,
                               endpoint="tcp:10.0.1.1:8000")
        other = L7Pool(
            pool=Pool(name="api", algorithm="roundrobin", strategy=RoundRobin(),
                      clock=self.reactor, backends=[otherBackend]),
            upstreams=self.upstreams,
        )
        fresh = HTTPProxyFactory(
            pools={"web": self.l7pool, "api": other},
            router=Router([RouteConfig(pool="api", pathPrefix="/api")], "web"),
            reactor=self.reactor,
        )
        self.factory.reconfigure(fresh)
        conn = self.exchange(proto, data)
        self.assertEqual("z", conn.backend.name)

    def test_settingsChangedDirectly(self) -> None:
        """
        A remembered request made under other settings is parsed again
        under the listener's settings now.
        """
        proto, transport = self.connect()
        data = get(b"/" + b"a" * 40)
        self.exchange(proto, data)
        self.factory.settings = HTTPSettings(maxTargetLength=20)
        transport.clear()
        proto.dataReceived(data)
        self.assertClosedWith(transport, 414)

    def test_rateLimited(self) -> None:
        """
        A remembered request still takes from the rate limit, and is
        refused with 429 past it.
        """
        table = TokenBucketTable(0.5, 1, self.reactor)
        self.factory.rateLimit = table
        proto, transport = self.connect()
        self.exchange(proto, get())
        transport.clear()
        proto.dataReceived(get())
        self.assertClosedWith(transport, 429)


class KnownRequestIdleTests(ProxyTestCase):
    """
    A remembered request whose backend has an idle connection is sent on
    it at once; otherwise it goes the general way.
    """

    def test_sentOnIdleConnections(self) -> None:
        """
        Remembered requests go to the backends in turn, on their idle
        connections, each once, its head whole; the answers and the
        accounting are as for any request.
        """
        proto, transport = self.connect()
        data = get(b"/x")
        proto.dataReceived(data)
        first = self.upstreams.last.succeed()
        first.respond(200, body=b"ok")
        idle = {b.name: self.upstreams.keepIdle(b) for b in self.backends}
        for _ in self.backends:
            proto.dataReceived(data)
            conn = self.upstreams.taken[-1]
            self.assertEqual(1, conn.finishes)
            self.assertEqual(b"", conn.body)
            self.assertEqual(first.heads[0].replace(requestIdOf(first.heads[0]), b""),
                             conn.heads[0].replace(requestIdOf(conn.heads[0]), b""))
            conn.respond(200, body=b"ok")
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual(["b", "c", "a"], [c.backend.name for c in self.upstreams.taken])
        self.assertEqual(set(idle.values()), set(self.upstreams.taken))
        self.assertEqual([200] * 4, statuses(transport.value()))
        self.assertEqual(4, len(self.records))
        self.assertEqual([1, 1, 1], [r["attempts"] for r in self.records[1:]])
        self.assertEqual([0, 0, 0], [b.activeConnections for b in self.backends])
        self.assertEqual(3, sum(b.responses[2] for b in self.backends) - 1)

    def test_noIdleConnection(self) -> None:
        """
        Without an idle connection to the backend picked, the remembered
        request waits for a new one.
        """
        proto, transport = self.connect()
        data = get()
        answered(self, proto, data)
        self.upstreams.keepIdle(self.a)
        proto.dataReceived(data)
        self.assertEqual([], self.upstreams.taken)
        self.assertEqual(2, len(self.upstreams.attempts))
        self.assertEqual("b", self.upstreams.last.backend.name)
        self.upstreams.last.succeed().respond(200, body=b"ok")
        self.assertEqual([200, 200], statuses(transport.value()))

    def test_noBackend(self) -> None:
        """
        With no usable backend, a remembered request gets 503.
        """
        proto, transport = self.connect()
        data = get()
        answered(self, proto, data)
        for backend in self.backends:
            backend.healthy = False
        transport.clear()
        proto.dataReceived(data)
        self.assertEqual([503], statuses(transport.value()))
        self.assertFalse(transport.disconnecting)

    def test_stickyPoolGeneralWay(self) -> None:
        """
        In a pool with sticky sessions, a remembered request carrying the
        cookie goes to the backend it names.
        """
        self.makeFactory(stickyCookie=b"lb")
        token = self.l7pool.stickyToken(self.c)
        proto, transport = self.connect()
        data = get(headers=b"Cookie: lb=" + token + b"\r\n")
        for backend in self.backends * 2:
            self.upstreams.keepIdle(backend)
        for _ in range(2):
            proto.dataReceived(data)
            self.upstreams.taken[-1].respond(200, body=b"ok")
        self.assertEqual(["c", "c"], [c.backend.name for c in self.upstreams.taken])


class WholeResponseTests(ProxyTestCase):
    """
    A response the backend connection reports whole (in one
    C{responseWhole} call) reaches the client, and is accounted for, as
    the same response reported in parts.
    """

    def answer(self, request: bytes, status: int, headers: Any, body: bytes,
               whole: bool) -> tuple[bytes, Any, bool]:
        """
        @return: what a new client reads, the access-log record, and
            whether its connection is closing.
        """
        if headers is None:
            headers = [(b"Content-Length", b"%d" % len(body))]
        proto, transport = self.connect()
        proto.dataReceived(request)
        conn = self.upstreams.last.succeed()
        if whole:
            conn.respondWhole(status, headers, body)
        else:
            conn.start(status, headers)
            if body:
                conn.send(body)
            conn.complete()
        record = dict(self.records[-1])
        for varying in ("time", "duration", "backend"):
            record.pop(varying)
        return transport.value(), record, transport.disconnecting

    def test_sameAsInParts(self) -> None:
        """
        For each kind of request and response, the client reads the same
        bytes, the same is logged, and the connection ends the same way.
        """
        large = b"x" * 100_000
        cases = [
            (get(), 200, None, b"ok"),
            (get(), 200, None, large),
            (get(), 200, [(b"Content-Length", b"0")], b""),
            (get(), 204, [], b""),
            (get(), 304, [(b"Content-Length", b"9")], b""),
            (get(method=b"HEAD"), 200, [(b"Content-Length", b"9")], b""),
            (get(headers=b"Connection: close\r\n"), 200, None, b"ok"),
            (get(version=b"HTTP/1.0"), 200, None, b"ok"),
            (get(version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n"),
             200, None, b"ok"),
            (get(), 200, [(b"Content-Length", b"2"), (b"Connection", b"close")], b"ok"),
            (get(), 503, None, b"busy"),
        ]
        for request, status, headers, body in cases:
            self.assertEqual(
                self.answer(request, status, headers, body, whole=False),
                self.answer(request, status, headers, body, whole=True),
                (request, status, headers),
            )
        self.assertEqual([0, 0, 0], [b.activeConnections for b in self.backends])

    def test_stickyCookieAndBackendHeader(self) -> None:
        """
        The sticky cookie and C{X-Backend-Server} are added to a whole
        response too.
        """
        self.makeFactory(stickyCookie=b"lb",
                         policy=ForwardingPolicy(backendHeader=True))
        for whole in (False, True):
            data, _, _ = self.answer(get(), 200, None, b"ok", whole)
            [response] = parseResponses(data)
            self.assertEqual(1, len(response.header(b"Set-Cookie")), whole)
            self.assertEqual(1, len(response.header(b"X-Backend-Server")), whole)

    def test_beforeRequestBodyEnds(self) -> None:
        """
        A whole response before the request body was all read closes the
        client connection after it and does not reuse the backend's.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"part", length=10))
        conn = self.upstreams.last.succeed()
        conn.respondWhole(413, None, b"too big")
        self.assertEqual([413], statuses(transport.value()))
        self.assertTrue(transport.disconnecting)
        self.assertTrue(conn.aborted)

    def test_abandonedExchange(self) -> None:
        """
        A whole response reported to an exchange its request gave up (the
        client left) changes nothing.
        """
        proto, transport = self.connect()
        proto.dataReceived(get())
        conn = self.upstreams.last.succeed()
        exchange = conn.exchange
        self.lose(proto, transport)
        headers = [(b"Content-Length", b"2")]
        framing = validateResponseHeaders((1, 1), 200, headers, b"GET")
        exchange.responseWhole((1, 1), 200, b"OK", headers, framing, b"ok")
        self.assertEqual(b"", transport.value())
        self.assertEqual([], self.records)


class ClientHeadTests(ProxyTestCase):
    """
    A backend head the response reader remembers comes as the same tuple
    each time; the head txlb makes of it for the client is remembered too,
    and is what it would have made anew.
    """

    HEADERS = (
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Content-Length", b"2"),
    )

    def answer(self, request: bytes, headers: Any) -> tuple[str, bytes]:
        """
        @return: the backend chosen and what a new client reads for
            C{request} when that backend answers with C{headers} and C{ok}.
        """
        proto, transport = self.connect()
        proto.dataReceived(request)
        conn = self.upstreams.last.succeed()
        conn.start(200, headers)
        conn.send(b"ok")
        conn.complete()
        return conn.backend.name, transport.value()

    def test_sameAsAnew(self) -> None:
        """
        For HTTP/1.1 and 1.0 clients, kept alive or not, from each backend,
        a remembered head gives what the head as a list gives.
        """
        self.makeFactory(policy=ForwardingPolicy(backendHeader=True))
        requests = [
            get(), get(headers=b"Connection: close\r\n"),
            get(version=b"HTTP/1.0"),
            get(version=b"HTTP/1.0", headers=b"Connection: keep-alive\r\n"),
        ]
        for request in requests:
            anew = dict(self.answer(request, list(self.HEADERS)) for _ in self.backends)
            # Twice from each backend: made, then remembered.
            remembered = [
                self.answer(request, self.HEADERS) for _ in range(2 * len(self.backends))
            ]
            self.assertEqual(3, len(anew))
            self.assertEqual([anew[name] for name, _ in remembered],
                             [answer for _, answer in remembered])

    def test_stickyCookieSet(self) -> None:
        """
        With sticky sessions, the cookie is still set on a remembered head.
        """
        self.makeFactory(stickyCookie=b"lb")
        [response] = parseResponses(self.answer(get(), self.HEADERS)[1])
        self.assertEqual(1, len(response.header(b"Set-Cookie")))


# ------------------------------------------------------------ 100-continue


class ExpectContinueTests(ProxyTestCase):
    """
    C{Expect: 100-continue} is answered by txlb once a backend is ready.
    """

    def test_continueOnceConnected(self) -> None:
        """
        C{100 Continue} is written once the backend connection is ready,
        not before; Expect is not forwarded; the body then follows.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"", length=5, headers=b"Expect: 100-continue\r\n"))
        self.assertEqual(b"", transport.value())
        conn = self.upstreams.last.succeed()
        self.assertEqual(b"HTTP/1.1 100 Continue\r\n\r\n", transport.value())
        self.assertNotIn(b"expect", conn.heads[0].lower())
        proto.dataReceived(b"hello")
        self.assertEqual(b"hello", conn.body)
        self.assertEqual(1, conn.finishes)
        conn.interim(100)
        conn.respond(201, body=b"made")
        self.assertEqual([100, 201], statuses(transport.value()))

    def test_noContinueWhenBodySent(self) -> None:
        """
        A client that sent its body without waiting gets no C{100
        Continue}.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"hello", headers=b"Expect: 100-continue\r\n"))
        conn = self.upstreams.last.succeed()
        self.assertEqual(b"", transport.value())
        self.assertEqual(b"hello", conn.body)
        conn.respond(204, headers=[])

    def test_noContinueWhenRefused(self) -> None:
        """
        A request refused before any backend is ready (no usable backend)
        gets the refusal without a C{100 Continue}, and the connection
        closes.
        """
        for backend in self.backends:
            backend.state = AdminState.disabled
        proto, transport = self.connect()
        proto.dataReceived(post(b"", length=5, headers=b"Expect: 100-continue\r\n"))
        self.assertClosedWith(transport, 503)


# -------------------------------------------------------------- backpressure


class BackpressureTests(ProxyTestCase):
    """
    Reading from the client is paused while txlb cannot pass bytes on.
    """

    def test_bufferedBodyPausesClient(self) -> None:
        """
        Body bytes held past the high-water mark while the backend connects
        pause the client; they are sent and reading resumes once it is
        connected.
        """
        proto, transport = self.connect()
        body = b"x" * (BODY_HIGH_WATER + 1)
        proto.dataReceived(post(b"", length=len(body)))
        proto.dataReceived(body[:BODY_HIGH_WATER])
        self.assertEqual("producing", transport.producerState)
        proto.dataReceived(body[BODY_HIGH_WATER:])
        self.assertEqual("paused", transport.producerState)
        conn = self.upstreams.last.succeed()
        self.assertEqual(len(body), len(conn.body))
        self.assertEqual("producing", transport.producerState)
        conn.respond(204, headers=[])

    def test_backendBackpressurePausesClient(self) -> None:
        """
        While a body streams, the backend transport's producer is a handle
        that pauses and resumes reading from the client; it is removed when
        the body is done.
        """
        proto, transport, conn = self.serve(post(b"", length=10))
        producer = conn.transport.producer
        self.assertIsNotNone(producer)
        self.assertTrue(conn.transport.streaming)
        producer.pauseProducing()
        self.assertEqual("paused", transport.producerState)
        producer.resumeProducing()
        self.assertEqual("producing", transport.producerState)
        producer.pauseProducing()
        proto.dataReceived(b"0123456789")
        self.assertIsNone(conn.transport.producer)
        self.assertEqual("producing", transport.producerState)
        conn.respond(204, headers=[])

    def test_responseProducer(self) -> None:
        """
        While a response streams, the upstream connection is the client
        transport's streaming producer (a slow client holds the backend
        back); it is unregistered when the response is complete.
        """
        proto, transport, conn = self.serve(get())
        self.assertIsNone(transport.producer)
        conn.start(200, [(b"Content-Length", b"4")])
        self.assertIs(conn, transport.producer)
        self.assertTrue(transport.streaming)
        conn.send(b"data")
        conn.complete()
        self.assertIsNone(transport.producer)

    def test_heldBodyReleasedWithItsRequest(self) -> None:
        """
        Body bytes buffered for a request that txlb answers itself (502
        after a failed connect) stop counting against the high-water mark:
        later requests on the connection are not paused for them.
        """
        self.makeFactory(retry=RetryPolicy(attempts=1))
        proto, transport = self.connect()
        body = b"x" * (BODY_HIGH_WATER // 2 + 1)
        for _ in range(2):
            proto.dataReceived(post(body))
            self.upstreams.last.fail()
        self.assertEqual([502, 502], statuses(transport.value()))
        self.assertFalse(transport.disconnecting)
        self.assertEqual("producing", transport.producerState)


# ------------------------------------------------------------------ failures


class FailureTests(ProxyTestCase):
    """
    Backend failures, retries, and clients that leave.

    A retry excludes the backends already tried and the strategy's turn has
    moved on: after C{a}, the candidates are C{b, c} and the second pick is
    C{c}.
    """

    def test_connectFailureTriesNextBackend(self) -> None:
        """
        A failed connect is retried on another backend; the response comes
        from there, and the failure is recorded on the first.
        """
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.upstreams.last.fail()
        self.assertEqual(["a", "c"], self.upstreams.triedNames())
        self.upstreams.last.succeed().respond(200, body=b"from c")
        self.assertEqual([b"from c"], [r.body for r in parseResponses(transport.value())])
        self.assertEqual((1, 0), (self.a.failures, self.c.failures))
        self.assertIn("refused", self.a.lastFailureReason)

    def test_connectFailureRetriesPOSTWithBody(self) -> None:
        """
        A failed connect is retried even for a POST (nothing was sent), and
        the retry carries the whole body.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"payload"))
        self.upstreams.last.fail()
        conn = self.upstreams.last.succeed()
        self.assertEqual((b"payload", 1), (conn.body, conn.finishes))
        conn.respond(204, headers=[])
        self.assertEqual([204], statuses(transport.value()))

    def test_connectFailuresExhausted(self) -> None:
        """
        When every attempt's connect fails, 502 (the request keeps its
        connection: its body was read).
        """
        self.makeFactory(retry=RetryPolicy(attempts=2))
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.upstreams.last.fail()
        self.upstreams.last.fail()
        self.assertEqual(["a", "c"], self.upstreams.triedNames())
        self.assertEqual([502], statuses(transport.value()))
        self.assertFalse(transport.disconnecting)

    def test_connectFailuresOnEveryBackend(self) -> None:
        """
        When every backend was tried and failed to connect (attempts left
        over), the answer is 502: a backend failed; 503 is for a pool with
        no usable backend.
        """
        self.makeFactory(retry=RetryPolicy(attempts=5))
        proto, transport = self.connect()
        proto.dataReceived(get())
        for _ in range(3):
            self.upstreams.last.fail()
        self.assertEqual(["a", "c", "b"], self.upstreams.triedNames())
        self.assertEqual([502], statuses(transport.value()))
        self.assertEqual(0, self.factory.counters["no_backend"])

    def test_connectCutAtDeadline(self) -> None:
        """
        A connect still pending when the retry policy's overall timeout
        runs out is given up: 504, no other backend is tried.
        """
        self.makeFactory(retry=RetryPolicy(attempts=3, timeout=5.0))
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.reactor.advance(4.9)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(0.1)
        self.assertTrue(self.upstreams.last.cancelled)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([504], statuses(transport.value()))
        self.assertEqual(1, self.factory.counters["deadline"])

    def test_connectFailureNearDeadline(self) -> None:
        """
        A connect that fails before the overall timeout is retried, and the
        retry gets only what is left of it.
        """
        self.makeFactory(retry=RetryPolicy(attempts=3, timeout=5.0))
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.reactor.advance(3)
        self.upstreams.last.fail()
        self.assertEqual(2, len(self.upstreams.attempts))
        self.reactor.advance(1)
        conn = self.upstreams.last.succeed()
        self.assertEqual([1.0], conn.timeouts)
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))

    def test_resetBeforeResponseRetriedForGET(self) -> None:
        """
        An idempotent request whose backend fails before any response byte
        is retried on another backend.
        """
        proto, transport, conn = self.serve(get())
        conn.fail(started=False)
        self.assertTrue(conn.aborted)
        self.assertEqual(["a", "c"], self.upstreams.triedNames())
        self.upstreams.last.succeed().respond(200, body=b"retried")
        self.assertEqual([b"retried"], [r.body for r in parseResponses(transport.value())])
        self.assertEqual(1, self.factory.counters["retries"])
        self.assertEqual(2, self.records[0]["attempts"])

    def test_postNotRetried(self) -> None:
        """
        A non-idempotent request is not retried after a reset: 502.
        """
        proto, transport, conn = self.serve(post(b""))
        conn.fail(started=False)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([502], statuses(transport.value()))

    def test_idempotentWithBodySentNotRetried(self) -> None:
        """
        An idempotent request (PUT) whose body was already streamed to the
        backend is not retried: 502.
        """
        proto, transport, conn = self.serve(post(b"data", method=b"PUT"))
        self.assertEqual(b"data", conn.body)
        conn.fail(started=False)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([502], statuses(transport.value()))

    def test_resetAfterResponseStartedNotRetried(self) -> None:
        """
        A failure reported after response bytes arrived (but before a head
        was passed on) is not retried: 502.
        """
        proto, transport, conn = self.serve(get())
        conn.fail(started=True)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([502], statuses(transport.value()))

    def test_responseTimeout(self) -> None:
        """
        A response timeout gives 504 and is not retried.
        """
        proto, transport, conn = self.serve(get())
        conn.fail(ResponseTimeout(60.0), started=False)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([504], statuses(transport.value()))

    def test_failureAfterHeadAbortsClient(self) -> None:
        """
        A response that fails after its head was passed on is never
        finished cleanly: no last chunk, the client connection is aborted,
        the backend connection too.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Transfer-Encoding", b"chunked")])
        conn.send(b"partial")
        conn.fail(started=True)
        self.assertTrue(transport.aborted)
        self.assertFalse(transport.value().endswith(b"0\r\n\r\n"))
        self.assertTrue(conn.aborted)
        self.assertIsNone(transport.producer)
        self.assertEqual(1, len(self.upstreams.attempts))

    def test_failureAfterHeadWithLength(self) -> None:
        """
        A Content-Length response cut short is not passed off as complete:
        the client connection is aborted with fewer bytes than announced.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Content-Length", b"10")])
        conn.send(b"12345")
        conn.fail(started=True)
        self.assertTrue(transport.aborted)
        [response] = parseResponses(transport.value())
        self.assertFalse(response.complete)

    def test_noUsableBackend(self) -> None:
        """
        With no usable backend, 503 at once, counted; no connect.
        """
        self.a.healthy = False
        self.b.state = AdminState.draining
        self.c.maxConnections = 0
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.assertEqual([503], statuses(transport.value()))
        self.assertEqual([], self.upstreams.attempts)
        self.assertEqual(1, self.factory.counters["no_backend"])

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that leaves while the backend connects cancels the
        connect, and the backend's count is released.
        """
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.assertEqual(1, self.a.activeConnections)
        self.lose(proto, transport, ConnectionLost())
        self.assertTrue(self.upstreams.last.cancelled)
        self.assertEqual(0, self.a.activeConnections)

    def test_clientLeavesWhileWaiting(self) -> None:
        """
        A client that leaves while its request is with the backend aborts
        the backend connection; a late response is ignored.
        """
        proto, transport, conn = self.serve(get())
        exchange = conn.exchange
        self.lose(proto, transport, ConnectionLost())
        self.assertTrue(conn.aborted)
        self.assertEqual(0, self.a.activeConnections)
        exchange.responseStarted((1, 1), 200, b"OK", [(b"Content-Length", b"0")], None)
        self.assertEqual(b"", transport.value())

    def test_clientLeavesDuringResponse(self) -> None:
        """
        A client that leaves during the response stops the upstream
        connection (its producer) and releases the backend.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Content-Length", b"10")])
        self.lose(proto, transport, ConnectionLost())
        self.assertTrue(conn.aborted)
        self.assertEqual(0, self.a.activeConnections)

    def test_clientLeavesWithPipelinedRequests(self) -> None:
        """
        A client that leaves with requests queued releases all of them.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/1") + get(b"/2") + get(b"/3"))
        self.lose(proto, transport, ConnectionLost())
        self.assertTrue(self.upstreams.last.cancelled)

    def test_retryAfterFailureInsideSendRequest(self) -> None:
        """
        When a connection reports itself lost from inside C{sendRequest}
        (a pooled connection the backend had closed), the retry carries the
        whole request body; nothing more is sent on the dead connection.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"payload", method=b"PUT"))
        dead = FakeUpstreamConnection(self.a)
        dead.failOnSend = True
        self.upstreams.last.succeed(dead)
        self.assertEqual(["a", "c"], self.upstreams.triedNames())
        self.assertEqual((b"", 0), (dead.body, dead.finishes))
        conn = self.upstreams.last.succeed()
        self.assertEqual(b"payload", conn.body)
        self.assertEqual(1, conn.finishes)
        conn.respond(204, headers=[])
        self.assertEqual([204], statuses(transport.value()))

    def test_staleConnectionRetriedFreshOnSameBackend(self) -> None:
        """
        A GET whose reused connection turns out closed by the backend
        (lost before any response byte) is sent again on a new connection,
        without counting a backend failure or using up an attempt; the same
        backend may take it (here it is the only usable one).
        """
        self.b.healthy = self.c.healthy = False
        proto, transport = self.connect()
        proto.dataReceived(get())
        stale = FakeUpstreamConnection(self.a)
        stale.reused = True
        self.upstreams.last.succeed(stale)
        stale.exchange.responseFailed(Failure(ConnectionLostEarly()), False)
        self.assertEqual(["a", "a"], self.upstreams.triedNames())
        self.assertTrue(self.upstreams.last.fresh)
        self.assertEqual(0, self.a.failures)
        conn = self.upstreams.last.succeed()
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))
        self.assertEqual(0, self.l7pool.budget.retries)

    def test_staleConnectionPostNotResent(self) -> None:
        """
        A POST on a reused connection lost before any response byte is not
        sent again (the backend may have acted on it): 502, and no backend
        failure is counted.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"payload"))
        stale = FakeUpstreamConnection(self.a)
        stale.reused = True
        self.upstreams.last.succeed(stale)
        stale.exchange.responseFailed(Failure(ConnectionLostEarly()), False)
        self.assertEqual(["a"], self.upstreams.triedNames())
        self.assertEqual([502], statuses(transport.value()))
        self.assertEqual(0, self.a.failures)

    def test_retryWithNoBackendLeft(self) -> None:
        """
        A retry that finds no other usable backend answers 502 (a backend
        failed) and gives its place in the retry budget back.
        """
        self.b.healthy = self.c.healthy = False
        proto, transport, conn = self.serve(get())
        conn.fail(started=False)
        self.assertEqual([502], statuses(transport.value()))
        self.assertEqual(0, self.l7pool.budget.retries)

    def test_earlyResponseToUnfinishedUpload(self) -> None:
        """
        A complete response before the whole body was read closes the
        client connection and aborts the backend connection, which still
        expects body bytes, rather than leaving it checked out.
        """
        proto, transport, conn = self.serve(post(b"01234", length=100))
        conn.respond(413, body=b"no")
        self.assertEqual([413], statuses(transport.value()))
        self.assertTrue(transport.disconnecting)
        self.assertTrue(conn.aborted or conn.finishes, "connection left checked out")

    def test_unrequestedSwitch(self) -> None:
        """
        A 101 to a request that did not ask to upgrade is a bad response:
        502, backend connection aborted.
        """
        proto, transport, conn = self.serve(get())
        conn.start(101, [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")],
                   reason=b"Switching Protocols")
        self.assertEqual([502], statuses(transport.value()))
        self.assertTrue(conn.aborted)


class RetryBudgetTests(ProxyTestCase):
    """
    Retries are bounded by the pool's budget.
    """

    def test_budgetExhausted(self) -> None:
        """
        With no retry left in the budget, a retryable failure gives 502 and
        the refusal is counted.
        """
        self.makeFactory(budget=RetryBudget(ratio=0.0, minimum=0))
        proto, transport, conn = self.serve(get())
        self.assertEqual(1, self.l7pool.budget.requests)
        conn.fail(started=False)
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual([502], statuses(transport.value()))
        self.assertEqual(1, self.l7pool.budget.refused)

    def test_retryCountedWhileInFlight(self) -> None:
        """
        A retry in flight counts in the budget until it ends.
        """
        proto, transport, conn = self.serve(get())
        conn.fail(started=False)
        self.assertEqual((1, 1), (self.l7pool.budget.requests, self.l7pool.budget.retries))
        self.upstreams.last.succeed().respond(204, headers=[])
        self.assertEqual((0, 0), (self.l7pool.budget.requests, self.l7pool.budget.retries))

    def test_maxAttempts(self) -> None:
        """
        A request is tried at most C{attempts} times.
        """
        self.makeFactory(retry=RetryPolicy(attempts=2))
        proto, transport, conn = self.serve(get())
        conn.fail(started=False)
        self.upstreams.last.succeed().fail(started=False)
        self.assertEqual(["a", "c"], self.upstreams.triedNames())
        self.assertEqual([502], statuses(transport.value()))


# ------------------------------------------------------------------ affinity


class StickyTests(ProxyTestCase):
    """
    Sticky sessions by a cookie txlb sets.
    """

    def setUp(self) -> None:
        super().setUp()
        self.makeFactory(stickyCookie=b"lb")

    def cookieOf(self, backend: Backend) -> bytes:
        """
        @return: the Set-Cookie value pinning C{backend}.
        """
        return b"lb=" + self.l7pool.stickyToken(backend) + b"; Path=/; HttpOnly; SameSite=Lax"

    def test_firstResponseSetsCookie(self) -> None:
        """
        A response to a request without the cookie pins its backend.
        """
        proto, transport, conn = self.serve(get())
        conn.respond(200, body=b"x")
        [response] = parseResponses(transport.value())
        self.assertEqual([self.cookieOf(self.a)], response.header(b"Set-Cookie"))
        self.assertNotIn(b"10.0.0.1", self.l7pool.stickyToken(self.a))

    def test_cookieSticks(self) -> None:
        """
        A request with the cookie goes to its backend, whatever the
        strategy would choose, and no new cookie is set.
        """
        token = self.l7pool.stickyToken(self.b)
        proto, transport, conn = self.serve(get(headers=b"Cookie: x=1; lb=" + token + b"\r\n"))
        self.assertEqual(["b"], self.upstreams.triedNames())
        self.assertEqual(0, self.strategy.picks)
        conn.respond(200, body=b"x")
        [response] = parseResponses(transport.value())
        self.assertEqual([], response.header(b"Set-Cookie"))

    def test_unusableBackendRepinned(self) -> None:
        """
        When the cookie's backend is unusable, another is chosen and a new
        cookie pins it.
        """
        token = self.l7pool.stickyToken(self.a)
        self.a.healthy = False
        proto, transport, conn = self.serve(get(headers=b"Cookie: lb=" + token + b"\r\n"))
        self.assertEqual(["b"], self.upstreams.triedNames())
        conn.respond(200, body=b"x")
        [response] = parseResponses(transport.value())
        self.assertEqual([self.cookieOf(self.b)], response.header(b"Set-Cookie"))

    def test_unknownCookieChosenNormally(self) -> None:
        """
        A cookie naming no backend is ignored: the strategy chooses and a
        cookie is set.
        """
        proto, transport, conn = self.serve(get(headers=b"Cookie: lb=0000\r\n"))
        self.assertEqual(1, self.strategy.picks)
        conn.respond(200, body=b"x")
        [response] = parseResponses(transport.value())
        self.assertEqual([self.cookieOf(self.a)], response.header(b"Set-Cookie"))

    def test_failedStickyBackendRepinned(self) -> None:
        """
        When the cookie's backend fails to connect and another answers, the
        response pins the one that answered.
        """
        token = self.l7pool.stickyToken(self.a)
        proto, transport = self.connect()
        proto.dataReceived(get(headers=b"Cookie: lb=" + token + b"\r\n"))
        self.upstreams.last.fail()
        self.assertEqual(["a", "b"], self.upstreams.triedNames())
        self.upstreams.last.succeed().respond(200, body=b"x")
        [response] = parseResponses(transport.value())
        self.assertEqual([self.cookieOf(self.b)], response.header(b"Set-Cookie"))


class HashKeyTests(ProxyTestCase):
    """
    The pool's C{hash_key} reaches the strategy's context.
    """

    def test_hashKey(self) -> None:
        """
        The key comes from the named header, cookie or the path (query
        removed); without a spec, none.
        """
        cases = [
            ("header", b"alice", ("header", b"x-user"), b"X-User: alice\r\n", b"/"),
            ("header absent", None, ("header", b"x-user"), b"", b"/"),
            ("cookie", b"s3", ("cookie", b"sid"), b"Cookie: a=1; sid=s3; b=2\r\n", b"/"),
            ("quoted cookie", b"s3", ("cookie", b"sid"), b'Cookie: sid="s3"\r\n', b"/"),
            ("path", b"/p/q", ("path", None), b"", b"/p/q?x=1"),
            ("none", None, None, b"X-User: alice\r\n", b"/"),
        ]

        def check(spec: Any, headers: bytes, target: bytes) -> Any:
            self.makeFactory(hashKey=spec)
            proto, transport, conn = self.serve(get(target, headers=headers))
            conn.respond(204, headers=[])
            context = self.strategy.contexts[-1]
            self.assertEqual(target, context.request.target)
            self.assertEqual(CLIENT_IP, context.clientHost)
            return context.hashKey

        self.assertEqual([], _mismatches(cases, check))


# ------------------------------------------------------------------ upgrades

UPGRADE = get(
    b"/chat",
    headers=b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
)


class UpgradeTests(ProxyTestCase):
    """
    WebSocket (any Upgrade): a byte tunnel only after the backend's 101.
    """

    def test_upgradeForwarded(self) -> None:
        """
        The upgrade request is forwarded with C{Connection: upgrade} and
        its C{Upgrade}, and the WebSocket headers.
        """
        proto, transport, conn = self.serve(UPGRADE)
        head = conn.heads[0]
        self.assertIn(b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n", head)
        self.assertIn(b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", head)
        conn.respond(200, body=b"declined")

    def test_tunnel(self) -> None:
        """
        Bytes sent after the upgrade request are held until the 101, then
        delivered; after it bytes flow both ways, the backend's first bytes
        (those after its 101 head) first.
        """
        proto, transport = self.connect()
        proto.dataReceived(UPGRADE + b"early")
        conn = self.upstreams.last.succeed()
        self.assertEqual(b"", conn.body)
        backendBytes = conn.transport.value()
        conn.upgrade(extra=b"hello")
        [response] = parseResponses(transport.value().split(b"\r\n\r\n")[0] + b"\r\n\r\n")
        self.assertEqual(101, response.status)
        self.assertEqual([b"websocket"], response.header(b"Upgrade"))
        self.assertEqual([], response.header(b"Set-Cookie"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nhello"))
        self.assertEqual(backendBytes + b"early", conn.transport.value())
        proto.dataReceived(b"ping")
        self.assertEqual(backendBytes + b"earlyping", conn.transport.value())
        transport.clear()
        conn.tunnelReceive(b"pong")
        self.assertEqual(b"pong", transport.value())
        self.assertEqual("producing", transport.producerState)
        self.assertEqual(1, len(self.records))
        self.assertEqual(101, self.records[0]["status"])

    def test_tunnelEndsWithBackend(self) -> None:
        """
        When the backend closes the tunnel, the client connection closes.
        """
        proto, transport, conn = self.serve(UPGRADE)
        conn.upgrade()
        conn.tunnelClose()
        self.assertTrue(transport.disconnecting)

    def test_tunnelEndsWithClient(self) -> None:
        """
        When the client leaves a tunnel, the backend connection is closed
        and the backend's count released.
        """
        proto, transport, conn = self.serve(UPGRADE)
        conn.upgrade()
        self.lose(proto, transport)
        self.assertTrue(conn.aborted)
        self.assertEqual(0, self.a.activeConnections)

    def test_earlyBytesInLaterRead(self) -> None:
        """
        Bytes read after the upgrade request but before the backend's answer
        are held for the tunnel, not parsed as HTTP.
        """
        proto, transport, conn = self.serve(UPGRADE)
        backendBytes = conn.transport.value()
        proto.dataReceived(b"\x81\x85 binary frame")
        self.assertEqual(b"", transport.value())
        self.assertEqual(backendBytes, conn.transport.value())
        conn.upgrade()
        self.assertEqual(backendBytes + b"\x81\x85 binary frame", conn.transport.value())
        self.assertFalse(transport.disconnecting)

    def test_declinedUpgradeCloses(self) -> None:
        """
        An upgrade the backend declines (200) is answered, then the
        connection closes; bytes after the request never reach a backend.
        """
        proto, transport = self.connect()
        proto.dataReceived(UPGRADE + b"early")
        conn = self.upstreams.last.succeed()
        conn.respond(200, body=b"no")
        [response] = parseResponses(transport.value())
        self.assertEqual((200, b"no"), (response.status, response.body))
        self.assertEqual([b"close"], response.header(b"Connection"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(b"", conn.body)
        self.assertEqual(1, len(self.upstreams.attempts))

    def test_h2cNotTunnelled(self) -> None:
        """
        An C{h2c} upgrade is forwarded as a plain request (no Upgrade), and
        the connection stays HTTP/1.1.
        """
        proto, transport, conn = self.serve(get(
            headers=b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        ))
        self.assertNotIn(b"upgrade", conn.heads[0].lower())
        self.assertNotIn(b"http2-settings", conn.heads[0].lower())
        conn.respond(200, body=b"h1")
        proto.dataReceived(get(b"/next"))
        self.assertEqual(2, len(self.upstreams.attempts))
        self.upstreams.last.succeed().respond(204, headers=[])
        self.assertEqual([200, 204], statuses(transport.value()))


# ---------------------------------------------------------------- access log


class AccessLogTests(ProxyTestCase):
    """
    One access-log record per request.
    """

    def test_record(self) -> None:
        """
        A proxied request's record has every documented field, with the
        request's values.
        """
        proto, transport, conn = self.serve(post(b"12345", target=b"/up?x=1"))
        self.reactor.advance(2.5)
        conn.respond(201, body=b"created")
        [record] = self.records
        self.assertIsInstance(record.pop("time"), float)
        self.assertEqual(
            {
                "client": CLIENT_IP,
                "method": "POST",
                "target": "/up?x=1",
                "status": 201,
                "bytes_in": 5,
                "bytes_out": len(transport.value()),
                "pool": "web",
                "backend": "a",
                "attempts": 1,
                "duration": 2.5,
            },
            record,
        )

    def test_onePerRequest(self) -> None:
        """
        Pipelined, refused and failed requests each get one record, in the
        order they were answered.
        """
        self.makeFactory(retry=RetryPolicy(attempts=1))
        proto, transport = self.connect()
        proto.dataReceived(get(b"/ok") + get(b"/fail"))
        self.upstreams.last.succeed().respond(204, headers=[])
        self.upstreams.last.fail()
        proto.dataReceived(get(b"/bad", host=None))
        self.assertEqual(
            [("/ok", 204, "a"), ("/fail", 502, "b"), ("/bad", 400, None)],
            [(r["target"], r["status"], r["backend"]) for r in self.records],
        )
        self.assertEqual(3, self.factory.counters["requests"])

    def test_fileLinesMatchRecords(self) -> None:
        """
        An L{AccessLog} file gets, for each request, a line of JSON with
        the fields and values of the record any other access log gets
        (targets that JSON must escape, and a refused request without pool
        or backend, included).
        """
        path = self.mktemp()
        fileLog = AccessLog(path)
        self.addCleanup(fileLog.close)
        requests = [
            get(b"/plain"),
            get(b'/q?a="b"&c=\\d'),
            get(b"/a{b}|'c'"),
            get(b"/bad", host=None),
        ]
        for accessLog in (self.records.append, fileLog):
            self.makeFactory()
            self.factory.accessLog = accessLog
            proto, transport = self.connect()
            for request in requests[:-1]:
                self.reactor.advance(0.25)
                proto.dataReceived(request)
                self.reactor.advance(0.125)
                self.upstreams.last.succeed().respond(200, body=b"ok")
            proto.dataReceived(requests[-1])
            self.lose(proto, transport)
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f.read().splitlines()]
        records = self.records
        self.assertEqual(len(records), len(lines))
        for record, line in zip(records, lines, strict=True):
            self.assertLess(abs(record.pop("time") - line.pop("time")), 5)
            self.assertEqual(list(record), list(line))
            self.assertEqual(record, line)
        found = [r["target"] for r in records]
        self.assertEqual(["/plain", '/q?a="b"&c=\\d', "/a{b}|'c'", "/bad"], found)

    def test_bytesOutChunked(self) -> None:
        """
        For a chunked response, C{bytes_out} is what was written.
        """
        proto, transport, conn = self.serve(get())
        conn.start(200, [(b"Transfer-Encoding", b"chunked")])
        conn.send(b"hello")
        conn.send(b"x" * 300)
        conn.complete()
        self.assertEqual(len(transport.value()), self.records[0]["bytes_out"])


# ---------------------------------------------------------------- listener


class ConnectionLimitTests(ProxyTestCase):
    """
    The listener's C{max_connections}.
    """

    def test_overLimit(self) -> None:
        """
        A connection over the limit gets 503 and is closed; it takes no
        slot, and those admitted still work.
        """
        self.makeFactory(maxConnections=1)
        proto, transport = self.connect()
        shedProto, shedTransport = self.connect()
        self.assertClosedWith(shedTransport, 503)
        self.assertEqual((1, 1), (self.factory.limit.active, self.factory.limit.shed))
        shedProto.dataReceived(get())
        self.assertEqual([], self.upstreams.attempts)
        self.lose(shedProto, shedTransport)
        self.assertEqual(1, self.factory.limit.active)
        proto.dataReceived(get())
        self.upstreams.last.succeed().respond(204, headers=[])
        self.assertEqual([204], statuses(transport.value()))
        self.lose(proto, transport)
        self.assertEqual(0, self.factory.limit.active)
        self.assertEqual(0, self.factory.activeCount)
