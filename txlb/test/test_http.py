"""
Tests for L{txlb.protocols.http}, the L7 front, in memory: what it rejects,
what it forwards of requests and of responses.  The fixture
(L{txlb.test.proxycase.ProxyTestCase}) feeds raw bytes to the protocol and
drives fake backend connections by hand; every test ends with the
accounting at rest.

Table tests run all their cases and report every case that failed at once,
each by its label.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from txlb.protocols.headers import ForwardingPolicy
from txlb.protocols.http import (
    HTTPSettings,
    RetryPolicy,
)
from txlb.routing import Router
from txlb.test.proxycase import (
    ProxyTestCase,
    _mismatches,
    get,
    parseResponses,
    post,
    requestIdOf,
    statuses,
)

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
