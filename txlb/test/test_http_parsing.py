"""
Tests for how the L7 front reads request heads on the full parse path: the
size limit counted over a head's lines (at the end of the head, or of each
read while it spans reads), trailers bounded alike, the head deadline
started only for a head that spans reads, and requests remembered only the
second time they are parsed.
"""

from __future__ import annotations

from txlb.protocols import _httpparts
from txlb.protocols.http import HTTPSettings
from txlb.test.proxycase import ProxyTestCase, get, statuses


def headSize(target: bytes, lines: list[tuple[bytes, bytes]]) -> int:
    """
    @return: what a head with C{target} and header C{lines} counts against
        C{maxHeaderSize}: the target, and each line's name and value and 4
        bytes.
    """
    return len(target) + sum(len(name) + len(value) + 4 for name, value in lines)


class HeadSizeTests(ProxyTestCase):
    """
    A request head is counted against C{maxHeaderSize} as its target and
    header lines, whether it arrives in one read or several.
    """

    def answer(self, transport, attempts: int = 0) -> list[int]:
        """
        Answer the request sent, if it reached a backend.

        @param attempts: how many backend connects were made before it.
        @return: the statuses the client got.
        """
        if len(self.upstreams.attempts) > attempts:
            self.upstreams.last.succeed().respond(200, body=b"ok")
        return statuses(transport.value())

    def test_atTheLimit(self) -> None:
        """
        A head of exactly C{maxHeaderSize} is proxied, one byte more is
        refused with 431, in one read or in one read per line.
        """
        lines = [(b"Host", b"example.com"), (b"X-A", b"a" * 100)]
        limit = headSize(b"/", lines)
        data = get(headers=b"X-A: %s\r\n" % (b"a" * 100,))
        longer = get(headers=b"X-A: %s\r\n" % (b"a" * 101,))
        results = []
        for request in (data, longer):
            for pieces in (1, 3):
                self.makeFactory(settings=HTTPSettings(maxHeaderSize=limit))
                proto, transport = self.connect()
                cut = request.split(b"\r\n")
                reads = (
                    [request] if pieces == 1
                    else [line + b"\r\n" for line in cut[:2]] + [b"\r\n".join(cut[2:])]
                )
                attempts = len(self.upstreams.attempts)
                for read in reads:
                    proto.dataReceived(read)
                results.append(self.answer(transport, attempts))
        self.assertEqual([[200], [200], [431], [431]], results)

    def test_countedBeforeTheHeadEnds(self) -> None:
        """
        A head whose lines arrive one read at a time is refused with 431 as
        soon as the lines reported put it over the limit (llhttp reports a
        line once the next begins), before it ends.
        """
        self.makeFactory(settings=HTTPSettings(maxHeaderSize=256))
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
        # 1 + 19 + 107 + 107 = 234 bytes reported after X-C; X-C's 107 more
        # after X-D.
        for name in (b"X-A", b"X-B", b"X-C", b"X-D"):
            self.assertEqual(b"", transport.value())
            proto.dataReceived(name + b": " + b"v" * 100 + b"\r\n")
        self.assertClosedWith(transport, 431)
        self.assertEqual([], self.upstreams.attempts)

    def test_overTheLimitThenMalformed(self) -> None:
        """
        A head over the limit is refused with 431 even when a malformed
        line follows in the same read.
        """
        self.makeFactory(settings=HTTPSettings(maxHeaderSize=256))
        proto, transport = self.connect()
        proto.dataReceived(
            get(headers=b"X-A: %s\r\nX-B: b\r\nBad Line\r\n" % (b"a" * 300,))
        )
        self.assertClosedWith(transport, 431)

    def test_bytesIn(self) -> None:
        """
        What a request head counts is what the listener counts in.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(b"/abc", headers=b"User-Agent: t\r\n"))
        self.answer(transport)
        self.assertEqual(
            headSize(b"/abc", [(b"Host", b"example.com"), (b"User-Agent", b"t")]),
            self.factory.bytesIn,
        )

    def test_trailersBounded(self) -> None:
        """
        Trailer lines after a chunked body count against the same limit: in
        the read that ends the body, or in reads of their own.
        """
        results = []
        for split in (False, True):
            self.makeFactory(settings=HTTPSettings(maxHeaderSize=256))
            proto, transport = self.connect()
            proto.dataReceived(get(
                b"/up", method=b"POST", headers=b"Transfer-Encoding: chunked\r\n"
            ))
            conn = self.upstreams.last.succeed()
            proto.dataReceived(b"3\r\nabc\r\n0\r\n")
            trailers = [b"X-T%d: %s\r\n" % (i, b"t" * 100) for i in range(3)]
            if split:
                for line in trailers:
                    proto.dataReceived(line)
            else:
                proto.dataReceived(b"".join(trailers) + b"\r\n")
            results.append((statuses(transport.value()), transport.disconnecting))
            self.assertTrue(conn.aborted)
        self.assertEqual([([431], True)] * 2, results)

    def test_fewTrailersCounted(self) -> None:
        """
        Trailer lines within the limit are counted in.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(
            b"/up", method=b"POST", headers=b"Transfer-Encoding: chunked\r\n"
        ))
        conn = self.upstreams.last.succeed()
        proto.dataReceived(b"3\r\nabc\r\n0\r\nX-T: t\r\n\r\n")
        conn.respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))
        self.assertEqual(
            headSize(b"/up", [
                (b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked"),
                (b"X-T", b"t"),
            ]) + 3,
            self.factory.bytesIn,
        )


class RememberedOnSecondSightTests(ProxyTestCase):
    """
    A whole request read is remembered (see L{_httpparts._KnownRequest})
    the second time it is parsed, not the first.
    """

    def send(self, data: bytes) -> None:
        """
        Send C{data} on a new connection and answer it.
        """
        proto, transport = self.connect()
        proto.dataReceived(data)
        self.upstreams.last.succeed().respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))

    def test_secondSight(self) -> None:
        """
        The first time, only the read's hash is noted; the second time the
        request is remembered; the third is not parsed.
        """
        data = get(b"/a")
        self.send(data)
        self.assertEqual({}, self.factory.knownRequests)
        self.assertEqual({hash(data)}, self.factory.seenRequests)
        self.send(data)
        self.assertEqual([data], list(self.factory.knownRequests))
        self.send(data)
        self.assertEqual(3, self.factory.counters["requests"])

    def test_seenBounded(self) -> None:
        """
        The reads noted are bounded: once full, the set starts over.
        """
        proto, transport = self.connect()
        for i in range(_httpparts._MAX_SEEN_REQUESTS + 1):
            proto.dataReceived(get(b"/%d" % (i,)))
            self.upstreams.last.succeed().respond(200, body=b"ok")
        self.assertEqual(1, len(self.factory.seenRequests))
        self.assertEqual({}, self.factory.knownRequests)

    def test_versionFromRequestLine(self) -> None:
        """
        An HTTP/1.0 request read whole is read as HTTP/1.0: its connection
        closes after the response.
        """
        proto, transport = self.connect()
        proto.dataReceived(get(version=b"HTTP/1.0"))
        self.upstreams.last.succeed().respond(200, body=b"ok")
        self.assertEqual([200], statuses(transport.value()))
        self.assertTrue(transport.disconnecting)


