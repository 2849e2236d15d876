"""
Tests for L{txlb.protocols.upstream}: pooled backend connections and the
responses read from them.

Everything runs in memory: connects go through L{FakeNetwork}, whose
attempts the tests complete or fail; connections run over
L{FakeTCPTransport}s, whose ends the tests deliver; every timer runs on a
L{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txlb.protocols import _upstreamparse
from txlb.protocols.headers import Body
from txlb.protocols.upstream import (
    BadResponse,
    ConnectionLostEarly,
    ConnectionLostMidResponse,
    ConnectionState,
    IExchange,
    PoolClosed,
    ResponseTimeout,
    UpstreamError,
    UpstreamPool,
)
from txlb.test.httphelpers import PoolHarness, RecordingExchange, makeBackend

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

OK_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value\r\nhello\r\n6;a;b="q"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n'
)
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"


def send(conn, method=b"GET", finish=True, timeout=None, exchange=None):
    """
    Send a request on C{conn}.

    @return: the L{RecordingExchange} hearing its response.
    """
    exchange = exchange or RecordingExchange()
    conn.sendRequest(
        method + b" / HTTP/1.1\r\nHost: example.com\r\n\r\n", method, exchange, timeout
    )
    if finish:
        conn.finishRequest()
    return exchange


def feedBytewise(conn, data):
    """
    Deliver C{data} to C{conn} one byte at a time.
    """
    for i in range(len(data)):
        conn.dataReceived(data[i : i + 1])


class InterfaceTests(SynchronousTestCase):
    """
    The objects provide the interfaces they claim.
    """

    def test_recordingExchange(self):
        """
        The test exchange provides L{IExchange}, so tests exercise its shape.
        """
        self.assertTrue(verifyObject(IExchange, RecordingExchange()))

    def test_connection(self):
        """
        A connection provides L{IProtocol} and L{IPushProducer}.
        """
        conn, _ = PoolHarness().open()
        self.assertTrue(verifyObject(IProtocol, conn))
        self.assertTrue(verifyObject(IPushProducer, conn))

    def test_errorsShareABase(self):
        """
        Every failure an exchange hears is an L{UpstreamError}.
        """
        for cls in (
            BadResponse,
            ConnectionLostEarly,
            ConnectionLostMidResponse,
            ResponseTimeout,
            PoolClosed,
        ):
            self.assertTrue(issubclass(cls, UpstreamError), cls)

    def test_badOptions(self):
        """
        Non-positive timeouts and negative limits are refused.
        """
        for options in (
            {"connectTimeout": 0},
            {"idleTimeout": -1},
            {"maxIdlePerBackend": -1},
            {"maxResponseHeadSize": 0},
        ):
            self.assertRaises(ValueError, UpstreamPool, None, **options)


class ResponseTests(SynchronousTestCase):
    """
    Responses of every framing are read and reported in order.
    """

    def setUp(self):
        self.harness = PoolHarness()
        self.conn, self.transport = self.harness.open()

    def test_requestWritten(self):
        """
        The request head and body are written as given.
        """
        self.conn.sendRequest(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            b"POST",
            RecordingExchange(),
            None,
        )
        self.conn.writeBody(b"hi")
        self.assertEqual(
            self.transport.value(), b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
        )

    def test_sendRequestReadsAsExpect(self):
        """
        C{sendRequest} readies the reader for the response as
        L{ResponseReader.expect} does (it does the same inline).
        """
        readers = []
        for inline in (True, False):
            harness = PoolHarness()
            conn, _ = harness.open()
            send(conn)
            conn.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_CHUNKED)
            conn = harness.checkout()
            if inline:
                send(conn, b"HEAD")
            else:
                conn._reader.expect(b"HEAD")
            state = dict(vars(conn._reader))
            del state["_sink"]
            # Each has its own llhttp parser, kept after the chunked body.
            state["_parser"] = type(state["_parser"])
            readers.append(state)
        self.assertEqual(readers[0], readers[1])

    def test_versionWholeOrSplit(self):
        """
        The version reported is the status line's, whether the head came in
        one read (read from its first bytes) or over several (from llhttp).
        """
        _upstreamparse._KNOWN_HEADS.clear()
        for version in (b"1.0", b"1.1"):
            response = b"HTTP/%s 200 OK\r\nContent-Length: 0\r\n\r\n" % (version,)
            for reads in ([response], [response[:5], response[5:]]):
                _upstreamparse._KNOWN_HEADS.clear()
                harness = PoolHarness()
                conn, _ = harness.open()
                exchange = send(conn)
                for data in reads:
                    conn.dataReceived(data)
                self.assertEqual(
                    tuple(map(int, version.split(b"."))), exchange.head[0]
                )

    def test_contentLength(self):
        """
        A length body is delivered and the response completes at its end.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(exchange.body, b"hello")
        version, status, reason, headers, framing = exchange.head
        self.assertEqual((version, status, reason), ((1, 1), 200, b"OK"))
        self.assertEqual(headers, [(b"Content-Length", b"5")])
        self.assertEqual((framing.body, framing.contentLength), (Body.LENGTH, 5))

    def test_contentLengthZero(self):
        """
        C{Content-Length: 0} completes with the head, with no body call.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(exchange.names(), ["started", "complete"])

    def test_chunked(self):
        """
        A chunked body is de-chunked (extensions and trailers dropped).
        """
        exchange = send(self.conn)
        self.conn.dataReceived(OK_CHUNKED)
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(exchange.body, b"hello world")
        self.assertEqual(exchange.head[4].body, Body.CHUNKED)
        self.assertEqual(exchange.head[3], [(b"Transfer-Encoding", b"chunked")])

    def test_closeDelimited(self):
        """
        A body without length ends, complete, when the backend closes.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(OK_CLOSE)
        self.conn.dataReceived(b" and more")
        self.assertEqual(exchange.names(), ["started", "body"])
        self.transport.deliverLoss()
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(exchange.body, b"until the end and more")

    def test_closeDelimitedReset(self):
        """
        A close-delimited body ended by a reset may be cut short: it fails.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(OK_CLOSE)
        self.transport.deliverLoss(ConnectionLost())
        self.assertEqual(exchange.names(), ["started", "body", "failed"])
        exchange.failure.trap(ConnectionLostMidResponse)
        self.assertTrue(exchange.started)

    def test_headHasNoBody(self):
        """
        A response to HEAD ends with its head, whatever length it announces.
        """
        for head in (b"Content-Length: 100", b"Transfer-Encoding: chunked"):
            harness = PoolHarness()
            conn, _ = harness.open()
            exchange = send(conn, b"HEAD")
            conn.dataReceived(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n")
            self.assertEqual(exchange.names(), ["started", "complete"], head)
            self.assertEqual(harness.pool.idleCount(), 1, head)

    def test_headContentLengthPassedOn(self):
        """
        The length a HEAD response announces is in its framing, as is.
        """
        exchange = send(self.conn, b"HEAD")
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.assertEqual(exchange.head[4].contentLength, 100)
        self.assertEqual(exchange.head[4].body, Body.NONE)

    def test_noContentAndNotModified(self):
        """
        204 and 304 (with a length) end with their heads and are reused.
        """
        for response in (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ):
            harness = PoolHarness()
            conn, _ = harness.open()
            exchange = send(conn)
            conn.dataReceived(response)
            self.assertEqual(exchange.names(), ["started", "complete"], response)
            self.assertEqual(harness.pool.idleCount(), 1, response)

    def test_continueThenFinal(self):
        """
        100 Continue is reported as informational, then the final response.
        """
        exchange = send(self.conn, finish=False)
        self.conn.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(exchange.events, [("informational", 100, b"Continue", [])])
        self.conn.writeBody(b"body")
        self.conn.finishRequest()
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual(
            exchange.names(), ["informational", "started", "body", "complete"]
        )
        self.assertEqual(self.harness.pool.idleCount(), 1)

    def test_severalInterimInOneRead(self):
        """
        Interim responses and the final one in one read are all reported.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            + OK_CHUNKED
        )
        self.assertEqual(
            exchange.names(),
            ["informational", "informational", "started", "body", "complete"],
        )
        self.assertEqual(
            exchange.events[1],
            (
                "informational",
                103,
                b"Early Hints",
                [(b"Link", b"</a.css>; rel=preload")],
            ),
        )

    def test_tooManyInterim(self):
        """
        An endless run of interim responses is a bad response.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 17)
        self.assertEqual(exchange.names()[-1], "failed")
        exchange.failure.trap(BadResponse)

    def test_http10KeepAlive(self):
        """
        HTTP/1.0 with keep-alive and a length is read and reused.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(exchange.head[0], (1, 0))
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(self.harness.pool.idleCount(), 1)

    def test_noReasonPhrase(self):
        """
        A status line without a reason phrase gives an empty reason.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(exchange.head[2], b"")
        self.assertEqual(exchange.names(), ["started", "complete"])

    def test_requestsCounted(self):
        """
        Each request sent on a connection is counted on it.
        """
        for _ in range(3):
            conn = self.harness.checkout() if self.conn.requests else self.conn
            send(conn)
            conn.dataReceived(OK_LENGTH)
        self.assertEqual(self.conn.requests, 3)


class SplitTests(SynchronousTestCase):
    """
    However a response is cut into reads, the same events come out.
    """

    responses = [
        (b"GET", OK_LENGTH),
        (b"GET", OK_CHUNKED),
        (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" + OK_LENGTH),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"),
        (b"GET", OK_CLOSE),
    ]

    def outcome(self, method, reads):
        """
        Feed C{reads} as a response to C{method}, then close if still read.

        @return: event names, body, head status, and idle count.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        exchange = send(conn, method)
        for data in reads:
            conn.dataReceived(data)
        if conn.state is ConnectionState.reading:
            transport.deliverLoss()
        return (
            exchange.names(),
            exchange.body,
            exchange.head[1],
            harness.pool.idleCount(),
        )

    def test_everyByteBoundary(self):
        """
        A response cut in two anywhere gives the events of one read.
        """
        for method, response in self.responses:
            whole = self.outcome(method, [response])
            self.assertEqual(whole[0][-1], "complete", response)
            for cut in range(1, len(response)):
                self.assertEqual(
                    self.outcome(method, [response[:cut], response[cut:]]),
                    whole,
                    (response, cut),
                )

    def test_oneByteAtATime(self):
        """
        A response fed one byte at a time gives the events of one read.
        """
        for method, response in self.responses:
            whole = self.outcome(method, [response])
            bytewise = [response[i : i + 1] for i in range(len(response))]
            self.assertEqual(self.outcome(method, bytewise), whole, response)

    def test_extraBytesDetectedAtEveryBoundary(self):
        """
        A CRLF after a chunked response is seen wherever the reads split.
        """
        response = OK_CHUNKED + b"\r\n"
        for cut in range(1, len(response)):
            harness = PoolHarness()
            conn, transport = harness.open()
            exchange = send(conn)
            conn.dataReceived(response[:cut])
            conn.dataReceived(response[cut:])
            self.assertEqual(exchange.names()[-1], "complete", cut)
            self.assertEqual(harness.pool.idleCount(), 0, cut)
            self.assertTrue(transport.disconnecting, cut)


