"""
Tests for the L7 front's client body timeout, the retry policy's overall
deadline and what it passes on of interim responses, in memory (see
L{txlb.test.test_http} for the fixture).
"""

from __future__ import annotations

from txlb.admin.views import _serverCounts
from txlb.protocols.headers import ForwardingPolicy
from txlb.protocols.http import (
    BODY_HIGH_WATER,
    HTTPProxyFactory,
    HTTPSettings,
    RetryPolicy,
)
from txlb.protocols.upstream import ResponseTimeout
from txlb.routing import Router
from txlb.test.proxycase import ProxyTestCase, get, parseResponses, post, statuses


class BodyTimeoutTests(ProxyTestCase):
    """
    A client may pause at most C{bodyTimeout} while it sends a request body.
    """

    def setUp(self) -> None:
        super().setUp()
        self.makeFactory(settings=HTTPSettings(bodyTimeout=30.0))

    def test_stalledBodyGets408(self) -> None:
        """
        A body that stops arriving gets 408 at the body timeout; the
        backend request, started with part of the body, is aborted.
        """
        proto, transport, conn = self.serve(post(b"abc", length=10))
        self.assertEqual(b"abc", conn.body)
        self.reactor.advance(29.9)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(0.1)
        self.assertClosedWith(transport, 408)
        self.assertTrue(conn.aborted)
        self.assertEqual(1, self.factory.counters["body_timeout"])

    def test_slowButSteadyBody(self) -> None:
        """
        The timeout counts from the last body bytes: a body sent in small
        pieces, each well within it, passes however long it takes in all.
        """
        proto, transport, conn = self.serve(post(b"", length=10))
        for _ in range(10):
            self.reactor.advance(20)
            proto.dataReceived(b"x")
        self.assertEqual(b"x" * 10, conn.body)
        self.assertEqual(1, conn.finishes)
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))
        # The connection is kept alive, under the idle timeout now.
        self.assertFalse(transport.disconnecting)

    def test_chunkedBodyStalls(self) -> None:
        """
        A chunked body that stops between chunks times out the same way.
        """
        proto, transport, conn = self.serve(
            get(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n")
        )
        proto.dataReceived(b"3\r\nabc\r\n")
        self.reactor.advance(30)
        self.assertClosedWith(transport, 408)

    def test_startedResponseCut(self) -> None:
        """
        When the backend already started its response, a stalled upload
        cannot be answered 408: the client connection is cut.
        """
        proto, transport, conn = self.serve(post(b"abc", length=10))
        conn.start(200, [(b"Transfer-Encoding", b"chunked")])
        conn.send(b"early")
        self.reactor.advance(30)
        self.assertTrue(transport.aborted)
        self.assertTrue(conn.aborted)
        # Counted, and logged, as a request that went out cut short.
        self.assertEqual(1, self.factory.counters["body_timeout"])
        self.assertEqual(1, self.factory.counters["requests"])
        self.assertEqual([200], [record["status"] for record in self.records])

    def test_reloadLiftsTheLimitMidUpload(self) -> None:
        """
        A reload that turns the body timeout off while a body arrives ends
        the watch: the upload goes on.
        """
        proto, transport, conn = self.serve(post(b"abc", length=6))
        self.factory.reconfigure(HTTPProxyFactory(
            pools={"web": self.l7pool}, router=Router([], "web"),
            reactor=self.reactor, settings=HTTPSettings(bodyTimeout=None),
        ))
        self.reactor.advance(100)
        proto.dataReceived(b"def")
        self.assertEqual(b"abcdef", conn.body)
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))

    def test_noDeadlineWhileTxlbHoldsReading(self) -> None:
        """
        While txlb itself does not read (the body waits for a backend), the
        client is not late; its timeout starts again when reading resumes.
        """
        proto, transport = self.connect()
        body = b"x" * (BODY_HIGH_WATER + 1)
        proto.dataReceived(post(body, length=len(body) + 5))
        self.assertEqual("paused", transport.producerState)
        self.reactor.advance(100)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(10)
        conn = self.upstreams.last.succeed()
        self.assertEqual("producing", transport.producerState)
        self.reactor.advance(29)
        self.assertEqual(b"", transport.value())
        proto.dataReceived(b"y" * 5)
        self.assertEqual(1, conn.finishes)
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))

    def test_expectContinueWaitsForContinue(self) -> None:
        """
        A client that expects C{100 Continue} is not late before txlb sent
        it; from then on the body timeout applies.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"", length=5, headers=b"Expect: 100-continue\r\n"))
        self.reactor.advance(100)
        conn = self.upstreams.last.succeed()
        self.assertEqual([100], statuses(transport.value()))
        self.reactor.advance(30)
        responses = parseResponses(transport.value())
        self.assertEqual([100, 408], [r.status for r in responses])
        self.assertTrue(conn.aborted)

    def test_continueOnceAcrossRetries(self) -> None:
        """
        A retry of a request that was told C{100 Continue} does not tell it
        again.
        """
        proto, transport = self.connect()
        proto.dataReceived(post(b"", method=b"PUT", length=5,
                                headers=b"Expect: 100-continue\r\n"))
        conn = self.upstreams.last.succeed()
        conn.fail(started=False)
        retry = self.upstreams.last.succeed()
        proto.dataReceived(b"hello")
        retry.respond(200, body=b"ok")
        self.assertEqual([100, 200], statuses(transport.value()))

    def test_pipelinedBodyStalls(self) -> None:
        """
        A pipelined request whose body stalls while an earlier request is
        answered gets 408 in its turn, after that answer.
        """
        proto, transport, conn = self.serve(get() + post(b"ab", length=10))
        self.reactor.advance(30)
        self.assertEqual(b"", transport.value())
        conn.respond(200, body=b"first")
        self.assertEqual([200, 408], statuses(transport.value()))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(1, len(self.upstreams.attempts))

    def test_disabled(self) -> None:
        """
        C{bodyTimeout=None}: a body may stall for ever.
        """
        self.makeFactory(settings=HTTPSettings(bodyTimeout=None))
        proto, transport, conn = self.serve(post(b"abc", length=10))
        self.reactor.advance(10000)
        self.assertEqual(b"", transport.value())
        proto.dataReceived(b"x" * 7)
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))


class OverallDeadlineTests(ProxyTestCase):
    """
    C{RetryPolicy.timeout} bounds a request across its tries, the try in
    flight included.
    """

    def test_firstTryGetsTheShorter(self) -> None:
        """
        The first try may wait for the response the shorter of the per-try
        timeout and the overall one.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        self.assertEqual([5.0], conn.timeouts)
        conn.respond(200, body=b"ok")

        self.makeFactory(retry=RetryPolicy(perTryTimeout=2.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        self.assertEqual([2.0], conn.timeouts)
        conn.respond(200, body=b"ok")

    def test_knownRequestOnIdleConnection(self) -> None:
        """
        A request sent at once on an idle connection (the remembered-head
        path) gets the same cut timeout.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        conn.respond(200, body=b"ok")
        idle = self.upstreams.keepIdle(self.b)
        proto.dataReceived(get())
        self.assertEqual([5.0], idle.timeouts)
        idle.respond(200, body=b"ok")
        self.assertEqual([200, 200], statuses(transport.value()))

    def test_retryGetsWhatIsLeft(self) -> None:
        """
        A retry after a reset waits only for what is left of the overall
        timeout.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        self.reactor.advance(3.5)
        conn.fail(started=False)
        retry = self.upstreams.last.succeed()
        self.assertEqual([1.5], retry.timeouts)
        retry.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))


    def test_countedFromTheFirstTry(self) -> None:
        """
        The time before the first try (a head sent slowly, a wait behind
        pipelined requests) does not count.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=1.0))
        proto, transport = self.connect()
        proto.dataReceived(b"GET /1 HTTP/1.1\r\n")
        self.reactor.advance(1.5)
        proto.dataReceived(b"Host: example.com\r\n\r\n" + get(b"/2"))
        conn = self.upstreams.last.succeed()
        self.assertEqual([1.0], conn.timeouts)
        self.reactor.advance(0.9)
        conn.respond(200, body=b"one")
        second = self.upstreams.last.succeed()
        self.assertEqual([1.0], second.timeouts)
        second.respond(200, body=b"two")
        self.assertEqual([200, 200], statuses(transport.value()))

    def test_cutRetryNotHeldAgainstBackend(self) -> None:
        """
        A retry left too little time that times out answers 504 and counts
        as a failed exchange, but the backend's passive checks do not see
        it (its consecutive failures stay as they were).
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        self.reactor.advance(4.9)
        conn.fail(started=False)
        retry = self.upstreams.last.succeed()
        self.assertAlmostEqual(0.1, retry.timeouts[0])
        backend = retry.backend
        consecutive = backend.consecutiveFailures
        retry.fail(ResponseTimeout(0.1))
        self.assertEqual([504], statuses(transport.value()))
        self.assertIn(b"request timeout across tries", transport.value())
        self.assertEqual(consecutive, backend.consecutiveFailures)
        self.assertEqual(1, backend.failures)
        self.assertEqual(1, self.factory.counters["deadline"])

    def test_cutFirstTryHeldAgainstBackend(self) -> None:
        """
        A first try, which had the request's whole time, that times out is
        the backend's failure.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport, conn = self.serve(get())
        self.reactor.advance(5)
        conn.fail(ResponseTimeout(5.0))
        self.assertEqual([504], statuses(transport.value()))
        self.assertEqual(1, self.a.consecutiveFailures)

    def test_givenUpConnectIsAFailedExchange(self) -> None:
        """
        A connect given up at the deadline is a failed exchange with its
        backend in C{/stats}, and a request without a response.
        """
        self.makeFactory(retry=RetryPolicy(perTryTimeout=60.0, timeout=5.0))
        proto, transport = self.connect()
        proto.dataReceived(get())
        self.reactor.advance(5)
        self.assertEqual([504], statuses(transport.value()))
        self.assertEqual((0, 1), _serverCounts(self.a))
        self.assertEqual(1, self.a.responses[0])


class InterimResponseTests(ProxyTestCase):
    """
    What txlb passes on of a 1xx response.
    """

    def test_hopByHopDropped(self) -> None:
        """
        An interim response loses its hop-by-hop and framing headers and
        those its C{Connection} names; the rest (Link) passes.
        """
        proto, transport, conn = self.serve(get())
        conn.interim(103, [
            (b"Link", b"</s.css>; rel=preload"),
            (b"Connection", b"X-Secret, keep-alive"),
            (b"X-Secret", b"internal"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Content-Length", b"0"),
            (b"Link", b"</a.js>; rel=preload"),
        ])
        self.assertEqual(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
            b"Link: </a.js>; rel=preload\r\n\r\n",
            transport.value(),
        )
        conn.respond(200, body=b"ok")

    def test_backendHeaderNotSpoofed(self) -> None:
        """
        With C{backend_header} on, the backend's own C{X-Backend-Server}
        (or an underscore spelling of a protected header) is dropped from
        an interim response as from a final one.
        """
        self.makeFactory(policy=ForwardingPolicy(backendHeader=True))
        proto, transport, conn = self.serve(get())
        conn.interim(103, [
            (b"Link", b"</s.css>; rel=preload"),
            (b"X-Backend-Server", b"spoofed"),
            (b"Transfer_Encoding", b"chunked"),
        ])
        conn.respond(200, body=b"ok")
        interim = parseResponses(transport.value())[0]
        self.assertEqual([(b"Link", b"</s.css>; rel=preload")], interim.headers)
