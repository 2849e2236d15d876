"""
The JSON shapes the admin service answers with, computed from the running
L{txlb.service.TxlbService} when asked (nothing here runs per request of
the data path).

Two families:
  - the shapes scripts written for the original tools already read:
    L{lbHealth} (C{GET /lb-health}), L{lbStats} (C{GET /lb-stats}),
    L{stats} (C{GET /stats}) and L{statsDetail} (C{GET /stats/detail});
  - txlb's own, fuller ones: L{serverView}, L{poolView}, L{listenerView},
    used by the REST API, the dashboard and C{txlbctl}.
"""

from __future__ import annotations

from typing import Any

from txlb.pool import LATENCY_BUCKETS, Backend, Pool


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def serverAddress(backend: Backend) -> str:
    """
    C{host:port} (C{[v6]:port}) of a TCP backend, else its name.
    """
    if backend.address is None or backend.port is None:
        return backend.name
    if ":" in backend.address:
        return f"[{backend.address}]:{backend.port}"
    return f"{backend.address}:{backend.port}"


def healthStateName(backend: Backend, check: Any = None) -> str:
    """
    C{"up"}, C{"down"} or, with the pool's health check C{check},
    C{"pending"} (not yet passed a check; see L{txlb.health}).
    """
    if check is not None:
        from txlb.health import healthState

        return healthState(backend, check).value
    return "up" if backend.healthy else "down"


def percentile(backend: Backend, q: float) -> float | None:
    """
    The upper bound (seconds) of the latency bucket holding quantile C{q}
    of the backend's L7 response times, or C{None} without any.
    """
    counts = backend.responseTimes.counts
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, counts, strict=True):
        seen += count
        if seen >= rank:
            return bound if bound != float("inf") else LATENCY_BUCKETS[-2]
    return LATENCY_BUCKETS[-2]


def serverView(
    backend: Backend, pool: Pool | None = None, check: Any = None
) -> dict[str, Any]:
    """
    Everything the API tells about one server.

    @param check: its pool's L{txlb.config.HealthCheckConfig}, if any.
    """
    last = backend.health.last
    breaker = backend.breaker
    detector = pool.outlierDetector if pool is not None else None
    return {
        "name": backend.name,
        "address": serverAddress(backend),
        "endpoint": backend.endpoint,
        "state": backend.state.value,
        "health": healthStateName(backend, check),
        "healthy": backend.healthy,
        "usable": backend.usable,
        "weight": backend.configuredWeight,
        "effective_weight": round(float(backend.weight), 3),
        "max_connections": backend.maxConnections,
        "connections": backend.activeConnections,
        "total_connections": backend.totalConnections,
        "failures": backend.failures,
        "consecutive_failures": backend.consecutiveFailures,
        "last_failure": backend.lastFailureReason,
        "response_time_ms": _ms(backend.latency),
        "p50_ms": _ms(percentile(backend, 0.5)),
        "p99_ms": _ms(percentile(backend, 0.99)),
        "responses": {
            "none": backend.responses[0],
            **{f"{i}xx": backend.responses[i] for i in range(1, 6)},
        },
        "ejected": backend.ejected,
        "ejection": detector.describe(backend) if detector is not None else None,
        "breaker": breaker.describe() if breaker is not None else None,
        "health_checks": [
            {
                "at": r.at,
                "ok": r.ok,
                "reason": r.reason,
                "duration_ms": _ms(r.duration),
            }
            for r in backend.health.results
        ],
        "last_health_check": last.at if last is not None else None,
    }


def poolCheck(txlb: Any, pool: Pool) -> Any:
    """
    The health check configured for C{pool}, or C{None}.
    """
    try:
        return txlb.config.pool(pool.name).healthCheck
    except KeyError:
        return None


def poolView(pool: Pool, txlb: Any = None) -> dict[str, Any]:
    """
    One pool and its servers.
    """
    check = poolCheck(txlb, pool) if txlb is not None else None
    return {
        "name": pool.name,
        "algorithm": pool.algorithm,
        "health_check": check is not None,
        "servers": [serverView(b, pool, check) for b in pool.backends],
        "healthy_servers": sum(1 for b in pool.backends if b.healthy),
        "panic": pool.panic,
        "panics": pool.panics,
        "queued": pool.queued,
        "max_queue": pool.maxQueue,
        "dropped": dict(pool.dropped),
        "no_backend": pool.noBackend,
    }