class WholeResponseTests(SynchronousTestCase):
    """
    A final response read whole in one read, with nothing after it, is
    reported in one L{IExchange.responseWhole} call, after the connection
    is pooled; any other comes in parts.
    """

    def outcome(self, method, reads, finish=True):
        """
        @return: whether the response came whole, its events, and the idle
            count when the exchange heard its end.
        """
        harness = PoolHarness()
        conn, _ = harness.open()
        idle = []
        exchange = RecordingExchange(
            onEvent=lambda name: name == "complete"
            and idle.append(harness.pool.idleCount())
        )
        send(conn, method, finish=finish, exchange=exchange)
        for data in reads:
            conn.dataReceived(data)
        return exchange.whole, exchange.names(), idle

    def test_whole(self):
        """
        Length bodies read with their heads, and responses without a body,
        come whole; the connection is pooled before the exchange hears.
        """
        cases = [
            (b"GET", OK_LENGTH, ["started", "body", "complete"]),
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
             ["started", "complete"]),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", ["started", "complete"]),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
             ["started", "complete"]),
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
             ["started", "complete"]),
        ]
        for method, response, events in cases:
            # Once parsed, once remembered.
            for _ in range(2):
                self.assertEqual(
                    self.outcome(method, [response]), (True, events, [1]), response
                )

    def test_inParts(self):
        """
        A body cut over reads, bytes after the response, chunked and
        close-delimited bodies come in parts.
        """
        cases = [
            [OK_LENGTH[:-2], OK_LENGTH[-2:]],
            [OK_LENGTH + b"\r\n"],
            [OK_CHUNKED],
            [OK_CLOSE],
        ]
        for reads in cases:
            for _ in range(2):
                self.assertFalse(self.outcome(b"GET", reads)[0], reads)

    def test_requestNotFinished(self):
        """
        A whole response to a request still being sent keeps the connection
        out of the pool until the request is finished.
        """
        harness = PoolHarness()
        conn, _ = harness.open()
        exchange = send(conn, finish=False)
        conn.dataReceived(OK_LENGTH)
        self.assertTrue(exchange.whole)
        self.assertEqual(0, harness.pool.idleCount())
        conn.finishRequest()
        self.assertEqual(1, harness.pool.idleCount())

    def test_notKeptAlive(self):
        """
        A whole response that closes the connection is not pooled.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        exchange = send(conn)
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(exchange.whole)
        self.assertEqual(0, harness.pool.idleCount())
        self.assertTrue(transport.disconnecting)

    def test_wholeRequest(self):
        """
        A request sent whole needs no C{finishRequest}: its response pools
        the connection.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        exchange = RecordingExchange()
        conn.sendRequest(GET, b"GET", exchange, 5, whole=True)
        self.assertEqual(GET, transport.value())
        conn.dataReceived(OK_LENGTH)
        self.assertEqual(["started", "body", "complete"], exchange.names())
        self.assertEqual(1, harness.pool.idleCount())
        conn.finishRequest()
        self.assertEqual(1, harness.pool.idleCount())


