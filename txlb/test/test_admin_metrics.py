"""
Tests for L{txlb.admin.metrics}: the Prometheus families computed from a
running L{txlb.service.TxlbService}, and C{/metrics} behind the admin
guard.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from txlb.admin.guard import Guard
from txlb.admin.metrics import (
    CHECK_RESULTS,
    CODES,
    DROP_REASONS,
    MetricsResource,
    TxlbCollector,
    install,
)
from txlb.config import AdminConfig, Config, parseConfig
from txlb.pool import LATENCY_BUCKETS, QueueFull, QueueTimeout
from txlb.protection import BreakerState
from txlb.service import TxlbService
from txlb.test.helpers import connectClient
from txlb.test.test_lifecycle import started

ADMIN = AdminConfig(endpoint="tcp:9090", address="127.0.0.1", port=9090, token=None)

#: Every sample name txlb exposes, as exposed.
TXLB_SAMPLES = {
    "txlb_requests_total",
    "txlb_requests_dropped_total",
    "txlb_active_connections",
    "txlb_listener_connections",
    "txlb_connections_total",
    "txlb_listener_accepted_total",
    "txlb_request_duration_seconds_bucket",
    "txlb_request_duration_seconds_count",
    "txlb_request_duration_seconds_sum",
    "txlb_backend_up",
    "txlb_backend_usable",
    "txlb_backend_weight",
    "txlb_backend_ejected",
    "txlb_backend_breaker_open",
    "txlb_health_checks_total",
    "txlb_retries_total",
    "txlb_retries_refused_total",
    "txlb_ejections_total",
    "txlb_backend_failures_total",
    "txlb_pool_queued",
    "txlb_pool_panics_total",
    "txlb_bytes_received_total",
    "txlb_bytes_sent_total",
}

#: Configured names in L{metricsConfig}.
POOLS = {"app", "db"}
BACKENDS = {"app1", "app2", "db1"}
LISTENERS = {"web", "tcp"}


def metricsConfig() -> Config:
    """
    An L7 listener C{web} on pool C{app} (servers C{app1}, C{app2}, with
    outlier detection and circuit breakers) and an L4 listener C{tcp} on
    pool C{db} (server C{db1}).
    """
    return parseConfig(
        {
            "listeners": {
                "web": {"port": 8080, "layer": "L7", "pool": "app"},
                "tcp": {"port": 9000, "layer": "L4", "pool": "db"},
            },
            "pools": {
                "app": {
                    "servers": [
                        {"name": "app1", "address": "127.0.0.1", "port": 3000},
                        {"name": "app2", "address": "127.0.0.1", "port": 3001},
                    ],
                    "outlier_detection": {},
                    "circuit_breaker": {},
                },
                "db": {
                    "servers": [{"name": "db1", "address": "127.0.0.1", "port": 5432}],
                },
            },
        },
        "lb.toml",
    )


def factoryOf(service: TxlbService, name: str) -> Any:
    """
    The protocol factory of listener C{name}.
    """
    for listener in service.listeners:
        if listener.listener.name == name:
            return listener.factory
    raise KeyError(name)


def metricsRequest(
    method: bytes = b"GET",
    host: bytes = b"127.0.0.1:9090",
    headers: dict[bytes, bytes] | None = None,
) -> DummyRequest:
    """
    A request for C{/metrics} with C{host} as its C{Host}.
    """
    request = DummyRequest([b"metrics"])
    request.method = method
    request.requestHeaders.setRawHeaders(b"host", [host])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


class RetiredFactory:
    """
    Stands for an L4 factory a reload retired, with connections left.
    """

    listenerName = "tcp"
    activeCount = 1
    accepted = 5
    shed = 2
    noBackend = 1
    rateLimited = 3
    bytesIn = 100
    bytesOut = 200


class MetricsTests(SynchronousTestCase):
    """
    Tests for L{TxlbCollector} through L{MetricsResource}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = started(metricsConfig(), self.reactor)
        self.guard = Guard(ADMIN)
        self.resource = MetricsResource(self.service, self.guard)
        self.app = self.service.pools["app"]
        self.db = self.service.pools["db"]
        self.app1, self.app2 = self.app.backends
        (self.db1,) = self.db.backends

    def scrape(self) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        """
        Render C{/metrics} and parse it.

        @return: C{{sample name: {labels: value}}}.
        """
        request = metricsRequest()
        body = self.resource.render(request)
        self.assertIn(request.responseCode, (None, 200))
        samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                series = samples.setdefault(sample.name, {})
                key = frozenset(sample.labels.items())
                self.assertNotIn(key, series, f"{sample.name} repeats {sample.labels}")
                series[key] = sample.value
        return samples

    def value(self, samples: Any, name: str, **labels: str) -> float:
        """
        The value of the sample C{name} with exactly C{labels}.
        """
        return samples[name][frozenset(labels.items())]

    def test_names(self) -> None:
        """
        Exactly the documented names are exposed, counters with one
        C{_total} suffix, besides the process collector's.
        """
        samples = self.scrape()
        txlb = {name for name in samples if name.startswith("txlb_")}
        self.assertEqual(txlb, TXLB_SAMPLES)
        self.assertFalse([name for name in samples if name.endswith("_total_total")])
        self.assertTrue(
            all(name.startswith(("txlb_", "process_")) for name in samples), sorted(samples)
        )

    def test_contentType(self) -> None:
        """
        The answer has Prometheus' text format content type and is not
        cached.
        """
        request = metricsRequest()
        self.resource.render(request)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [CONTENT_TYPE_LATEST.encode("ascii")],
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_requestsByCode(self) -> None:
        """
        C{txlb_requests_total} has one series per status class of each
        backend of an L7 pool, C{none} for requests without a response.
        """
        self.app1.responses[:] = [1, 2, 30, 4, 5, 6]
        samples = self.scrape()
        for code, expected in zip(CODES, [1, 2, 30, 4, 5, 6], strict=True):
            self.assertEqual(
                self.value(samples, "txlb_requests_total", pool="app", backend="app1", code=code),
                expected,
            )
        self.assertEqual(
            self.value(samples, "txlb_requests_total", pool="app", backend="app2", code="2xx"), 0
        )

    def test_l4PoolsHaveNoL7Series(self) -> None:
        """
        The backends of a pool only L4 listeners use have no request or
        duration series, and all the others.
        """
        samples = self.scrape()
        for name in ("txlb_requests_total", "txlb_request_duration_seconds_count"):
            self.assertEqual(
                {dict(labels)["pool"] for labels in samples[name]}, {"app"}
            )
        self.assertEqual(
            self.value(samples, "txlb_backend_up", pool="db", backend="db1"), 1
        )

    def test_durationHistogram(self) -> None:
        """
        C{txlb_request_duration_seconds} has cumulative buckets at
        L{LATENCY_BUCKETS} up to C{+Inf}, its count and its sum.
        """
        for seconds in (0.0005, 0.003, 0.004, 0.2, 20.0):
            self.app2.recordResponse(200, seconds)
        samples = self.scrape()
        buckets = {
            dict(labels)["le"]: value
            for labels, value in samples["txlb_request_duration_seconds_bucket"].items()
            if dict(labels)["backend"] == "app2"
        }
        self.assertEqual(len(buckets), len(LATENCY_BUCKETS))
        self.assertEqual(buckets["0.001"], 1)
        self.assertEqual(buckets["0.0025"], 1)
        self.assertEqual(buckets["0.005"], 3)
        self.assertEqual(buckets["0.1"], 3)
        self.assertEqual(buckets["0.25"], 4)
        self.assertEqual(buckets["10.0"], 4)
        self.assertEqual(buckets["+Inf"], 5)
        ordered = [buckets[key] for key in sorted(buckets, key=float)]
        self.assertEqual(ordered, sorted(ordered))
        self.assertEqual(
            self.value(samples, "txlb_request_duration_seconds_count", pool="app", backend="app2"),
            5,
        )
        self.assertAlmostEqual(
            self.value(samples, "txlb_request_duration_seconds_sum", pool="app", backend="app2"),
            20.2075,
        )

    def test_backendCounters(self) -> None:
        """
        In flight, started, connect failures and health check results are
        those of each backend.
        """
        self.db1.acquire()
        self.db1.acquire()
        self.db1.release()
        self.db1.recordFailure("refused")
        self.db1.health.passed = 7
        self.db1.health.failed = 2
        samples = self.scrape()
        db1 = {"pool": "db", "backend": "db1"}
        self.assertEqual(self.value(samples, "txlb_active_connections", **db1), 1)
        self.assertEqual(self.value(samples, "txlb_connections_total", **db1), 2)
        self.assertEqual(self.value(samples, "txlb_backend_failures_total", **db1), 1)
        self.assertEqual(
            self.value(samples, "txlb_health_checks_total", result="ok", **db1), 7
        )
        self.assertEqual(
            self.value(samples, "txlb_health_checks_total", result="failed", **db1), 2
        )

    def test_backendState(self) -> None:
        """
        Up, usable, effective weight, ejected and breaker open are 1 or 0
        (the weight a number) from each backend's state.
        """
        self.app1.setHealthy(False)
        self.app2.ejected = True
        self.app2.breaker.state = BreakerState.open
        samples = self.scrape()
        for name, app1, app2, db1 in (
            ("txlb_backend_up", 0, 1, 1),
            ("txlb_backend_usable", 0, 0, 1),
            ("txlb_backend_weight", 1, 1, 1),
            ("txlb_backend_ejected", 0, 1, 0),
            ("txlb_backend_breaker_open", 0, 1, 0),
        ):
            self.assertEqual(
                [
                    self.value(samples, name, pool="app", backend="app1"),
                    self.value(samples, name, pool="app", backend="app2"),
                    self.value(samples, name, pool="db", backend="db1"),
                ],
                [app1, app2, db1],
                name,
            )

    def test_poolMetrics(self) -> None:
        """
        Queued, panics, ejections (for pools with outlier detection) and
        retries refused by a pool's budget.
        """
        self.app.maxQueue = 2
        self.app.queueTimeout = 5.0
        waiting = [self.app.wait(), self.app.wait()]
        self.failureResultOf(self.app.wait(), QueueFull)
        self.app.panics = 3
        self.app.outlierDetector.ejections = 4
        self.service.budgets["app"].refused = 5
        samples = self.scrape()
        self.assertEqual(self.value(samples, "txlb_pool_queued", pool="app"), 2)
        self.assertEqual(self.value(samples, "txlb_pool_queued", pool="db"), 0)
        self.assertEqual(self.value(samples, "txlb_pool_panics_total", pool="app"), 3)
        self.assertEqual(
            samples["txlb_ejections_total"], {frozenset({("pool", "app")}): 4}
        )
        self.assertEqual(
            samples["txlb_retries_refused_total"], {frozenset({("pool", "app")}): 5}
        )
        self.assertEqual(
            self.value(samples, "txlb_requests_dropped_total", reason="queue_full"), 1
        )
        self.reactor.advance(5.0)
        for d in waiting:
            self.failureResultOf(d, QueueTimeout)
        samples = self.scrape()
        self.assertEqual(self.value(samples, "txlb_pool_queued", pool="app"), 0)
        self.assertEqual(
            self.value(samples, "txlb_requests_dropped_total", reason="queue_timeout"), 2
        )

    def test_listenerMetrics(self) -> None:
        """
        Open and accepted connections and bytes are per listener, a
        retired factory's added under its listener's name; retries are
        those of L7 listeners.
        """
        tcp = factoryOf(self.service, "tcp")
        connectClient(tcp)
        factoryOf(self.service, "web").counters["retries"] = 6
        self.service.retired.add(RetiredFactory())
        samples = self.scrape()
        self.assertEqual(self.value(samples, "txlb_listener_connections", listener="tcp"), 2)
        self.assertEqual(self.value(samples, "txlb_listener_connections", listener="web"), 0)
        self.assertEqual(self.value(samples, "txlb_listener_accepted_total", listener="tcp"), 6)
        self.assertEqual(
            self.value(samples, "txlb_bytes_received_total", listener="tcp"),
            100 + getattr(tcp, "bytesIn", 0),
        )
        self.assertEqual(
            self.value(samples, "txlb_bytes_sent_total", listener="tcp"),
            200 + getattr(tcp, "bytesOut", 0),
        )
        self.assertEqual(
            samples["txlb_retries_total"], {frozenset({("listener", "web")}): 6}
        )

    def test_droppedOncePerReason(self) -> None:
        """
        Each reason of C{txlb_requests_dropped_total} is counted from one
        source: an L7 C{no_backend} that is also in its pool's C{dropped},
        and the pool's count of failed picks, are not counted again.
        """
        web = factoryOf(self.service, "web")
        tcp = factoryOf(self.service, "tcp")
        web.counters.update(
            rate_limited=1, rejected=2, header_timeout=3, no_backend=4, queue_full=50,
            body_timeout=7,
        )
        self.app.dropped["no_backend"] += 4
        self.app.noBackend = 40
        web.limit.shed = 5
        tcp.noBackend = 6
        self.db.noBackend = 60
        tcp.maxConnections = 0
        connectClient(tcp)
        self.service.retired.add(RetiredFactory())
        samples = self.scrape()
        self.assertEqual(
            {dict(labels)["reason"]: value
             for labels, value in samples["txlb_requests_dropped_total"].items()},
            {
                "rate_limit": 1 + 3,
                "shed": 5 + 1 + 2,
                "queue_full": 0,
                "queue_timeout": 0,
                "no_backend": 4 + 6 + 1,
                "rejected": 2,
                "header_timeout": 3,
                "body_timeout": 7,
            },
        )

    def test_labelsBounded(self) -> None:
        """
        Requests with odd targets, hosts and user agents, malformed ones
        too, never make a label value: every label holds a configured
        name or one of the fixed values.
        """
        for backend in self.app.backends:
            backend.setHealthy(False)
        web = factoryOf(self.service, "web")
        odd = [
            (
                b"GET /../../etc/passwd?x=%00&pool=db HTTP/1.1\r\nHost: evil.example\r\n"
                b"User-Agent: <script>alert(1)</script>\r\n\r\n",
                503,
            ),
            (
                b"GET /caf%C3%A9/%2e%2e?q=%ff HTTP/1.1\r\nHost: xn--caf-dma.example:1\r\n"
                b"User-Agent: \xff\xfe txlb_requests_total{pool=\"x\"}\r\n\r\n",
                503,
            ),
            (
                b"DELETE http://other.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
                503,
            ),
            (
                b"GET /" + b"a" * 500 + b" HTTP/1.1\r\nHost: \xff\xfe.example:1\r\n\r\n",
                400,
            ),
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
        ]
        for data, status in odd:
            protocol, transport = connectClient(web)
            protocol.dataReceived(data)
            self.assertEqual(
                transport.value().split(b" ", 2)[:2],
                [b"HTTP/1.1", str(status).encode("ascii")],
                data,
            )
        samples = self.scrape()
        dropped = {
            dict(labels)["reason"]: value
            for labels, value in samples["txlb_requests_dropped_total"].items()
        }
        # The odd requests were counted, under fixed reasons.
        self.assertEqual(dropped["no_backend"], 3)
        self.assertEqual(dropped["rejected"], 4)
        allowed = {
            "pool": POOLS,
            "backend": BACKENDS,
            "listener": LISTENERS,
            "code": set(CODES),
            "reason": set(DROP_REASONS),
            "result": set(CHECK_RESULTS),
        }
        for name, series in samples.items():
            for labels in series:
                for label, value in labels:
                    if label == "le" and name == "txlb_request_duration_seconds_bucket":
                        continue
                    self.assertIn(label, allowed, name)
                    self.assertIn(value, allowed[label], f"{name}{{{label}={value!r}}}")

    def test_collectorDirect(self) -> None:
        """
        L{TxlbCollector.collect} yields families from the state at the time
        it is called.
        """
        collector = TxlbCollector(self.service)
        before = {f.name: f for f in collector.collect()}
        self.db1.acquire()
        after = {f.name: f for f in collector.collect()}
        self.assertEqual(
            [s.value for s in before["txlb_active_connections"].samples
             if s.labels["backend"] == "db1"],
            [0],
        )
        self.assertEqual(
            [s.value for s in after["txlb_active_connections"].samples
             if s.labels["backend"] == "db1"],
            [1],
        )
        self.db1.release()


