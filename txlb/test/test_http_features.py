"""
Tests for the L7 front's affinity (sticky cookies, hash keys), upgrades to
a byte tunnel, the access log and the listener's connection limit, in
memory.
"""

from __future__ import annotations

import json
from typing import Any

from txlb.accesslog import AccessLog
from txlb.pool import Backend
from txlb.protocols.http import (
    RetryPolicy,
)
from txlb.test.proxycase import (
    CLIENT_IP,
    ProxyTestCase,
    _mismatches,
    get,
    parseResponses,
    post,
    statuses,
)

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