class KnownHeadTests(SynchronousTestCase):
    """
    A final head that arrived whole and passed every check is remembered by
    its bytes; the same bytes again give the same events without parsing.
    """

    def setUp(self):
        _upstreamparse._KNOWN_HEADS.clear()
        _upstreamparse._KNOWN_HEAD_HEADS.clear()
        _upstreamparse._KNOWN_RESPONSES.clear()
        _upstreamparse._KNOWN_HEAD_RESPONSES.clear()
        _upstreamparse._SEEN_HEADS.clear()
        self.harness = PoolHarness()
        self.conn, self.transport = self.harness.open()

    def noted(self):
        """
        Read L{OK_LENGTH} once, so that its head is remembered the next
        time it is parsed.

        @return: the exchange.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual({}, _upstreamparse._KNOWN_HEADS)
        self.conn = self.harness.checkout()
        return exchange

    def again(self, method=b"GET"):
        """
        @return: the checked-out connection, after the last exchange left it
            idle, and the exchange of a new request on it.
        """
        conn = self.harness.checkout()
        self.assertIs(conn, self.conn)
        return send(conn, method)

    def test_rememberedOnSecondParse(self):
        """
        A head parsed for the first time is not remembered, only noted (by
        its hash); parsed a second time, it is remembered.
        """
        head = OK_LENGTH[:-5]
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual({}, _upstreamparse._KNOWN_HEADS)
        self.assertEqual({hash(head)}, _upstreamparse._SEEN_HEADS)
        self.again()
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual([head], list(_upstreamparse._KNOWN_HEADS))

    def test_seenBounded(self):
        """
        The heads noted as parsed once are bounded: once full, the set
        starts over.
        """
        limit = _upstreamparse._MAX_SEEN_HEADS
        for i in range(limit + 1):
            send(self.conn)
            self.conn.dataReceived(
                b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i
            )
            self.conn = self.harness.checkout()
        self.assertEqual(1, len(_upstreamparse._SEEN_HEADS))
        self.assertEqual({}, _upstreamparse._KNOWN_HEADS)

    def test_sameEventsAgain(self):
        """
        The same response again gives the same events; once it is
        remembered, the headers are the tuple remembered.
        """
        first = send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        second = self.again()
        self.conn.dataReceived(OK_LENGTH)
        self.assertIn(OK_LENGTH[:-5], _upstreamparse._KNOWN_HEADS)
        remembered = _upstreamparse._KNOWN_HEADS[OK_LENGTH[:-5]]
        third = self.again()
        self.conn.dataReceived(OK_LENGTH)
        for exchange in (second, third):
            self.assertEqual(first.events, exchange.events)
            self.assertEqual(first.head, exchange.head)
            self.assertEqual(b"hello", exchange.body)
        self.assertIs(remembered[4], third.head[4])
        self.assertEqual(1, self.harness.pool.idleCount())

    def test_notRemembered(self):
        """
        Heads cut over reads, over 4 KiB, chunked, close-delimited,
        interim and 101 heads are not remembered.
        """
        cases = [
            (b"GET", [OK_LENGTH[:10], OK_LENGTH[10:]]),
            (b"GET", [b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 0\r\n\r\n"
                      % (b"b" * 4096,)]),
            (b"GET", [OK_CHUNKED]),
            (b"GET", [OK_CLOSE]),
            (b"GET", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]),
            (b"GET", [
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            ]),
        ]
        for method, reads in cases:
            # Twice: a head is remembered the second time it is parsed.
            for _ in range(2):
                harness = PoolHarness()
                conn, transport = harness.open()
                send(conn, method)
                for data in reads:
                    conn.dataReceived(data)
        self.assertEqual({}, _upstreamparse._KNOWN_HEADS)

    def test_finalAfterInterimInOneRead(self):
        """
        A final head read whole after an interim one in the same read is
        remembered, and gives the same events again.
        """
        response = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_LENGTH
        first = send(self.conn)
        self.conn.dataReceived(response)
        second = self.again()
        self.conn.dataReceived(response)
        self.assertEqual([OK_LENGTH[:-5]], list(_upstreamparse._KNOWN_HEADS))
        third = self.again()
        self.conn.dataReceived(response)
        self.assertEqual(first.events, second.events)
        self.assertEqual(first.events, third.events)

    def test_headMethodApart(self):
        """
        A head remembered from a response to GET does not frame a response
        to HEAD: the same bytes end with the head there.
        """
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        send(self.conn)
        self.conn.dataReceived(head + b"hello")
        # Parsed (the second time: remembered), then a remembered head,
        # then a remembered whole response.
        for _ in range(3):
            exchange = self.again(b"HEAD")
            self.conn.dataReceived(head)
            self.assertEqual(["started", "complete"], exchange.names())
            self.assertEqual(Body.NONE, exchange.head[4].body)
        self.assertIn(head, _upstreamparse._KNOWN_HEAD_HEADS)
        self.assertEqual([head], list(_upstreamparse._KNOWN_HEAD_RESPONSES))
        exchange = self.again()
        self.conn.dataReceived(head + b"hello")
        self.assertEqual(["started", "body", "complete"], exchange.names())

    def test_extraBytesStillSeen(self):
        """
        Bytes after the body of a remembered head close the connection.
        """
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        exchange = self.again()
        self.conn.dataReceived(OK_LENGTH + b"\r\n")
        self.assertEqual(["started", "body", "complete"], exchange.names())
        self.assertEqual(0, self.harness.pool.idleCount())
        self.assertTrue(self.transport.disconnecting)

    def test_headLimitStillApplies(self):
        """
        A remembered head over another pool's C{maxResponseHeadSize} is
        refused there.
        """
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        harness = PoolHarness(maxResponseHeadSize=20)
        conn, _ = harness.open()
        exchange = send(conn)
        conn.dataReceived(OK_LENGTH)
        exchange.failure.trap(BadResponse)

    def test_bounded(self):
        """
        The heads remembered are bounded: once full, the table starts over.
        """
        limit = _upstreamparse._MAX_KNOWN_HEADS
        for i in range(limit + 1):
            # Twice, to be remembered.
            for _ in range(2):
                harness = PoolHarness()
                conn, _ = harness.open()
                send(conn)
                conn.dataReceived(
                    b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i
                )
        self.assertEqual(1, len(_upstreamparse._KNOWN_HEADS))

    def test_wholeResponseRemembered(self):
        """
        A whole response read after its head was remembered is remembered
        by all its bytes; the same read again gives the same events, the
        same body, and the same head tuple, and the connection is pooled.
        """
        self.noted()
        first = send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual({}, _upstreamparse._KNOWN_RESPONSES)
        events = [first]
        for _ in range(2):
            events.append(self.again())
            self.conn.dataReceived(OK_LENGTH)
            self.assertEqual(1, self.harness.pool.idleCount())
        self.assertEqual([OK_LENGTH], list(_upstreamparse._KNOWN_RESPONSES))
        self.assertEqual({}, _upstreamparse._KNOWN_HEAD_RESPONSES)
        for exchange in events[1:]:
            self.assertEqual(events[0].events, exchange.events)
            self.assertEqual(events[0].head, exchange.head)
            self.assertEqual(b"hello", exchange.body)
            self.assertTrue(exchange.whole)
        # The head tuple is the remembered head's: what is made of it
        # downstream can be remembered by it.
        self.assertIs(
            _upstreamparse._KNOWN_HEADS[OK_LENGTH[:-5]][3],
            _upstreamparse._KNOWN_RESPONSES[OK_LENGTH][4],
        )

    def test_wholeResponseOtherBody(self):
        """
        A remembered head with another body of the same length is a whole
        response of its own: its own body is reported.
        """
        self.noted()
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.again()
        self.conn.dataReceived(OK_LENGTH)
        exchange = self.again()
        self.conn.dataReceived(OK_LENGTH[:-5] + b"world")
        self.assertEqual(b"world", exchange.body)
        self.assertEqual(2, len(_upstreamparse._KNOWN_RESPONSES))

    def test_wholeResponseHeadMethodApart(self):
        """
        A whole response remembered for GET is not one for HEAD: there its
        bytes are a head followed by bytes too many.
        """
        self.noted()
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.again()
        self.conn.dataReceived(OK_LENGTH)
        self.assertIn(OK_LENGTH, _upstreamparse._KNOWN_RESPONSES)
        exchange = self.again(b"HEAD")
        self.conn.dataReceived(OK_LENGTH)
        self.assertEqual(["started", "complete"], exchange.names())
        self.assertEqual(0, self.harness.pool.idleCount())
        self.assertTrue(self.transport.disconnecting)

    def test_wholeResponseHeadLimitStillApplies(self):
        """
        A remembered whole response whose head is over another pool's
        C{maxResponseHeadSize} is refused there.
        """
        self.noted()
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.again()
        self.conn.dataReceived(OK_LENGTH)
        self.assertIn(OK_LENGTH, _upstreamparse._KNOWN_RESPONSES)
        harness = PoolHarness(maxResponseHeadSize=20)
        conn, _ = harness.open()
        exchange = send(conn)
        conn.dataReceived(OK_LENGTH)
        exchange.failure.trap(BadResponse)

    def test_wholeResponsesBounded(self):
        """
        Whole responses over 4 KiB are not remembered, and those remembered
        are bounded: once full, the table starts over.
        """
        big = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"b" * 4096
        for _ in range(3):
            send(self.conn)
            self.conn.dataReceived(big)
            self.conn = self.harness.checkout()
        self.assertEqual({}, _upstreamparse._KNOWN_RESPONSES)
        limit = _upstreamparse._MAX_KNOWN_HEADS
        # The first two parse the head (the second remembers it); each after
        # them is a whole response.
        for i in range(limit + 3):
            send(self.conn)
            self.conn.dataReceived(OK_LENGTH[:-5] + b"%05d" % i)
            self.conn = self.harness.checkout()
        self.assertEqual(1, len(_upstreamparse._KNOWN_RESPONSES))


class ReuseTests(SynchronousTestCase):
    """
    A connection is reused only after a clean, complete exchange.
    """

    def setUp(self):
        self.harness = PoolHarness()
        self.pool = self.harness.pool

    def test_reusedAfterCompleteResponse(self):
        """
        After a complete response, the next checkout gets the same
        connection, marked reused.
        """
        conn, _ = self.harness.open()
        self.assertFalse(conn.reused)
        send(conn)
        conn.dataReceived(OK_LENGTH)
        self.assertEqual(conn.state, ConnectionState.idle)
        again = self.harness.checkout()
        self.assertIs(again, conn)
        self.assertTrue(again.reused)
        self.assertEqual(
            (self.pool.connectionsOpened, self.pool.connectionsReused), (1, 1)
        )
        self.assertEqual(len(self.harness.network.attempts), 1)

    def test_reusedConnectionWorks(self):
        """
        A reused connection reads its second response like its first.
        """
        conn, transport = self.harness.open()
        send(conn)
        conn.dataReceived(OK_CHUNKED)
        transport.clear()
        exchange = send(self.harness.checkout())
        self.assertEqual(transport.value(), GET)
        conn.dataReceived(OK_CHUNKED)
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(exchange.body, b"hello world")

    def test_sequenceOnOneConnection(self):
        """
        One connection reads a run of differently framed responses, each
        right, whatever its predecessor left in the parser.
        """
        conn, _ = self.harness.open()
        runs = [
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b""),
            (b"GET", OK_LENGTH, b"hello"),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", b""),
            (b"GET", OK_CHUNKED, b"hello world"),
            (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b""),
            (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" + OK_CHUNKED, b"hello world"),
            (b"GET", OK_LENGTH, b"hello"),
        ]
        for method, response, body in runs:
            current = (
                conn if conn.state is ConnectionState.ready else self.harness.checkout()
            )
            self.assertIs(current, conn)
            exchange = send(conn, method)
            conn.dataReceived(response)
            self.assertEqual(exchange.names()[-1], "complete", response)
            self.assertEqual(exchange.body, body, response)
            self.assertEqual(conn.state, ConnectionState.idle, response)
        self.assertEqual(self.pool.connectionsReused, len(runs) - 1)

    def test_takeIdle(self):
        """
        C{takeIdle} hands out an idle connection at once, or C{None}.
        """
        self.assertIsNone(self.pool.takeIdle(self.harness.backend))
        conn, _ = self.harness.open()
        send(conn)
        conn.dataReceived(OK_LENGTH)
        taken = self.pool.takeIdle(self.harness.backend)
        self.assertIs(taken, conn)
        self.assertEqual((taken.state, taken.reused), (ConnectionState.ready, True))
        self.assertEqual(self.pool.connectionsReused, 1)
        self.assertIsNone(self.pool.takeIdle(self.harness.backend))

    def test_mostRecentlyUsedFirst(self):
        """
        The idle connection returned last is handed out first.
        """
        first, _ = self.harness.open()
        second, _ = self.harness.open()
        for conn in (first, second):
            send(conn)
            conn.dataReceived(OK_LENGTH)
        self.assertIs(self.harness.checkout(), second)
        self.assertIs(self.harness.checkout(), first)

    def test_perBackend(self):
        """
        An idle connection serves only its own backend.
        """
        conn, _ = self.harness.open()
        send(conn)
        conn.dataReceived(OK_LENGTH)
        other = makeBackend("app2", 3001)
        d = self.pool.connect(other)
        self.assertNoResult(d)
        self.assertIs(self.harness.network.attempts[-1].backend, other)
        self.assertEqual(self.pool.idleCount(self.harness.backend), 1)
        self.assertEqual(self.pool.idleCount(other), 0)

    def test_notReusedUntilRequestFinished(self):
        """
        A response that completes before the request is finished leaves the
        connection checked out until C{finishRequest}.
        """
        conn, transport = self.harness.open()
        exchange = send(conn, b"POST", finish=False)
        conn.dataReceived(OK_LENGTH)
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(conn.state, ConnectionState.finishing)
        self.assertEqual(self.pool.idleCount(), 0)
        conn.writeBody(b"rest")
        conn.finishRequest()
        self.assertEqual(self.pool.idleCount(), 1)
        self.assertTrue(transport.value().endswith(b"rest"))

    def assertNotReused(self, response, method=b"GET", aborted=False):
        """
        After C{response}, the connection is closed, not pooled.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        exchange = send(conn, method)
        conn.dataReceived(response)
        if conn.state is ConnectionState.reading:
            transport.deliverLoss()
            self.assertEqual(conn.state, ConnectionState.closed)
        else:
            self.assertEqual(conn.state, ConnectionState.closing)
            self.assertTrue(transport.disconnecting, response)
            self.assertEqual(transport.disconnected, aborted, response)
        self.assertEqual(harness.pool.idleCount(), 0, response)
        d = harness.pool.connect(harness.backend)
        self.assertNoResult(d)
        self.assertEqual(len(harness.network.attempts), 2)
        return exchange

    def test_connectionClose(self):
        """
        No reuse after C{Connection: close}.
        """
        exchange = self.assertNotReused(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
        )
        self.assertEqual(exchange.names(), ["started", "body", "complete"])

    def test_http10WithoutKeepAlive(self):
        """
        No reuse after an HTTP/1.0 response without keep-alive.
        """
        self.assertNotReused(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def test_closeDelimited(self):
        """
        No reuse after a close-delimited body (its end is the close).
        """
        self.assertNotReused(OK_CLOSE)

    def test_malformed(self):
        """
        No reuse after a malformed response; the connection is aborted.
        """
        exchange = self.assertNotReused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            aborted=True,
        )
        exchange.failure.trap(BadResponse)

    def test_extraBytes(self):
        """
        Bytes after a complete response abort the connection, but the
        response itself completes.
        """
        for response in (
            OK_LENGTH + b"x",
            OK_LENGTH + OK_LENGTH,
            OK_CHUNKED + b"\r\n",
            OK_CHUNKED + b"\n",
            OK_CHUNKED + b"HTTP/1.1 200 OK\r\n\r\n",
            OK_CHUNKED + b"\x00",
            b"HTTP/1.1 204 No Content\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        ):
            method = b"HEAD" if response.endswith(b"3\r\n\r\n") else b"GET"
            if method == b"HEAD":
                response += b"abc"
            exchange = self.assertNotReused(response, method, aborted=True)
            self.assertEqual(exchange.names()[-1], "complete", response)

    def test_extraBytesOnConnectionClose(self):
        """
        Bytes after a chunked response with C{Connection: close} are extra.
        """
        response = (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
        )
        exchange = self.assertNotReused(response, aborted=True)
        self.assertEqual(exchange.names(), ["started", "complete"])

    def test_extraBytesLater(self):
        """
        Bytes after a response complete but before the request is finished
        close the connection; C{finishRequest} then pools nothing.
        """
        conn, transport = self.harness.open()
        send(conn, finish=False)
        conn.dataReceived(OK_LENGTH)
        conn.dataReceived(b"junk")
        self.assertTrue(transport.disconnected)
        conn.writeBody(b"ignored")
        conn.finishRequest()
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertNotIn(b"ignored", transport.value())

    def test_capZero(self):
        """
        With C{maxIdlePerBackend=0}, no connection is ever kept.
        """
        harness = PoolHarness(maxIdlePerBackend=0)
        conn, transport = harness.open()
        send(conn)
        conn.dataReceived(OK_LENGTH)
        self.assertEqual(harness.pool.idleCount(), 0)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)