class GuardTests(SynchronousTestCase):
    """
    C{/metrics} answers only what the admin L{Guard} lets through.
    """

    def setUp(self) -> None:
        self.service = started(metricsConfig(), MemoryReactorClock())

    def render(self, config: AdminConfig, request: DummyRequest) -> tuple[DummyRequest, bytes]:
        """
        Render C{request} on a L{MetricsResource} guarded by C{config}.
        """
        return request, MetricsResource(self.service, Guard(config)).render(request)

    def test_foreignHost(self) -> None:
        """
        A C{Host} that does not name the admin service gets 421 and a JSON
        error, no metrics.
        """
        request, body = self.render(ADMIN, metricsRequest(host=b"attacker.example"))
        self.assertEqual(request.responseCode, 421)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertIn(b'"error"', body)
        self.assertNotIn(b"txlb_", body)

    def test_tokenNeeded(self) -> None:
        """
        With C{open_reads} off, a request without the token gets 401; with
        it, the metrics.
        """
        config = AdminConfig(
            endpoint="tcp:9090", address="127.0.0.1", port=9090, token="s3cret",
            openReads=False,
        )
        request, body = self.render(config, metricsRequest())
        self.assertEqual(request.responseCode, 401)
        self.assertNotIn(b"txlb_", body)
        request, body = self.render(
            config, metricsRequest(headers={b"authorization": b"Bearer s3cret"})
        )
        self.assertIn(request.responseCode, (None, 200))
        self.assertIn(b"txlb_backend_up", body)

    def test_openReads(self) -> None:
        """
        With a token configured and C{open_reads} on, reads need no token.
        """
        config = AdminConfig(
            endpoint="tcp:9090", address="127.0.0.1", port=9090, token="s3cret"
        )
        request, body = self.render(config, metricsRequest())
        self.assertIn(request.responseCode, (None, 200))
        self.assertIn(b"txlb_backend_up", body)

    def test_head(self) -> None:
        """
        C{HEAD} is answered like C{GET} (the server drops the body).
        """
        request, body = self.render(ADMIN, metricsRequest(b"HEAD"))
        self.assertIn(request.responseCode, (None, 200))
        self.assertIn(b"txlb_backend_up", body)

    def test_otherMethods(self) -> None:
        """
        Methods other than C{GET} and C{HEAD} get 405 with C{Allow}.
        """
        for method in (b"POST", b"PUT", b"DELETE"):
            request, body = self.render(ADMIN, metricsRequest(method))
            self.assertEqual(request.responseCode, 405)
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"allow"), [b"GET, HEAD"]
            )
            self.assertNotIn(b"txlb_", body)

    def test_install(self) -> None:
        """
        L{install} puts a L{MetricsResource} at C{metrics}.
        """
        root = Resource()
        install(root, self.service, Guard(ADMIN))
        child = root.getChildWithDefault(b"metrics", DummyRequest([b"metrics"]))
        self.assertIsInstance(child, MetricsResource)


