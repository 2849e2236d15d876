"""
Prometheus metrics at C{/metrics} of the admin service.

L{TxlbCollector} reads the counters txlb keeps anyway (on backends, pools,
retry budgets and listeners' protocol factories) when Prometheus scrapes:
nothing here runs per request of the data path.  L{MetricsResource} serves
them in the text exposition format, synchronously, from a registry of its
own (not C{prometheus_client}'s global one).

Label values are only names from the configuration (pool, server,
listener) and the fixed values in L{CODES}, L{DROP_REASONS} and
L{CHECK_RESULTS}: nothing a client sends ever becomes a label, so the
number of series is bounded by the configuration.

Where a refusal is counted in more than one place, one source is used for
each reason of C{txlb_requests_dropped_total} (see L{droppedByReason}).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from txlb.admin.guard import Guard, Refused, writeError
from txlb.pool import LATENCY_BUCKETS, Backend, Pool
from txlb.protection import BreakerState

#: Values of the C{code} label, by index of L{Backend.responses}: C{none}
#: for requests that got no response from the backend.
CODES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

#: Values of the C{reason} label of C{txlb_requests_dropped_total}.
DROP_REASONS = (
    "rate_limit",
    "shed",
    "queue_full",
    "queue_timeout",
    "no_backend",
    "rejected",
    "header_timeout",
    "body_timeout",
)

#: Values of the C{result} label of C{txlb_health_checks_total}.
CHECK_RESULTS = ("ok", "failed")

# The C{le} label of each bucket of txlb_request_duration_seconds.
_BOUNDS = tuple(floatToGoString(bound) for bound in LATENCY_BUCKETS)

_BACKEND = ["pool", "backend"]


def listenerFactories(txlb: Any) -> dict[str, list[Any]]:
    """
    The protocol factories of C{txlb}'s listeners by listener name: the
    running ones, and those a reload retired that still have connections
    (under the name they were configured with).

    @param txlb: a L{txlb.service.TxlbService}.
    """
    names = {id(service.factory): service.listener.name for service in txlb.listeners}
    byName: dict[str, list[Any]] = defaultdict(list)
    for factory in txlb.factories():
        name = names.get(id(factory), getattr(factory, "listenerName", None))
        if name is not None:
            byName[name].append(factory)
    return byName


def _shed(factory: Any) -> int:
    """
    Client connections C{factory} closed at once because its listener was
    full (an L7 factory counts them on its limit, an L4 one has C{shed}).
    """
    limit = getattr(factory, "limit", None)
    if limit is not None:
        return limit.shed
    return getattr(factory, "shed", 0)


def _accepted(factory: Any) -> int:
    """
    Client connections C{factory} ever admitted.
    """
    accepted = getattr(factory, "accepted", None)
    if accepted is not None:
        return accepted
    limit = getattr(factory, "limit", None)
    return limit.admitted if limit is not None else 0


def droppedByReason(txlb: Any) -> dict[str, int]:
    """
    Requests (L7) and connections (L4) txlb refused or answered with an
    error of its own, by reason, over every listener and pool.

    Each reason has one source, so nothing is counted twice:
      - C{no_backend}: the listeners' counts (an L7 factory's
        C{counters["no_backend"]}, an L4 factory's C{noBackend}): one per
        request or connection given up, where the pool's C{noBackend}
        counts every pick that found nothing (retries included) and its
        C{dropped["no_backend"]} only L7 requests;
      - C{queue_full}, C{queue_timeout}: the pools' C{dropped}, which
        L{txlb.pool.Pool.wait} counts for either layer (L7 factories count
        them too);
      - C{shed}: the listeners' connection limits;
      - C{rate_limit}: L7 C{counters["rate_limited"]}, or an L4 factory's
        C{rateLimited};
      - C{rejected} (malformed or over a limit), C{header_timeout} and
        C{body_timeout}: L7 counters.

    @param txlb: a L{txlb.service.TxlbService}.
    @return: a count for each of L{DROP_REASONS}.
    """
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for factories in listenerFactories(txlb).values():
        for factory in factories:
            counters = getattr(factory, "counters", None)
            if counters is not None:
                dropped["rate_limit"] += counters["rate_limited"]
                dropped["no_backend"] += counters["no_backend"]
                dropped["rejected"] += counters["rejected"]
                dropped["header_timeout"] += counters["header_timeout"]
                dropped["body_timeout"] += counters["body_timeout"]
            else:
                dropped["rate_limit"] += getattr(factory, "rateLimited", 0)
                dropped["no_backend"] += getattr(factory, "noBackend", 0)
            dropped["shed"] += _shed(factory)
    for pool in txlb.pools.values():
        dropped["queue_full"] += pool.dropped["queue_full"]
        dropped["queue_timeout"] += pool.dropped["queue_timeout"]
    return dropped


def _backends(txlb: Any) -> list[tuple[Pool, Backend, list[str]]]:
    """
    Every backend of every pool, with its pool and its labels.
    """
    return [
        (pool, backend, [pool.name, backend.name])
        for pool in txlb.pools.values()
        for backend in pool.backends
    ]


def l7Pools(txlb: Any) -> set[str]:
    """
    The names of the pools some L7 listener of C{txlb}'s configuration
    sends requests to (by default or by a route): the pools whose
    backends have L7 response counts worth exposing.
    """
    names: set[str] = set()
    for listener in txlb.config.listeners:
        if listener.layer == "L7":
            names.add(listener.pool)
            names.update(route.pool for route in listener.routes)
    return names


def _breakerOpen(backend: Backend) -> int:
    """
    1 while C{backend}'s circuit breaker is open, else 0.
    """
    breaker = backend.breaker
    return int(breaker is not None and breaker.state is BreakerState.open)


def _backendMetrics(txlb: Any) -> Iterator[Metric]:
    """
    The families labelled by pool and backend.
    """
    backends = _backends(txlb)
    l7 = l7Pools(txlb)
    l7Backends = [entry for entry in backends if entry[0].name in l7]

    requests = CounterMetricFamily(
        "txlb_requests_total",
        "L7 requests sent to a backend, by the status class of its response "
        "(none: no response); backends of pools L7 listeners use.",
        labels=[*_BACKEND, "code"],
    )
    for _, backend, labels in l7Backends:
        for code, count in zip(CODES, backend.responses, strict=True):
            requests.add_metric([*labels, code], count)
    yield requests

    duration = HistogramMetricFamily(
        "txlb_request_duration_seconds",
        "Time from choosing a backend for an L7 request to the end of its "
        "response (or to its failure: code none).",
        labels=_BACKEND,
    )
    for _, backend, labels in l7Backends:
        histogram = backend.responseTimes
        cumulative = 0
        buckets = []
        for bound, count in zip(_BOUNDS, histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        duration.add_metric(labels, buckets, histogram.total)
    yield duration

    checks = CounterMetricFamily(
        "txlb_health_checks_total",
        "Active health checks of a backend, by result.",
        labels=[*_BACKEND, "result"],
    )
    for _, backend, labels in backends:
        checks.add_metric([*labels, "ok"], backend.health.passed)
        checks.add_metric([*labels, "failed"], backend.health.failed)
    yield checks

    for name, kind, documentation, value in (
        (
            "txlb_active_connections", GaugeMetricFamily,
            "Connections (L4) or requests (L7) in flight to a backend.",
            lambda b: b.activeConnections,
        ),
        (
            "txlb_connections_total", CounterMetricFamily,
            "Connections (L4) or requests (L7) ever started to a backend.",
            lambda b: b.totalConnections,
        ),
        (
            "txlb_backend_failures_total", CounterMetricFamily,
            "Failed or timed out connects to a backend.",
            lambda b: b.failures,
        ),
        (
            "txlb_backend_up", GaugeMetricFamily,
            "1 when health checking finds a backend up (always 1 without "
            "a health check), else 0.",
            lambda b: int(b.healthy),
        ),
        (
            "txlb_backend_usable", GaugeMetricFamily,
            "1 when a backend may take new traffic now (up, active, not "
            "ejected, below its limit, breaker not open), else 0.",
            lambda b: int(b.usable),
        ),
        (
            "txlb_backend_weight", GaugeMetricFamily,
            "A backend's effective weight (below its configured weight "
            "during slow start).",
            lambda b: float(b.weight),
        ),
        (
            "txlb_backend_ejected", GaugeMetricFamily,
            "1 while outlier detection has ejected a backend, else 0.",
            lambda b: int(b.ejected),
        ),
        (
            "txlb_backend_breaker_open", GaugeMetricFamily,
            "1 while a backend's circuit breaker is open, else 0.",
            _breakerOpen,
        ),
    ):
        family = kind(name, documentation, labels=_BACKEND)
        for _, backend, labels in backends:
            family.add_metric(labels, value(backend))
        yield family


def _poolMetrics(txlb: Any) -> Iterator[Metric]:
    """
    The families labelled by pool.
    """
    pools = list(txlb.pools.values())
    queued = GaugeMetricFamily(
        "txlb_pool_queued",
        "Connections or requests waiting in a pool's queue for a backend.",
        labels=["pool"],
    )
    panics = CounterMetricFamily(
        "txlb_pool_panics_total",
        "Backends chosen in panic (no backend usable) by a pool.",
        labels=["pool"],
    )
    ejections = CounterMetricFamily(
        "txlb_ejections_total",
        "Backends ejected by a pool's outlier detection (pools with one).",
        labels=["pool"],
    )
    for pool in pools:
        queued.add_metric([pool.name], pool.queued)
        panics.add_metric([pool.name], pool.panics)
        if pool.outlierDetector is not None:
            ejections.add_metric([pool.name], pool.outlierDetector.ejections)
    yield queued
    yield panics
    yield ejections

    refused = CounterMetricFamily(
        "txlb_retries_refused_total",
        "L7 retries a pool's retry budget refused.",
        labels=["pool"],
    )
    for name, budget in sorted(txlb.budgets.items()):
        refused.add_metric([name], budget.refused)
    yield refused


def _listenerMetrics(txlb: Any) -> Iterator[Metric]:
    """
    The families labelled by listener, and the dropped requests.
    """
    byName = listenerFactories(txlb)
    for name, kind, documentation, value in (
        (
            "txlb_listener_connections", GaugeMetricFamily,
            "Client connections open on a listener.",
            lambda f: getattr(f, "activeCount", 0),
        ),
        (
            "txlb_listener_accepted_total", CounterMetricFamily,
            "Client connections a listener admitted (shed ones are not).",
            _accepted,
        ),
        (
            "txlb_bytes_received_total", CounterMetricFamily,
            "Bytes received from clients on a listener.",
            lambda f: getattr(f, "bytesIn", 0),
        ),
        (
            "txlb_bytes_sent_total", CounterMetricFamily,
            "Bytes sent to clients on a listener.",
            lambda f: getattr(f, "bytesOut", 0),
        ),
    ):
        family = kind(name, documentation, labels=["listener"])
        for listener, factories in byName.items():
            family.add_metric([listener], sum(value(f) for f in factories))
        yield family

    retries = CounterMetricFamily(
        "txlb_retries_total",
        "L7 requests sent again to another backend (L7 listeners).",
        labels=["listener"],
    )
    for listener, factories in byName.items():
        counters = [f.counters for f in factories if getattr(f, "counters", None) is not None]
        if counters:
            retries.add_metric([listener], sum(c["retries"] for c in counters))
    yield retries

    dropped = CounterMetricFamily(
        "txlb_requests_dropped_total",
        "Requests (L7) and connections (L4) refused or answered by txlb "
        "itself, by reason, over every listener.",
        labels=["reason"],
    )
    for reason, count in droppedByReason(txlb).items():
        dropped.add_metric([reason], count)
    yield dropped


class TxlbCollector:
    """
    A C{prometheus_client} collector of a running txlb: every family is
    computed from its runtime state when collected.

    Counter families are named with their C{_total} suffix, the name their
    samples are exposed under (C{prometheus_client} keeps the family name
    without it, and adds it back to the samples).

    @ivar txlb: the L{txlb.service.TxlbService}.
    """

    def __init__(self, txlb: Any) -> None:
        self.txlb = txlb

    def collect(self) -> Iterator[Metric]:
        """
        @return: the metric families of the state now.
        """
        yield from _backendMetrics(self.txlb)
        yield from _poolMetrics(self.txlb)
        yield from _listenerMetrics(self.txlb)


def makeRegistry(txlb: Any) -> CollectorRegistry:
    """
    A registry of its own holding a L{TxlbCollector} over C{txlb} and
    C{prometheus_client}'s process collector (it reads C{/proc} when
    collected, and reports nothing where there is none).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TxlbCollector(txlb))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """
    C{GET /metrics}: the Prometheus text format, answered at once (not
    from a thread, unlike C{prometheus_client.twisted.MetricsResource}).

    @ivar guard: the admin L{Guard}: reads may need the token.
    @ivar registry: the C{CollectorRegistry} exposed.
    """

    isLeaf = True

    def __init__(self, txlb: Any, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.registry = makeRegistry(txlb)

    def render(self, request: IRequest) -> bytes:
        """
        Check the request, then answer with every metric.

        @return: the exposition, or a JSON error: the guard's refusal, or
            405 for a method other than C{GET} and C{HEAD}.
        """
        try:
            self.guard.checkRead(request)
        except Refused as e:
            return writeError(request, e.status, e.message)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return writeError(request, 405, "use GET")
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


def install(root: Resource, txlb: Any, guard: Guard) -> None:
    """
    Put L{MetricsResource} at C{/metrics} of the admin resource tree.
    """
    root.putChild(b"metrics", MetricsResource(txlb, guard))