class TruncationTests(SynchronousTestCase):
    """
    A response cut short always fails; it never completes.
    """

    def lose(self, response, exception=None, finish=True):
        """
        Feed C{response}, then end the connection.

        @return: the exchange.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        exchange = send(conn, finish=finish)
        if response:
            conn.dataReceived(response)
        transport.deliverLoss(exception)
        self.assertEqual(harness.pool.idleCount(), 0)
        self.assertNotIn("complete", exchange.names())
        self.assertEqual(exchange.names()[-1], "failed")
        return exchange

    def test_contentLengthShort(self):
        """
        A length body ending early fails mid-response.
        """
        exchange = self.lose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        exchange.failure.trap(ConnectionLostMidResponse)
        self.assertTrue(exchange.started)
        self.assertEqual(exchange.body, b"hello")

    def test_chunkedWithoutLastChunk(self):
        """
        A chunked body without its last chunk fails mid-response.
        """
        for cut in (
            b"5\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\n",
            b"5\r\nhel",
            b"5\r\nhello\r\n0\r\n\r",
        ):
            exchange = self.lose(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + cut
            )
            exchange.failure.trap(ConnectionLostMidResponse)

    def test_partialHead(self):
        """
        A head cut short fails mid-response, started.
        """
        exchange = self.lose(b"HTTP/1.1 200 OK\r\nContent-Len")
        exchange.failure.trap(ConnectionLostMidResponse)
        self.assertEqual(exchange.names(), ["failed"])
        self.assertTrue(exchange.started)

    def test_nothingReceived(self):
        """
        A connection lost before any response byte fails early, not started.
        """
        exchange = self.lose(b"", ConnectionLost())
        exchange.failure.trap(ConnectionLostEarly)
        self.assertFalse(exchange.started)
        self.assertIsInstance(exchange.failure.value.reason.value, ConnectionLost)

    def test_lostWhileSendingBody(self):
        """
        A connection lost while the body is still being written fails early.
        """
        exchange = self.lose(b"", ConnectionLost(), finish=False)
        exchange.failure.trap(ConnectionLostEarly)

    def test_afterInterim(self):
        """
        A connection lost after a 100 Continue fails, started.
        """
        exchange = self.lose(b"HTTP/1.1 100 Continue\r\n\r\n")
        exchange.failure.trap(ConnectionLostMidResponse)
        self.assertTrue(exchange.started)

    def test_lostWhileCheckedOut(self):
        """
        A connection lost before its request is sent fails that request
        early, when it is sent.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        transport.deliverLoss(ConnectionLost())
        exchange = send(conn)
        self.assertEqual(exchange.names(), ["failed"])
        exchange.failure.trap(ConnectionLostEarly)
        self.assertFalse(exchange.started)
        self.assertEqual(transport.value(), b"")


