"""
The fixture of the L7 front's in-memory tests.

Raw bytes are fed to an L{HTTPProxyProtocol} over a L{StringTransport} on a
L{MemoryReactorClock}; its backends are L{FakeUpstreamConnection}s handed
out by a L{FakeUpstreamPool} whose connects the tests complete by hand, so
every event order is chosen by the test.  After every test the client
connections are closed and the accounting must be back at rest: no request
in flight on any backend, nothing in the retry budget, no client slot
taken, no timer left.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txlb.pool import Backend, Pool
from txlb.protocols.http import (
    HTTPProxyFactory,
    HTTPSettings,
    L7Pool,
)
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
