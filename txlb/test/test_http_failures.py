"""
Tests for the L7 front when things go wrong or slow, in memory:
C{Expect: 100-continue}, backpressure both ways, backend failures and
retries, and the retry budget.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from txlb.limits import RetryBudget
from txlb.pool import AdminState
from txlb.protocols.http import (
    BODY_HIGH_WATER,
    RetryPolicy,
)
from txlb.protocols.upstream import ConnectionLostEarly, ResponseTimeout
from txlb.test.fakeupstream import (
    FakeUpstreamConnection,
)
from txlb.test.proxycase import (
    ProxyTestCase,
    get,
    parseResponses,
    post,
    statuses,
)

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