class MalformedResponseTests(SynchronousTestCase):
    """
    Malformed responses fail with L{BadResponse} and abort the connection.
    """

    cases = [
        (
            "CL and TE",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "two CLs",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        ("CL list", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ("signed CL", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
        (
            "bad chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
        (
            "chunk size overflow",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffffffff\r\n",
        ),
        (
            "chunk without CRLF",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
        ),
        (
            "space after chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n",
        ),
        (
            "gzip coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE on 1.0",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("bad status line", b"HTTP/1.1 2000 OK\r\n\r\n"),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.6\r\n"),
        ("HTTP/2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("bare LF head end", b"HTTP/1.1 200 OK\n\n"),
        ("bare LF in headers", b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n"),
        ("bare CR", b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n"),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n"),
        ("space before colon", b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n"),
        ("control char", b"HTTP/1.1 200 OK\r\nA: \x01\r\n\r\n"),
        ("101 without Upgrade", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        ("204 with body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ("leading blank line", b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
        ("bad interim", b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"),
    ]

    def test_badResponses(self):
        """
        Each malformed response fails the exchange with L{BadResponse},
        started, and aborts a connection that is never pooled.
        """
        for name, response in self.cases:
            for reads in (
                [response],
                [response[i : i + 1] for i in range(len(response))],
            ):
                harness = PoolHarness()
                conn, transport = harness.open()
                exchange = send(conn)
                for data in reads:
                    conn.dataReceived(data)
                self.assertEqual(exchange.names()[-1:], ["failed"], name)
                self.assertEqual(exchange.names().count("failed"), 1, name)
                exchange.failure.trap(BadResponse)
                self.assertTrue(exchange.started, name)
                self.assertTrue(transport.disconnected, name)
                self.assertEqual(conn.state, ConnectionState.closing, name)
                transport.deliverLoss()
                self.assertEqual(harness.pool.idleCount(), 0, name)
                self.assertEqual(exchange.names().count("failed"), 1, name)

    def test_headTooLarge(self):
        """
        A head over C{maxResponseHeadSize} fails, even before it ends.
        """
        harness = PoolHarness(maxResponseHeadSize=100)
        conn, transport = harness.open()
        exchange = send(conn)
        conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10):
            conn.dataReceived(b"X-Filler: 0123456789\r\n")
        exchange.failure.trap(BadResponse)
        self.assertIn("too large", exchange.failure.value.reason)
        self.assertTrue(transport.disconnected)

    def test_headAtTheLimit(self):
        """
        A head of exactly C{maxResponseHeadSize} bytes is accepted.
        """
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        harness = PoolHarness(maxResponseHeadSize=len(head))
        conn, _ = harness.open()
        exchange = send(conn)
        conn.dataReceived(head)
        self.assertEqual(exchange.names(), ["started", "complete"])

    def test_oneLogLine(self):
        """
        A bad response is logged as one warning, without a traceback.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        conn, _ = PoolHarness().open()
        send(conn)
        conn.dataReceived(b"HTTP/1.1 2000 OK\r\n\r\n")
        self.assertEqual(len(events), 1)
        self.assertNotIn("log_failure", events[0])
        self.assertEqual(events[0]["backend"], "app1")


class ResponseTimeoutTests(SynchronousTestCase):
    """
    A response head that does not arrive in time fails the exchange.
    """

    def setUp(self):
        self.harness = PoolHarness()
        self.clock = self.harness.clock
        self.conn, self.transport = self.harness.open()

    def test_noResponse(self):
        """
        Nothing within the timeout: L{ResponseTimeout}, not started, aborted.
        """
        exchange = send(self.conn, timeout=10)
        self.clock.advance(9.9)
        self.assertEqual(exchange.events, [])
        self.clock.advance(0.1)
        self.assertEqual(exchange.names(), ["failed"])
        exchange.failure.trap(ResponseTimeout)
        self.assertFalse(exchange.started)
        self.assertTrue(self.transport.disconnected)
        self.transport.deliverLoss()
        self.assertEqual(exchange.names(), ["failed"])
        self.assertEqual(self.harness.pool.idleCount(), 0)

    def test_partialHead(self):
        """
        Part of a head within the timeout still times out, started.
        """
        exchange = send(self.conn, timeout=10)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.clock.advance(10)
        exchange.failure.trap(ResponseTimeout)
        self.assertTrue(exchange.started)

    def test_headInTime(self):
        """
        A head in time stops the timer, even if the body takes longer.
        """
        exchange = send(self.conn, timeout=10)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
        self.clock.advance(100)
        self.conn.dataReceived(b"llo")
        self.assertEqual(exchange.names(), ["started", "body", "complete"])
        self.assertEqual(
            [c.func.__name__ for c in self.clock.getDelayedCalls()], ["_sweep"]
        )

    def test_countsFromLastWrite(self):
        """
        The timeout counts from the last request byte written.
        """
        exchange = send(self.conn, finish=False, timeout=10)
        self.clock.advance(8)
        self.conn.writeBody(b"part")
        self.clock.advance(8)
        self.conn.finishRequest()
        self.clock.advance(9.9)
        self.assertEqual(exchange.events, [])
        self.clock.advance(0.1)
        exchange.failure.trap(ResponseTimeout)

    def test_interimDoesNotStopIt(self):
        """
        A 100 Continue alone does not satisfy the timeout.
        """
        exchange = send(self.conn, timeout=10)
        self.conn.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.clock.advance(10)
        self.assertEqual(exchange.names(), ["informational", "failed"])
        self.assertTrue(exchange.started)

    def test_noTimeout(self):
        """
        With no timeout, nothing is scheduled for the request.
        """
        send(self.conn, timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timerGoneAfterResponse(self):
        """
        No timer is left once the response is complete, pooled idle
        connections are swept and the response timeout has passed (the
        timer is not cancelled when the last connection stops waiting: it
        lapses, once, at its deadline).
        """
        send(self.conn, timeout=10)
        self.conn.dataReceived(OK_LENGTH)
        self.clock.advance(self.harness.pool.idleTimeout)
        self.clock.advance(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lapsedTimerFailsNothing(self):
        """
        The response timer left from a request answered in time fails
        nothing when it fires, and a request sent after it is still timed
        from its own last write.
        """
        send(self.conn, timeout=10)
        self.conn.dataReceived(OK_LENGTH)
        self.clock.advance(3)
        exchange = send(self.harness.checkout(), timeout=10)
        self.clock.advance(7)
        self.assertEqual(exchange.names(), [])
        self.clock.advance(2.9)
        self.assertEqual(exchange.names(), [])
        self.clock.advance(0.1)
        exchange.failure.trap(ResponseTimeout)


class IdlePoolTests(SynchronousTestCase):
    """
    Idle connections are bounded in number and time, and never stale.
    """

    def setUp(self):
        self.harness = PoolHarness(idleTimeout=4.0, maxIdlePerBackend=2)
        self.pool = self.harness.pool
        self.clock = self.harness.clock

    def idle(self, backend=None):
        """
        Open a connection and complete one exchange on it.

        @return: the now idle connection and its transport.
        """
        conn, transport = self.harness.open(backend)
        send(conn)
        conn.dataReceived(OK_LENGTH)
        return conn, transport

    def test_idleTimeout(self):
        """
        An idle connection is closed after C{idleTimeout}, not before.
        """
        conn, transport = self.idle()
        self.clock.advance(3.9)
        self.assertEqual(self.pool.idleCount(), 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertTrue(transport.disconnecting)
        transport.deliverLoss()
        self.assertEqual(conn.state, ConnectionState.closed)

    def test_idleTimeoutEach(self):
        """
        Each idle connection gets its whole idle time, whenever it came back.
        """
        first, t1 = self.harness.open()
        second, t2 = self.harness.open()
        send(first)
        first.dataReceived(OK_LENGTH)
        self.clock.advance(3)
        send(second)
        second.dataReceived(OK_LENGTH)
        self.clock.advance(1)
        self.assertEqual((t1.disconnecting, t2.disconnecting), (True, False))
        self.clock.advance(2.9)
        self.assertFalse(t2.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(t2.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reuseRestartsIdleTime(self):
        """
        A connection used again starts its idle time afresh.
        """
        conn, transport = self.idle()
        self.clock.advance(3)
        send(self.harness.checkout())
        conn.dataReceived(OK_LENGTH)
        self.clock.advance(3)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_checkedOutNotTimedOut(self):
        """
        A checked-out connection is not closed by the idle timeout.
        """
        _, transport = self.idle()
        conn = self.harness.checkout()
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(conn.state, ConnectionState.ready)

    def test_cap(self):
        """
        Past C{maxIdlePerBackend}, the least recently used is closed.
        """
        conns = [self.harness.open() for _ in range(3)]
        for conn, _ in conns:
            send(conn)
            conn.dataReceived(OK_LENGTH)
        self.assertEqual(self.pool.idleCount(), 2)
        self.assertEqual([t.disconnecting for _, t in conns], [True, False, False])
        conns[0][1].deliverLoss()
        self.assertEqual(self.pool.idleCount(), 2)

    def test_capPerBackend(self):
        """
        The cap counts each backend apart.
        """
        other = makeBackend("app2", 3001)
        conns = [
            self.harness.open(backend)[0] for backend in (None, None, other, other)
        ]
        for conn in conns:
            send(conn)
            conn.dataReceived(OK_LENGTH)
        self.assertEqual(self.pool.idleCount(), 4)
        self.assertEqual(self.pool.idleCount(other), 2)

    def test_backendClosesIdle(self):
        """
        An idle connection the backend closes leaves the pool at once.
        """
        _, transport = self.idle()
        transport.deliverLoss()
        self.assertEqual(self.pool.idleCount(), 0)
        d = self.pool.connect(self.harness.backend)
        self.assertNoResult(d)
        self.assertEqual(len(self.harness.network.attempts), 2)

    def test_idleReceivesBytes(self):
        """
        An idle connection that receives a byte is closed and leaves the
        pool.
        """
        conn, transport = self.idle()
        conn.dataReceived(b"H")
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertTrue(transport.disconnected)

    def test_bytesBeforeRequest(self):
        """
        Bytes on a checked-out connection before its request close it; the
        request then fails early.
        """
        conn, transport = self.harness.open()
        conn.dataReceived(OK_LENGTH)
        self.assertTrue(transport.disconnected)
        exchange = send(conn)
        exchange.failure.trap(ConnectionLostEarly)
        self.assertEqual(transport.value(), b"")

    def test_closeIdle(self):
        """
        C{closeIdle(backend)} closes that backend's idle connections only.
        """
        other = makeBackend("app2", 3001)
        _, mine = self.idle()
        _, theirs = self.idle(other)
        self.pool.closeIdle(self.harness.backend)
        self.assertEqual((mine.disconnecting, theirs.disconnecting), (True, False))
        self.assertEqual(self.pool.idleCount(), 1)
        self.pool.closeIdle()
        self.assertTrue(theirs.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_closeIdleSparesCheckedOut(self):
        """
        C{closeIdle} leaves checked-out connections alone.
        """
        conn, transport = self.harness.open()
        self.pool.closeIdle()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(conn.state, ConnectionState.ready)

    def test_pausedConnectionResumedWhenIdle(self):
        """
        A connection paused by its client reads again once idle, so that
        the backend closing it is seen.
        """
        conn, transport = self.harness.open()
        send(conn)
        conn.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        conn.dataReceived(OK_LENGTH)
        self.assertEqual(transport.producerState, "producing")

    def test_strayProducerUnregistered(self):
        """
        A producer left on the backend transport is unregistered when the
        connection goes idle.
        """
        conn, transport = self.harness.open()
        send(conn)
        transport.registerProducer(StringTransport(), True)
        conn.dataReceived(OK_LENGTH)
        self.assertIsNone(transport.producer)


class ConnectTests(SynchronousTestCase):
    """
    New connections: timeouts, cancellation, failures.
    """

    def test_noDelay(self):
        """
        C{TCP_NODELAY} is set on backend connections.
        """
        _, transport = PoolHarness().open()
        self.assertIs(transport.noDelay, True)

    def test_connectSeconds(self):
        """
        The connect's duration is recorded on the connection.
        """
        harness = PoolHarness()
        d = harness.pool.connect(harness.backend)
        harness.clock.advance(0.25)
        harness.network.attempts[0].succeed()
        self.assertEqual(self.successResultOf(d).connectSeconds, 0.25)

    def test_connectTimeout(self):
        """
        A connect that takes longer than C{connectTimeout} is cancelled and
        fails with L{TimeoutError}.
        """
        harness = PoolHarness(connectTimeout=2.0)
        d = harness.pool.connect(harness.backend)
        harness.clock.advance(1.9)
        self.assertNoResult(d)
        harness.clock.advance(0.1)
        self.failureResultOf(d, TimeoutError)
        self.assertTrue(harness.network.attempts[0].cancelled)
        self.assertEqual(harness.pool.connectFailures, 1)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_cancel(self):
        """
        Cancelling a connect cancels the endpoint's and fails with
        L{CancelledError}.
        """
        harness = PoolHarness()
        d = harness.pool.connect(harness.backend)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(harness.network.attempts[0].cancelled)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_cancelConnectsAnyway(self):
        """
        A connection the endpoint makes despite a cancel is aborted and the
        caller still gets L{CancelledError}.
        """
        harness = PoolHarness(onCancel="connect")
        d = harness.pool.connect(harness.backend)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(harness.network.attempts[0].transport.disconnected)
        self.assertEqual(harness.pool.connectionsOpened, 0)

    def test_uncancellableConnectsLater(self):
        """
        A connection made after its connect was given up is aborted.
        """
        harness = PoolHarness(onCancel="uncancellable", connectTimeout=1.0)
        d = harness.pool.connect(harness.backend)
        harness.clock.advance(1)
        self.failureResultOf(d, TimeoutError)
        _, transport = harness.network.attempts[0].makeProtocol()
        self.assertTrue(transport.disconnected)

    def test_refused(self):
        """
        A refused connect fails with the endpoint's error, logged as one
        line.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        harness = PoolHarness()
        d = harness.pool.connect(harness.backend)
        harness.network.attempts[0].fail()
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(len(events), 1)
        self.assertNotIn("log_failure", events[0])

    def test_endpointRaises(self):
        """
        An endpoint factory that raises fails the connect.
        """

        def broken(reactor, backend):
            raise ValueError("bad endpoint string")

        pool = UpstreamPool(PoolHarness().clock, endpointForBackend=broken)
        self.failureResultOf(pool.connect(makeBackend()), ValueError)
        self.flushLoggedErrors(ValueError)

    def test_lostBeforeReported(self):
        """
        A connection lost before the endpoint reports it fails the connect
        early.
        """
        harness = PoolHarness()
        d = harness.pool.connect(harness.backend)
        pending = harness.network.attempts[0]
        protocol, transport = pending.makeProtocol()
        transport.deliverLoss(ConnectionLost())
        pending.report(protocol)
        self.failureResultOf(d, ConnectionLostEarly)

    def test_noAccounting(self):
        """
        The pool does not count requests on the backend.
        """
        harness = PoolHarness()
        conn, _ = harness.open()
        send(conn)
        conn.dataReceived(OK_LENGTH)
        harness.checkout()
        self.assertEqual(harness.backend.activeConnections, 0)
        self.assertEqual(harness.backend.totalConnections, 0)


class ProducerTests(SynchronousTestCase):
    """
    As a producer, a connection pauses and resumes reading from the backend.
    """

    def setUp(self):
        self.harness = PoolHarness()
        self.conn, self.transport = self.harness.open()

    def test_pauseResume(self):
        """
        C{pauseProducing} and C{resumeProducing} reach the transport.
        """
        send(self.conn)
        self.conn.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.conn.pauseProducing()
        self.conn.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_pauseFromBody(self):
        """
        A client that pauses from C{responseBody} pauses the backend.
        """
        exchange = RecordingExchange(
            onEvent=lambda name: name == "body" and self.conn.pauseProducing()
        )
        send(self.conn, exchange=exchange)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        self.assertEqual(self.transport.producerState, "paused")

    def test_stopAborts(self):
        """
        C{stopProducing} (the client is gone) aborts without telling the
        exchange.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhe")
        self.conn.stopProducing()
        self.assertTrue(self.transport.disconnected)
        self.conn.dataReceived(b"llo")
        self.transport.deliverLoss()
        self.assertEqual(exchange.names(), ["started", "body"])
        self.assertEqual(self.harness.pool.idleCount(), 0)

    def test_ignoredWhenIdle(self):
        """
        A stale producer call on an idle connection changes nothing.
        """
        send(self.conn)
        self.conn.dataReceived(OK_LENGTH)
        self.conn.pauseProducing()
        self.conn.stopProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.harness.pool.idleCount(), 1)


class AbortTests(SynchronousTestCase):
    """
    A caller that gives up closes the connection and hears nothing more.
    """

    def setUp(self):
        self.harness = PoolHarness()
        self.conn, self.transport = self.harness.open()

    def test_abortFromBody(self):
        """
        An abort from C{responseBody} stops every later event.
        """
        exchange = RecordingExchange(
            onEvent=lambda name: name == "body" and self.conn.abort()
        )
        send(self.conn, exchange=exchange)
        self.conn.dataReceived(OK_LENGTH + b"trailing")
        self.transport.deliverLoss()
        self.assertEqual(exchange.names(), ["started", "body"])
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.harness.pool.idleCount(), 0)

    def test_abortFromStarted(self):
        """
        An abort from C{responseStarted} stops the body.
        """
        exchange = RecordingExchange(
            onEvent=lambda name: name == "started" and self.conn.abort()
        )
        send(self.conn, exchange=exchange)
        self.conn.dataReceived(OK_CHUNKED)
        self.assertEqual(exchange.names(), ["started"])

    def test_abortFromInformational(self):
        """
        An abort from C{informational} stops the final response.
        """
        exchange = RecordingExchange(
            onEvent=lambda name: name == "informational" and self.conn.abort()
        )
        send(self.conn, exchange=exchange)
        self.conn.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_LENGTH)
        self.assertEqual(exchange.names(), ["informational"])

    def test_abortCancelsTimer(self):
        """
        An abort while waiting cancels the response timeout.
        """
        exchange = send(self.conn, timeout=5)
        self.conn.abort()
        self.harness.clock.advance(5)
        self.assertEqual(exchange.events, [])
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_abortUnused(self):
        """
        A checked-out connection never used can be aborted.
        """
        self.conn.abort()
        self.assertTrue(self.transport.disconnected)

    def test_writesAfterAbortDropped(self):
        """
        Writes and C{finishRequest} after an abort do nothing.
        """
        send(self.conn, finish=False)
        self.conn.abort()
        self.transport.deliverLoss()
        self.conn.writeBody(b"more")
        self.conn.finishRequest()
        self.assertEqual(self.harness.pool.idleCount(), 0)

    def test_exchangeBug(self):
        """
        An exchange that raises is logged, and its connection aborted.
        """

        def explode(name):
            raise ZeroDivisionError()

        send(self.conn, exchange=RecordingExchange(onEvent=explode))
        self.conn.dataReceived(OK_LENGTH)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_sendTwice(self):
        """
        A second request before the first response is a programming error.
        """
        send(self.conn)
        self.assertRaises(RuntimeError, send, self.conn)


class UpgradeTests(SynchronousTestCase):
    """
    After a 101, the connection is a byte tunnel.
    """

    SWITCH = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n"
    )

    def setUp(self):
        self.harness = PoolHarness()
        self.conn, self.transport = self.harness.open()
        self.client = StringTransport()
        self.lost = []

    def attach(self, onLost=True):
        """
        An exchange that attaches the tunnel to C{self.client} as soon as
        it is upgraded.
        """

        def onEvent(event):
            if event == "upgraded":
                self.conn.tunnelTo(self.client, self.lost.append if onLost else None)

        return RecordingExchange(onEvent=onEvent)

    def test_upgradeWithExtra(self):
        """
        A 101 starts the response, then upgrades with the bytes after it.
        """
        exchange = send(self.conn, timeout=5)
        self.conn.dataReceived(self.SWITCH + b"\x81\x05hello")
        self.assertEqual(exchange.names(), ["started", "upgraded"])
        self.assertEqual(exchange.head[1], 101)
        self.assertEqual(exchange.head[4].upgrade, b"websocket")
        self.assertEqual(exchange.upgradedWith, (self.conn, b"\x81\x05hello"))
        self.assertEqual(self.conn.state, ConnectionState.tunnel)
        # The response timer lapses; it fails nothing.
        self.harness.clock.advance(5)
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])
        self.assertEqual(exchange.names(), ["started", "upgraded"])

    def test_withoutConnectionUpgrade(self):
        """
        A 101 with Upgrade but no C{Connection: upgrade} still upgrades.
        """
        exchange = send(self.conn)
        self.conn.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxy"
        )
        self.assertEqual(exchange.names(), ["started", "upgraded"])
        self.assertEqual(exchange.upgradedWith[1], b"xy")

    def test_tunnel(self):
        """
        Bytes both ways pass through the tunnel, and its end is reported.
        """
        send(self.conn, exchange=self.attach())
        feedBytewise(self.conn, self.SWITCH)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.conn.writeBody(b"to backend")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(self.transport.value().endswith(b"to backend"))
        self.transport.deliverLoss()
        self.assertEqual(len(self.lost), 1)
        self.lost[0].trap(ConnectionDone)
        self.assertFalse(self.client.disconnecting)
        self.assertEqual(self.harness.pool.idleCount(), 0)

    def test_callables(self):
        """
        C{tunnelTo} also takes a callable for the bytes and one for the end.
        """
        received = []
        send(self.conn)
        self.conn.dataReceived(self.SWITCH)
        self.conn.tunnelTo(received.append, self.lost.append)
        self.conn.dataReceived(b"frame")
        self.transport.deliverLoss()
        self.assertEqual(received, [b"frame"])
        self.lost[0].trap(ConnectionDone)

    def test_callableNeedsOnLost(self):
        """
        A callable receiver without C{onLost} is refused.
        """
        send(self.conn)
        self.conn.dataReceived(self.SWITCH)
        self.assertRaises(TypeError, self.conn.tunnelTo, print)

    def test_endClosesClient(self):
        """
        Without C{onLost}, the backend's end closes the client transport,
        unregistering the connection as its producer first.
        """
        send(self.conn, exchange=self.attach(onLost=False))
        self.conn.dataReceived(self.SWITCH)
        self.client.registerProducer(self.conn, True)
        self.transport.deliverLoss()
        self.assertTrue(self.client.disconnecting)
        self.assertIsNone(self.client.producer)

    def test_heldUntilTunnelTo(self):
        """
        Bytes before C{tunnelTo} are held (reading paused), then delivered.
        """
        send(self.conn)
        self.conn.dataReceived(self.SWITCH)
        self.conn.dataReceived(b"early")
        self.assertEqual(self.transport.producerState, "paused")
        self.conn.tunnelTo(self.client)
        self.assertEqual(self.client.value(), b"early")
        self.assertEqual(self.transport.producerState, "producing")

    def test_lostBeforeTunnelTo(self):
        """
        A tunnel that ends before C{tunnelTo} reports its bytes then its end.
        """
        send(self.conn)
        self.conn.dataReceived(self.SWITCH)
        self.conn.dataReceived(b"last words")
        self.transport.deliverLoss(ConnectionLost())
        self.conn.tunnelTo(self.client, self.lost.append)
        self.assertEqual(self.client.value(), b"last words")
        self.lost[0].trap(ConnectionLost)

    def test_neverPooled(self):
        """
        A tunnel never returns to the pool, even when its request finishes.
        """
        send(self.conn, exchange=self.attach())
        self.conn.dataReceived(self.SWITCH)
        self.conn.finishRequest()
        self.assertEqual(self.harness.pool.idleCount(), 0)
        d = self.harness.pool.connect(self.harness.backend)
        self.assertNoResult(d)

    def test_abortTunnel(self):
        """
        Aborting a tunnel closes it and reports nothing more.
        """
        send(self.conn, exchange=self.attach())
        self.conn.dataReceived(self.SWITCH)
        self.conn.abort()
        self.transport.deliverLoss()
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.lost, [])
        self.assertFalse(self.client.disconnecting)

    def test_tunnelToNotATunnel(self):
        """
        C{tunnelTo} on a connection that is not a tunnel is an error.
        """
        self.assertRaises(RuntimeError, self.conn.tunnelTo, self.client)


class CloseAllTests(SynchronousTestCase):
    """
    Shutting the pool down waits for every connection.
    """

    def test_closeAll(self):
        """
        Idle connections close at once; checked-out ones after their
        exchange; the L{Deferred} fires when all are gone.
        """
        harness = PoolHarness()
        idle, idleTransport = harness.open()
        busy, busyTransport = harness.open()
        send(idle)
        idle.dataReceived(OK_LENGTH)
        exchange = send(busy)
        d = harness.pool.closeAll()
        self.assertTrue(idleTransport.disconnecting)
        idleTransport.deliverLoss()
        self.assertNoResult(d)
        busy.dataReceived(OK_LENGTH)
        self.assertEqual(exchange.names()[-1], "complete")
        self.assertTrue(busyTransport.disconnecting)
        self.assertNoResult(d)
        busyTransport.deliverLoss()
        self.assertIsNone(self.successResultOf(d))

    def test_closeAllEmpty(self):
        """
        With no connection, C{closeAll} fires at once and connects fail.
        """
        harness = PoolHarness()
        self.successResultOf(harness.pool.closeAll())
        self.failureResultOf(harness.pool.connect(harness.backend), PoolClosed)

    def test_closeAllWaitsForConnects(self):
        """
        A connect in flight keeps C{closeAll} waiting until it ends.
        """
        harness = PoolHarness()
        connecting = harness.pool.connect(harness.backend)
        d = harness.pool.closeAll()
        self.assertNoResult(d)
        harness.network.attempts[0].fail()
        self.failureResultOf(connecting, ConnectionRefusedError)
        self.successResultOf(d)

    def test_closeAllCancelsSweep(self):
        """
        No idle timer is left after C{closeAll}.
        """
        harness = PoolHarness()
        conn, transport = harness.open()
        send(conn)
        conn.dataReceived(OK_LENGTH)
        harness.pool.closeAll()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
