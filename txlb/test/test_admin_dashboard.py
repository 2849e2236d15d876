"""
Tests for L{txlb.admin.dashboard}: the page and its event stream, in
memory (a real L{Site} and L{twisted.web.http.HTTPChannel} over a
L{StringTransport}, snapshots timed by a L{Clock}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from txlb.admin import dashboard
from txlb.admin.guard import Guard, Refused
from txlb.config import AdminConfig, parseConfig
from txlb.service import TxlbService

TOKEN = "t0ken-for-the-admin-tests"


def buildTxlb() -> TxlbService:
    """
    A service (not started) with one L7 listener over a health-checked
    pool of two servers.
    """
    document = {
        "load_balancer": {"address": "127.0.0.1", "port": 8080, "layer": "L7"},
        "health_check": {"type": "http", "interval": 1.0, "timeout": 0.5},
        "server": [
            {"address": "127.0.0.1", "port": 3000},
            {"address": "127.0.0.1", "port": 3001, "weight": 2},
        ],
    }
    return TxlbService(parseConfig(document, "lb.toml"), MemoryReactorClock())


def adminConfig(**kw: Any) -> AdminConfig:
    return AdminConfig(endpoint="tcp:9090:interface=127.0.0.1", **kw)


class Client:
    """
    One HTTP/1.1 connection to a L{Site}, over a L{StringTransport}.
    """

    def __init__(self, site: Site, method: bytes, target: bytes,
                 headers: dict[bytes, bytes] | None = None) -> None:
        self.transport = StringTransport()
        self.channel = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        lines = [b"%s %s HTTP/1.1" % (method, target)]
        allHeaders = {b"Host": b"127.0.0.1:9090", **(headers or {})}
        lines += [name + b": " + value for name, value in allHeaders.items()]
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """
        The status, the headers (lowercased names) and the body (de-chunked)
        received so far.
        """
        raw = self.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        statusLine, *headerLines = head.split(b"\r\n")
        headers = {}
        for line in headerLines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") != b"chunked":
            return int(statusLine.split()[1]), headers, rest
        body = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size, 16)
            body += rest[:length]
            rest = rest[length + 2 :]
        return int(statusLine.split()[1]), headers, body

    def events(self) -> list[Any]:
        """
        The JSON of every C{data:} event received so far.
        """
        body = self.response()[2].decode("utf-8")
        return [
            json.loads(line[len("data: ") :])
            for line in body.split("\n")
            if line.startswith("data: ")
        ]

    def disconnect(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class DashboardCase(SynchronousTestCase):
    """
    Shared set-up: an admin tree with the dashboard installed, whose
    snapshots run on C{self.clock}.
    """

    def setUp(self) -> None:
        self.txlb = buildTxlb()
        self.pool = self.txlb.pools["default"]
        self.guard = Guard(adminConfig())
        self.clock = Clock()
        self.root = Resource()
        self.events = dashboard.install(self.root, self.txlb, self.guard, self.clock)
        # Connection timeouts run on their own clock, so that self.clock
        # holds the snapshot timer alone.
        self.site = Site(self.root, reactor=Clock())

    def get(self, target: bytes, **headers: bytes) -> Client:
        return Client(
            self.site, b"GET", target,
            {k.encode("ascii"): v for k, v in headers.items()},
        )

    def closeReads(self) -> None:
        self.guard.config = adminConfig(token=TOKEN, openReads=False)


class IndexTests(DashboardCase):
    """
    C{GET /} serves the page.
    """

    def test_install(self) -> None:
        """
        L{dashboard.install} puts the page at C{/} and the stream at
        C{/events}.
        """
        self.assertIsInstance(self.root.children[b""], dashboard.IndexResource)
        self.assertIs(self.root.children[b"events"], self.events)

    def test_servesPage(self) -> None:
        """
        The page is HTML, not cached, and says that reads are open.
        """
        status, headers, body = self.get(b"/").response()
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"text/html; charset=utf-8")
        self.assertEqual(headers[b"cache-control"], b"no-store")
        self.assertIn(b"<title>txlb dashboard</title>", body)
        self.assertIn(b'data-reads="open"', body)
        self.assertIn(b'new EventSource(url)', body)

    def test_pageIsSelfContained(self) -> None:
        """
        The page refers to no other site and loads no asset: it works
        offline, and its content security policy allows nothing else.
        """
        _, headers, body = self.get(b"/").response()
        self.assertNotIn(b"http://", body)
        self.assertNotIn(b"https://", body)
        self.assertNotIn(b"<link", body)
        self.assertNotIn(b"src=", body)
        self.assertNotIn(b"@import", body)
        policy = headers[b"content-security-policy"]
        self.assertIn(b"default-src 'none'", policy)
        self.assertIn(b"connect-src 'self'", policy)

    def test_rowsCarryTestAttributes(self) -> None:
        """
        Backend rows get C{data-pool}, C{data-server} and C{data-health}.
        """
        body = self.get(b"/").response()[2]
        for needle in (b"tr.dataset.pool", b"tr.dataset.server", b"tr.dataset.health"):
            self.assertIn(needle, body)

    def test_foreignHost(self) -> None:
        """
        A Host that does not name the admin service (DNS rebinding) is
        refused with 421.
        """
        status, _, body = self.get(b"/", Host=b"evil.example").response()
        self.assertEqual(status, 421)
        self.assertNotIn(b"EventSource", body)

    def test_readsNeedToken(self) -> None:
        """
        With closed reads, the page without the token is a 401 asking for
        it, not the dashboard.
        """
        self.closeReads()
        status, headers, body = self.get(b"/").response()
        self.assertEqual(status, 401)
        self.assertIn(b'name=token', body)
        self.assertNotIn(b"EventSource", body)
        status, _, body = self.get(b"/?token=wrong-token-value").response()
        self.assertEqual(status, 401)

    def test_readsWithToken(self) -> None:
        """
        With closed reads, the token opens the page, in the C{Authorization}
        header or the query; the page then sends it with its stream.
        """
        self.closeReads()
        status, _, body = self.get(
            b"/", Authorization=b"Bearer " + TOKEN.encode()
        ).response()
        self.assertEqual(status, 200)
        self.assertIn(b'data-reads="token"', body)
        status, _, body = self.get(b"/?token=" + TOKEN.encode()).response()
        self.assertEqual(status, 200)


class CheckReadTests(SynchronousTestCase):
    """
    L{dashboard.checkRead} accepts the token from the query string, and
    keeps it out of the access log.
    """

    def request(self, uri: bytes, token: bytes | None = None) -> DummyRequest:
        request = DummyRequest([b""])
        request.uri = uri
        request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:9090"])
        if token is not None:
            request.args[b"token"] = [token]
        return request

    def test_queryToken(self) -> None:
        """
        The configured token in C{?token=} passes, and is blanked out of
        the request's URI.
        """
        guard = Guard(adminConfig(token=TOKEN, openReads=False))
        request = self.request(b"/events?a=1&token=" + TOKEN.encode(), TOKEN.encode())
        dashboard.checkRead(guard, request)
        self.assertEqual(request.uri, b"/events?a=1&token=-")

    def test_wrongQueryToken(self) -> None:
        """
        A wrong token is refused with 401, and blanked out too.
        """
        guard = Guard(adminConfig(token=TOKEN, openReads=False))
        request = self.request(b"/events?token=guess", b"guess")
        refused = self.assertRaises(Refused, dashboard.checkRead, guard, request)
        self.assertEqual(refused.status, 401)
        self.assertEqual(request.uri, b"/events?token=-")

    def test_queryTokenDoesNotOverrideHost(self) -> None:
        """
        The right token does not make a foreign Host acceptable.
        """
        guard = Guard(adminConfig(token=TOKEN, openReads=False))
        request = self.request(b"/events?token=" + TOKEN.encode(), TOKEN.encode())
        request.requestHeaders.setRawHeaders(b"host", [b"rebound.example"])
        refused = self.assertRaises(Refused, dashboard.checkRead, guard, request)
        self.assertEqual(refused.status, 421)


class EventsTests(DashboardCase):
    """
    C{GET /events} streams snapshots to every subscriber, on one shared
    timer.
    """

    def test_immediateSnapshot(self) -> None:
        """
        A subscriber gets a snapshot at once, as a server-sent event, with
        every pool, server and listener.
        """
        client = self.get(b"/events")
        status, headers, _ = client.response()
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(headers[b"cache-control"], b"no-store")
        [snapshot] = client.events()
        self.assertEqual(
            sorted(snapshot), ["interval", "listeners", "pools", "time"]
        )
        self.assertEqual(snapshot["interval"], 1.0)
        [pool] = snapshot["pools"]
        self.assertEqual(pool["name"], "default")
        self.assertEqual(pool["algorithm"], "round_robin")
        self.assertTrue(pool["health_check"])
        for key in ("queued", "panics", "panic", "max_queue"):
            self.assertIn(key, pool)
        self.assertEqual(
            [s["name"] for s in pool["servers"]], ["127.0.0.1:3000", "127.0.0.1:3001"]
        )
        server = pool["servers"][1]
        self.assertEqual(server["state"], "active")
        self.assertEqual(server["health"], "pending")
        self.assertEqual((server["weight"], server["effective_weight"]), (2, 2.0))
        self.assertEqual(server["connections"], 0)
        self.assertIsNone(server["requests_per_second"])
        self.assertEqual(server["errors"], 0)
        self.assertEqual(server["health_checks"], [])
        for key in ("p50_ms", "p99_ms", "ejected", "breaker"):
            self.assertIn(key, server)
        [listener] = snapshot["listeners"]
        self.assertEqual((listener["layer"], listener["pool"]), ("L7", "default"))

    def test_snapshotEveryInterval(self) -> None:
        """
        Then one snapshot per interval, stamped with the clock's time.
        """
        client = self.get(b"/events")
        self.clock.advance(0.5)
        self.assertEqual(len(client.events()), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(client.events()), 2)
        self.clock.advance(1.0)
        self.assertEqual([e["time"] for e in client.events()], [0.0, 1.0, 2.0])

    def test_requestRateAndErrors(self) -> None:
        """
        Each server's request rate is the responses counted over the last
        interval; its errors count failures and 5xx responses.
        """
        client = self.get(b"/events")
        backend = self.pool.backends[0]
        for status in (200, 200, 200, 503):
            backend.recordResponse(status, 0.004)
        backend.recordFailure("connection refused")
        backend.totalConnections += 2
        self.clock.pump([1.0, 1.0])
        first, second, third = client.events()
        server = second["pools"][0]["servers"][0]
        self.assertEqual(server["requests_per_second"], 4.0)
        self.assertEqual(server["connections_per_second"], 2.0)
        self.assertEqual(server["errors"], 2)
        self.assertEqual(server["p50_ms"], 5.0)
        self.assertEqual(third["pools"][0]["servers"][0]["requests_per_second"], 0.0)
        self.assertEqual(second["pools"][0]["servers"][1]["requests_per_second"], 0.0)

    def test_healthResults(self) -> None:
        """
        Recent health check results and the health state are in the
        snapshot.
        """
        from txlb.health import applyResult
        from txlb.pool import CheckResult

        client = self.get(b"/events")
        check = self.txlb.config.pool("default").healthCheck
        backend = self.pool.backends[0]
        applyResult(backend, CheckResult(0.5, True, "HTTP 200", 0.002), check)
        applyResult(backend, CheckResult(1.0, True, "HTTP 200", 0.002), check)
        applyResult(
            self.pool.backends[1], CheckResult(1.0, False, "connection refused", 0.001),
            check,
        )
        self.clock.advance(1.0)
        servers = client.events()[-1]["pools"][0]["servers"]
        self.assertEqual([s["health"] for s in servers], ["up", "pending"])
        self.assertEqual(
            [(c["ok"], c["reason"]) for c in servers[1]["health_checks"]],
            [(False, "connection refused")],
        )

    def test_keepAlive(self) -> None:
        """
        A comment goes out every C{keepAlive} seconds.
        """
        events = dashboard.EventsResource(
            self.txlb, self.guard, self.clock, interval=1.0, keepAlive=3.0
        )
        self.root.putChild(b"events", events)
        client = self.get(b"/events")
        self.clock.pump([1.0, 1.0])
        self.assertNotIn(b": keep-alive\n\n", client.response()[2])
        self.clock.advance(1.0)
        self.assertEqual(client.response()[2].count(b": keep-alive\n\n"), 1)
        self.clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(client.response()[2].count(b": keep-alive\n\n"), 2)

    def test_oneTimerForAll(self) -> None:
        """
        Every subscriber gets every snapshot from one timer.
        """
        first = self.get(b"/events")
        second = self.get(b"/events")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(first.events()), 2)
        self.assertEqual(len(second.events()), 2)
        self.assertEqual(first.events()[1], second.events()[1])

    def test_disconnectUnsubscribes(self) -> None:
        """
        A client that leaves is forgotten and written nothing more; the
        timer stops with the last one.
        """
        first = self.get(b"/events")
        second = self.get(b"/events")
        first.disconnect()
        self.assertEqual(len(self.events.subscribers), 1)
        written = first.transport.value()
        self.clock.advance(1.0)
        self.assertEqual(first.transport.value(), written)
        self.assertEqual(len(second.events()), 2)
        second.disconnect()
        self.assertEqual(self.events.subscribers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timerRestarts(self) -> None:
        """
        A subscriber after the last one left starts the timer again, with
        rates measured afresh.
        """
        self.get(b"/events").disconnect()
        self.pool.backends[0].recordResponse(200, 0.01)
        client = self.get(b"/events")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        server = client.events()[-1]["pools"][0]["servers"][0]
        self.assertEqual(server["requests_per_second"], 0.0)

    def test_stalledClientSkipped(self) -> None:
        """
        While a client does not read (its transport paused the response),
        snapshots are skipped, not buffered; they resume with it.
        """
        client = self.get(b"/events")
        client.transport.producer.pauseProducing()
        written = client.transport.value()
        self.clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(client.transport.value(), written)
        client.transport.producer.resumeProducing()
        self.clock.advance(1.0)
        self.assertEqual(len(client.events()), 2)
        self.assertEqual(client.events()[-1]["time"], 4.0)

    def test_stalledClientDropped(self) -> None:
        """
        A client paused for the stall limit is disconnected and forgotten.
        """
        client = self.get(b"/events")
        client.transport.producer.pauseProducing()
        self.clock.pump([1.0] * int(dashboard.STALL_LIMIT - 1))
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(1.0)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.events.subscribers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_snapshotErrorKeepsTimer(self) -> None:
        """
        A snapshot that fails is logged and skipped; the next one goes out.
        """
        client = self.get(b"/events")
        real = self.events.snapshot
        self.events.snapshot = lambda: 1 / 0  # type: ignore[method-assign]
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.events.snapshot = real  # type: ignore[method-assign]
        self.clock.advance(1.0)
        self.assertEqual(len(client.events()), 2)

    def test_stop(self) -> None:
        """
        L{dashboard.EventsResource.stop} ends every response and the timer.
        """
        client = self.get(b"/events")
        self.events.stop()
        self.assertTrue(client.transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(self.events.subscribers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_head(self) -> None:
        """
        C{HEAD} gets the headers and subscribes nothing.
        """
        client = Client(self.site, b"HEAD", b"/events")
        status, headers, body = client.response()
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(body, b"")
        self.assertEqual(self.events.subscribers, [])

    def test_nonFiniteNumbers(self) -> None:
        """
        Infinite and NaN numbers, which are not JSON, go out as C{null}.
        """
        data = dashboard.EventsResource.encode(
            {"a": [float("inf"), 1.5], "b": {"c": float("nan")}, "d": "Infinity"}
        )
        self.assertEqual(
            json.loads(data[len(b"data: ") :]),
            {"a": [None, 1.5], "b": {"c": None}, "d": "Infinity"},
        )


class EventsGuardTests(DashboardCase):
    """
    C{/events} is a read: the guard's refusals apply, and subscribe
    nothing.
    """

    def test_foreignHost(self) -> None:
        """
        A foreign Host gets 421 and no stream.
        """
        status, headers, body = self.get(b"/events", Host=b"evil.example").response()
        self.assertEqual(status, 421)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertIn("error", json.loads(body))
        self.assertEqual(self.events.subscribers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readsNeedToken(self) -> None:
        """
        With closed reads, no token (or a wrong one) gets 401 and no
        stream.
        """
        self.closeReads()
        for target, headers in [
            (b"/events", {}),
            (b"/events?token=wrong-token-value", {}),
            (b"/events", {"Authorization": b"Bearer wrong-token-value"}),
        ]:
            status, _, _ = self.get(target, **headers).response()
            self.assertEqual(status, 401)
        self.assertEqual(self.events.subscribers, [])

    def test_tokenInHeaderOrQuery(self) -> None:
        """
        With closed reads, the token in the header or the query subscribes.
        """
        self.closeReads()
        byHeader = self.get(b"/events", Authorization=b"Bearer " + TOKEN.encode())
        byQuery = self.get(b"/events?token=" + TOKEN.encode())
        self.assertEqual(len(byHeader.events()), 1)
        self.assertEqual(len(byQuery.events()), 1)
        self.assertEqual(len(self.events.subscribers), 2)


class SubscriberCapTests(DashboardCase):
    """
    The number of open event streams is bounded.
    """

    def test_overCapRefused(self) -> None:
        """
        Past L{dashboard.MAX_SUBSCRIBERS} streams a new one gets 503 with
        Retry-After; one ending makes room.
        """
        self.patch(dashboard, "MAX_SUBSCRIBERS", 1)
        first = self.get(b"/events")
        second = self.get(b"/events")
        status, headers, body = second.response()
        self.assertEqual(status, 503)
        self.assertEqual(headers[b"retry-after"], b"5")
        self.assertEqual(len(self.events.subscribers), 1)
        first.disconnect()
        third = self.get(b"/events")
        self.assertEqual(len(self.events.subscribers), 1)
        third.disconnect()
