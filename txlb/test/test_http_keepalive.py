"""
Tests for the L7 front's keep-alive connections, in memory: requests one
after the other and pipelined, remembered request heads sent at once on
idle backend connections, responses read whole, and the client heads made
from remembered backend heads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address

from txlb.config import RouteConfig
from txlb.pool import Backend, Pool
from txlb.protocols.headers import ForwardingPolicy, validateResponseHeaders
from txlb.protocols.http import (
    MAX_PIPELINE,
    HTTPProxyFactory,
    HTTPSettings,
    L7Pool,
)
from txlb.ratelimit import TokenBucketTable
from txlb.routing import Router
from txlb.test.fakeupstream import (
    CLIENT_ADDRESS,
    LISTENER_ADDRESS,
    ClientTransport,
    FakeUpstreamConnection,
    RoundRobin,
)
from txlb.test.proxycase import (
    ProxyTestCase,
    get,
    parseResponses,
    post,
    requestIdOf,
    statuses,
)

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

    def test_parsedRequestsOnIdleConnections(self) -> None:
        """
        A request parsed (never seen before) without a body is sent whole on
        an idle connection at once, with the head the general way makes
        for it on a new connection.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/first", headers=b"User-Agent: one\r\n"))
        fresh = self.upstreams.last.succeed()
        fresh.respond(200, body=b"ok")
        idle = self.upstreams.keepIdle(self.b)
        proto.dataReceived(get(b"/first", headers=b"User-Agent: two\r\n"))
        self.assertEqual(1, len(self.upstreams.attempts))
        self.assertEqual(1, idle.finishes)
        expected = fresh.heads[0].replace(b"User-Agent: one", b"User-Agent: two")
        self.assertEqual(expected.replace(requestIdOf(expected), b""),
                         idle.heads[0].replace(requestIdOf(idle.heads[0]), b""))
        self.assertNotEqual(requestIdOf(fresh.heads[0]), requestIdOf(idle.heads[0]))
        idle.respond(200, body=b"ok")
        self.assertEqual([200, 200], statuses(transport.value()))

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