class HeadDeadlineTests(ProxyTestCase):
    """
    On a kept-alive connection the head deadline is started only when a
    read ends before the head does, and from the head's first byte.
    """

    def test_wholeHeadNoDeadline(self) -> None:
        """
        A head read whole leaves no head deadline behind: a backend slower
        than C{headerTimeout} is waited for.
        """
        self.makeFactory(settings=HTTPSettings(idleTimeout=30.0, headerTimeout=10.0))
        proto, transport = self.connect()
        for target in (b"/1", b"/2"):
            proto.dataReceived(get(target))
            conn = self.upstreams.last.succeed()
            self.reactor.advance(20)
            conn.respond(200, body=b"ok")
        self.assertEqual([200, 200], statuses(transport.value()))
        self.assertFalse(transport.disconnecting)

    def test_fromFirstByte(self) -> None:
        """
        A head cut over reads on a kept-alive connection has until
        C{headerTimeout} after its first read, however its reads are spread.
        """
        self.makeFactory(settings=HTTPSettings(idleTimeout=30.0, headerTimeout=10.0))
        proto, transport = self.connect()
        proto.dataReceived(get(b"/1"))
        self.upstreams.last.succeed().respond(200, body=b"ok")
        transport.clear()
        proto.dataReceived(b"GET /2 HTTP/1.1\r\n")
        self.reactor.advance(6)
        proto.dataReceived(b"Host: example.com\r\n")
        self.reactor.advance(3.9)
        self.assertEqual(b"", transport.value())
        self.reactor.advance(0.1)
        self.assertClosedWith(transport, 408)
