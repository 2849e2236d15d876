"""
Tests for the L7 front's protection and draining, in memory: rate limits
(429 with Retry-After), the pool queue, passive outcomes, stats paths
answered by txlb itself, and closing idle connections on drain.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address

from txlb.protocols.headers import ForwardingPolicy
from txlb.ratelimit import TokenBucketTable
from txlb.test.fakeupstream import CLIENT_ADDRESS, LISTENER_ADDRESS, ClientTransport
from txlb.test.proxycase import ProxyTestCase, get, parseResponses, post


class RateLimitTests(ProxyTestCase):
    """
    A listener's rate limit answers 429 past the burst.
    """

    def limit(self, rate: float = 1.0, burst: int = 2, **l7: Any) -> TokenBucketTable:
        self.makeFactory(**l7)
        table = TokenBucketTable(rate, burst, self.reactor)
        self.factory.rateLimit = table
        return table

    def test_burstThen429(self) -> None:
        """
        Past its burst a client gets 429 with C{Retry-After} (whole
        seconds, at least 1) and the connection is closed; the refusal is
        counted, nothing reached a backend.
        """
        self.limit(rate=0.5, burst=2)
        for _ in range(2):
            proto, transport, conn = self.serve(get())
            conn.respond(200, body=b"ok")
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.assertClosedWith(transport, 429)
        (response,) = parseResponses(transport.value())
        self.assertEqual(response.header(b"Retry-After"), [b"2"])
        self.assertEqual(self.factory.counters["rate_limited"], 1)
        self.assertEqual(len(self.upstreams.attempts), 2)

    def test_refillsOverTime(self) -> None:
        """
        Tokens come back at the configured rate.
        """
        self.limit(rate=1.0, burst=1)
        proto, transport, conn = self.serve(get())
        conn.respond(200)
        self.reactor.advance(1.0)
        proto.dataReceived(get())
        self.upstreams.last.succeed().respond(200)
        self.assertEqual(
            [200, 200], [r.status for r in parseResponses(transport.value())]
        )

    def test_bodyNeverParsedAsRequest(self) -> None:
        """
        A refused request's body is not read as the next request: the
        connection closes after the 429.
        """
        self.limit(rate=1.0, burst=1)
        proto, transport, conn = self.serve(get())
        conn.respond(200)
        proto.dataReceived(post(get(b"/smuggled")))
        statuses = [r.status for r in parseResponses(transport.value())]
        self.assertEqual(statuses, [200, 429])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.upstreams.attempts), 1)

    def test_clientBehindTrustedProxy(self) -> None:
        """
        Behind a trusted proxy the bucket is the forwarded client's, so two
        clients behind one proxy are limited separately.
        """
        policy = ForwardingPolicy(trustedProxies=[__import__("ipaddress").ip_network("10.9.0.0/16")])
        self.limit(rate=1.0, burst=1, policy=policy)
        proxy = IPv4Address("TCP", "10.9.0.1", 40000)
        self.assertEqual(
            self.factory.rateKey("10.9.0.1", [(b"X-Forwarded-For", b"1.1.1.1, 10.9.0.2")]),
            "1.1.1.1",
        )
        answered = []
        for client in (b"1.1.1.1", b"2.2.2.2"):
            proto = self.factory.buildProtocol(proxy)
            transport = ClientTransport(peerAddress=proxy, hostAddress=LISTENER_ADDRESS)
            proto.makeConnection(transport)
            self.clients.append((proto, transport))
            proto.dataReceived(get(headers=b"X-Forwarded-For: " + client + b"\r\n"))
            self.upstreams.last.succeed().respond(200)
            answered.append(parseResponses(transport.value())[0].status)
        self.assertEqual(answered, [200, 200])

    def test_untrustedForwardedForIgnored(self) -> None:
        """
        A client cannot dodge the limit with its own X-Forwarded-For.
        """
        self.limit(rate=1.0, burst=1)
        self.assertEqual(
            self.factory.rateKey(CLIENT_ADDRESS.host, [(b"X-Forwarded-For", b"7.7.7.7")]),
            CLIENT_ADDRESS.host,
        )


class QueueTests(ProxyTestCase):
    """
    Requests wait for a backend below its C{max_connections}.
    """

    def setUp(self) -> None:
        super().setUp()
        for backend in self.backends[1:]:
            self.pool.removeBackend(backend.name)
        self.a.maxConnections = 1
        self.pool.maxQueue = 1
        self.pool.queueTimeout = 2.0

    def test_waitsThenServed(self) -> None:
        """
        A request arriving while the only backend is full waits, and is
        sent when the first one finishes.
        """
        proto1, transport1, conn1 = self.serve(get(b"/1"))
        proto2, transport2 = self.connect()
        proto2.dataReceived(get(b"/2"))
        self.assertEqual(self.pool.queued, 1)
        self.assertEqual(len(self.upstreams.attempts), 1)
        conn1.respond(200, body=b"one")
        self.assertEqual(self.pool.queued, 0)
        self.upstreams.last.succeed().respond(200, body=b"two")
        self.assertEqual(parseResponses(transport2.value())[0].body, b"two")

    def test_queueFullAndTimeout(self) -> None:
        """
        Past C{max_queue} a request is refused at once (503); a queued one
        gets 503 at the queue timeout; both are counted.
        """
        proto1, transport1, conn1 = self.serve(get(b"/1"))
        proto2, transport2 = self.connect()
        proto2.dataReceived(get(b"/2"))
        proto3, transport3 = self.connect()
        proto3.dataReceived(get(b"/3"))
        (full,) = parseResponses(transport3.value())
        self.assertEqual(full.status, 503)
        self.reactor.advance(2.0)
        (timedOut,) = parseResponses(transport2.value())
        self.assertEqual(timedOut.status, 503)
        self.assertIn(b"no backend free within 2 s", timedOut.body)
        self.assertEqual(
            (self.factory.counters["queue_full"], self.factory.counters["queue_timeout"]),
            (1, 1),
        )
        self.assertEqual(
            (self.pool.dropped["queue_full"], self.pool.dropped["queue_timeout"]), (1, 1)
        )
        conn1.respond(200)

    def test_clientLeavesQueue(self) -> None:
        """
        A client that disconnects while queued leaves the queue.
        """
        proto1, transport1, conn1 = self.serve(get(b"/1"))
        proto2, transport2 = self.connect()
        proto2.dataReceived(get(b"/2"))
        self.lose(proto2, transport2)
        self.assertEqual(self.pool.queued, 0)
        conn1.respond(200)
        self.assertEqual(len(self.upstreams.attempts), 1)


class PassiveOutcomeTests(ProxyTestCase):
    """
    L7 outcomes reach the passive checks: 5xx responses fail, others
    succeed.
    """

    def test_fiveHundredsCountAsFailures(self) -> None:
        events: list[tuple[str, str]] = []

        class Recorder:
            def succeeded(self, backend: Any) -> None:
                events.append(("ok", backend.name))

            def failed(self, backend: Any, reason: str) -> None:
                events.append((reason, backend.name))

        for backend in self.backends:
            backend.passive = Recorder()
        proto, transport, conn = self.serve(get())
        conn.respond(503)
        proto.dataReceived(get())
        self.upstreams.last.succeed().respond(200)
        self.assertEqual(events, [("5xx response", "a"), ("ok", "b")])


class LocalStatsTests(ProxyTestCase):
    """
    With C{stats = true} a listener answers C{/lb-health} and
    C{/lb-stats} itself.
    """

    def setUp(self) -> None:
        super().setUp()
        self.asked: list[bytes] = []

        def stats(path: bytes) -> Any:
            self.asked.append(path)
            return {"path": path.decode()}

        self.factory.localStats = stats

    def test_answeredLocally(self) -> None:
        """
        The JSON answer comes from txlb; the connection stays open; no
        backend is asked.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/lb-health") + get(b"/lb-stats"))
        first, second = parseResponses(transport.value())
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(first.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(json.loads(first.body), {"path": "/lb-health"})
        self.assertEqual(json.loads(second.body), {"path": "/lb-stats"})
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.upstreams.attempts, [])

    def test_otherPathsProxied(self) -> None:
        proto, transport, conn = self.serve(get(b"/lb-healthz"))
        conn.respond(200, body=b"backend")
        self.assertEqual(parseResponses(transport.value())[0].body, b"backend")

    def test_offByDefault(self) -> None:
        self.factory.localStats = None
        proto, transport, conn = self.serve(get(b"/lb-health"))
        conn.respond(200, body=b"backend")
        self.assertEqual(parseResponses(transport.value())[0].body, b"backend")


class DrainTests(ProxyTestCase):
    """
    L{HTTPProxyFactory.startDraining} closes idle keep-alive connections
    and makes the next responses close.
    """

    def test_idleClosedBusyToldToClose(self) -> None:
        idleProto, idleTransport, idleConn = self.serve(get())
        idleConn.respond(200)
        busyProto, busyTransport, busyConn = self.serve(get())
        self.factory.startDraining()
        self.assertTrue(idleTransport.disconnecting)
        self.assertFalse(busyTransport.disconnecting)
        busyConn.respond(200, body=b"done")
        (response,) = parseResponses(busyTransport.value())
        self.assertEqual(response.header(b"Connection"), [b"close"])
        self.assertTrue(busyTransport.disconnecting)

    def test_abortAll(self) -> None:
        proto, transport, conn = self.serve(get())
        self.factory.abortAll()
        self.assertTrue(transport.aborted)
        self.lose(proto, transport)