def listenerView(listenerService: Any) -> dict[str, Any]:
    """
    One listener: where it listens, its layer and pool, its counters.
    """
    from txlb.service import describeAddress

    listener = listenerService.listener
    factory = listenerService.factory
    port = listenerService.port
    counters = dict(getattr(factory, "counters", {}) or {})
    return {
        "name": listener.name,
        "layer": listener.layer,
        "pool": listener.pool,
        "endpoint": listener.endpoint,
        "address": describeAddress(port.getHost()) if port is not None else None,
        "connections": getattr(factory, "activeCount", 0),
        "accepted": getattr(factory, "accepted", None),
        "shed": getattr(getattr(factory, "limit", None), "shed", getattr(factory, "shed", 0)),
        "counters": counters,
    }


def _allBackends(txlb: Any) -> list[tuple[Pool, Backend]]:
    return [(pool, b) for pool in txlb.pools.values() for b in pool.backends]


def lbHealth(txlb: Any) -> dict[str, Any]:
    """
    C{GET /lb-health}: C{status} is C{"healthy"} when every server is,
    C{"degraded"} when some are, C{"unhealthy"} when none is.
    """
    backends = _allBackends(txlb)
    healthy = sum(1 for _, b in backends if b.healthy)
    if healthy == len(backends):
        status = "healthy"
    elif healthy:
        status = "degraded"
    else:
        status = "unhealthy"
    return {
        "status": status,
        "healthy_backends": healthy,
        "total_backends": len(backends),
        "backends": [
            {
                "address": serverAddress(b),
                "pool": pool.name,
                "healthy": b.healthy,
                "connections": b.activeConnections,
                "response_time_ms": _ms(b.latency),
            }
            for pool, b in backends
        ],
    }


def lbStats(txlb: Any) -> dict[str, Any]:
    """
    C{GET /lb-stats}: the algorithm (of the first listener's pool) and
    every server's numbers.
    """
    listeners = list(txlb.listeners)
    first = listeners[0].listener.pool if listeners else next(iter(txlb.pools), None)
    pool = txlb.pools.get(first) if first is not None else None
    return {
        "algorithm": pool.algorithm if pool is not None else None,
        "backends": [
            {
                "address": serverAddress(b),
                "pool": p.name,
                "healthy": b.healthy,
                "connections": b.activeConnections,
                "weight": b.configuredWeight,
                "response_time_ms": _ms(b.latency),
                "last_health_check": (
                    b.health.last.at if b.health.last is not None else None
                ),
            }
            for p, b in _allBackends(txlb)
        ],
    }


def _serverCounts(b: Backend) -> tuple[int, int]:
    """
    Exchanges with C{b} that succeeded and failed: failed ones are connect
    failures, failed responses and 5xx responses.
    """
    failed = b.failures + b.responses[5]
    return max(0, b.totalConnections - b.activeConnections - failed), failed


def stats(txlb: Any) -> dict[str, Any]:
    """
    C{GET /stats}: client-side and server-side success and failure counts.

    Client side: L7 requests answered without an error of txlb's own
    (C{success}) and those refused or answered by txlb with an error
    (C{failed}: shed, rate limited, rejected as malformed, no backend,
    queue full or timed out, header or body timeout); L4 connections relayed
    (C{success}) and those shed, rate limited or closed for want of a
    backend (C{failed}).  Server side: see L{statsDetail}.
    """
    clientOk = clientFailed = 0
    for service in txlb.factories():
        counters = getattr(service, "counters", None)
        if counters is not None:
            failed = sum(
                counters[k]
                for k in (
                    "rejected", "no_backend", "rate_limited", "queue_full",
                    "queue_timeout", "header_timeout", "body_timeout",
                )
            )
            clientFailed += failed + service.limit.shed
            clientOk += max(0, counters["requests"] - failed)
        else:
            # L4: a connection closed because no backend took it (none
            # usable, all failed, queue full or timed out) failed too.
            unserved = getattr(service, "noBackend", 0) + getattr(service, "queueRefused", 0)
            clientOk += max(0, getattr(service, "accepted", 0) - unserved)
            clientFailed += (
                getattr(service, "shed", 0) + getattr(service, "rateLimited", 0) + unserved
            )
    serverOk = serverFailed = 0
    for _, b in _allBackends(txlb):
        ok, failed = _serverCounts(b)
        serverOk += ok
        serverFailed += failed
    return {
        "client": {"success": clientOk, "failed": clientFailed},
        "server": {"success": serverOk, "failed": serverFailed},
    }


def statsDetail(txlb: Any) -> dict[str, Any]:
    """
    C{GET /stats/detail}: C{/stats}, and success and failure counts per
    server.
    """
    detail = stats(txlb)
    servers = []
    for pool, b in _allBackends(txlb):
        ok, failed = _serverCounts(b)
        servers.append(
            {
                "address": serverAddress(b),
                "pool": pool.name,
                "success": ok,
                "failed": failed,
                "healthy": b.healthy,
                "connections": b.activeConnections,
            }
        )
    detail["servers"] = servers
    return detail
