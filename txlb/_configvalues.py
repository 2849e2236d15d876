"""
The values a configuration is made of: frozen attrs classes, the defaults
and limits they are checked against, L{ConfigError}, and how a server's or a
listener's address is spelled as a Twisted endpoint string.

Import these from L{txlb.config}; this module exists so that
L{txlb._configread} and L{txlb.config} can share them without importing each
other.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import attrs

LAYERS = ("L4", "L7")
HEALTH_CHECK_TYPES = ("tcp", "http")
DEFAULT_PORT = 8080
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_BACKLOG = 1024
MAX_WEIGHT = 1000


class ConfigError(Exception):
    """
    A configuration is invalid.

    @ivar source: the file (or C{<command line>}) the value came from.
    @ivar path: the key path, e.g. C{server[2].port}; empty for the file.
    @ivar problem: what is wrong.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path:
            return f"{self.source}: {self.path}: {self.problem}"
        return f"{self.source}: {self.problem}"


@attrs.frozen
class TimeoutsConfig:
    """
    Timeouts in seconds; C{None} disables one.

    @ivar connect: to open a backend connection.
    @ivar idle: an L4 connection (or idle L7 keep-alive) with no traffic.
    @ivar response: L7, from request sent to response headers.
    @ivar header: L7, for the client to send a whole request header block.
    @ivar body: L7, the longest a client may pause while sending a request
        body.
    """

    connect: float = 5.0
    idle: float | None = 600.0
    response: float | None = 60.0
    header: float | None = 10.0
    body: float | None = 60.0


@attrs.frozen
class HealthCheckConfig:
    """
    Active health checking of one pool's servers.
    """

    type: str = "tcp"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    path: str = "/health"
    host: str | None = None
    expectedStatus: tuple[int, int] = (200, 399)
    jitter: float = 0.1


@attrs.frozen
class OutlierConfig:
    """
    Passive checks: eject a backend that fails live traffic.

    @ivar consecutiveFailures: connect failures, timeouts or 5xx responses
        in a row that eject a backend.
    @ivar baseEjectionTime: seconds out for a first ejection; the n-th
        ejection in a row lasts n times as long ...
    @ivar maxEjectionTime: ... but never more than this.
    @ivar maxEjectionPercent: at most this share of the pool's backends is
        ejected at once (at least one backend may always be ejected).
    """

    consecutiveFailures: int = 5
    baseEjectionTime: float = 30.0
    maxEjectionTime: float = 300.0
    maxEjectionPercent: int = 50


@attrs.frozen
class BreakerConfig:
    """
    A circuit breaker per backend.

    @ivar failureRatio: open when at least this share of the last
        C{window} outcomes failed ...
    @ivar window: ... counting this many outcomes ...
    @ivar minRequests: ... once at least this many were seen.
    @ivar openTime: seconds open (no traffic) before probing.
    @ivar halfOpenRequests: probes let through when half-open; all must
        succeed to close, any failure opens again.
    """

    failureRatio: float = 0.5
    window: int = 20
    minRequests: int = 10
    openTime: float = 10.0
    halfOpenRequests: int = 3


@attrs.frozen
class RateLimitConfig:
    """
    A token bucket per client IP address.

    @ivar requestsPerSecond: sustained rate (L4: new connections).
    @ivar burst: bucket size: requests allowed at once after idleness.
    @ivar maxClients: buckets kept at most; beyond it the longest idle are
        dropped (those clients start again with a full bucket).
    """

    requestsPerSecond: float
    burst: int
    maxClients: int = 100000


@attrs.frozen
class AdminConfig:
    """
    The admin HTTP service: metrics, stats, the management API and the
    dashboard.

    @ivar endpoint: the Twisted server endpoint string it listens on.
    @ivar address: the address it listens on (for Host checks and logs).
    @ivar port: the port it listens on (0: any free one).
    @ivar token: the bearer token mutating calls need, or C{None} (only
        allowed on a loopback address).
    @ivar openReads: whether read-only endpoints answer without the token.
    @ivar allowedHosts: DNS names accepted in C{Host} besides the
        service's own addresses (lowercase).
    """

    endpoint: str
    address: str = "127.0.0.1"
    port: int = 9090
    token: str | None = attrs.field(default=None, repr=False)
    openReads: bool = True
    allowedHosts: tuple[str, ...] = ()


@attrs.frozen
class LifecycleConfig:
    """
    How txlb stops.

    @ivar drainTimeout: seconds connections and requests in flight get to
        finish after SIGTERM/SIGINT before they are cut.
    """

    drainTimeout: float = 30.0


@attrs.frozen
class ServerConfig:
    """
    One backend server.

    @ivar name: identity for reloads, the API and metrics.
    @ivar address: host, when given as address/port.
    @ivar port: port, when given as address/port.
    @ivar endpoint: the Twisted client endpoint string used to connect.
    """

    name: str
    address: str | None
    port: int | None
    endpoint: str
    weight: int = 1
    maxConnections: int | None = None


@attrs.frozen
class RetriesConfig:
    """
    When an L7 request may be tried on another backend.

    @ivar attempts: tries in all, the first included.
    @ivar budget: retries in flight may be at most this share of the pool's
        requests in flight ...
    @ivar minRetries: ... or this many, whichever is more.
    @ivar timeout: seconds for a request across all its tries, or C{None}.
    """

    attempts: int = 3
    budget: float = 0.2
    minRetries: int = 3
    timeout: float | None = None


@attrs.frozen
class ConnectionPoolConfig:
    """
    Persistent L7 connections to each backend of a pool.

    @ivar maxIdle: idle connections kept per backend.
    @ivar idleTimeout: seconds an idle connection is kept.
    """

    maxIdle: int = 256
    idleTimeout: float = 4.0


@attrs.frozen
class HTTPConfig:
    """
    L7 settings of one listener.

    @ivar trustedProxies: CIDR strings whose X-Forwarded-For is extended.
    @ivar accessLog: a file path, C{"-"} for txlb's log, or C{None}.
    """

    maxHeaderSize: int = 65536
    maxTargetLength: int = 8192
    maxBodySize: int | None = None
    keepaliveTimeout: float | None = 60.0
    trustedProxies: tuple[str, ...] = ()
    forwarded: bool = False
    forwardedBy: str | None = None
    backendHeader: bool = False
    accessLog: str | None = None
    stats: bool = False


@attrs.frozen
class PoolConfig:
    """
    A named set of servers behind one strategy.

    @ivar algorithm: the strategy factory's declared name.
    @ivar algorithmOptions: the C{algorithm_options} table as sorted pairs.
    """

    name: str
    algorithm: str
    servers: tuple[ServerConfig, ...]
    algorithmOptions: tuple[tuple[str, Any], ...] = ()
    healthCheck: HealthCheckConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    hashKey: str | None = None
    stickyCookie: str | None = None
    hostRewrite: str | None = None
    retries: RetriesConfig = RetriesConfig()
    connectionPool: ConnectionPoolConfig = ConnectionPoolConfig()
    slowStart: float = 0.0
    maxQueue: int = 0
    queueTimeout: float | None = 5.0
    panic: bool = False
    outlier: OutlierConfig | None = None
    breaker: BreakerConfig | None = None

    @property
    def options(self) -> dict[str, Any]:
        """
        The C{algorithm_options} as a new C{dict}, for C{build(options)}.
        """
        return dict(self.algorithmOptions)


@attrs.frozen
class RouteConfig:
    """
    An L7 route: when every given condition matches, use C{pool}.
    """

    pool: str
    host: str | None = None
    pathPrefix: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class ListenerConfig:
    """
    One listening socket.

    @ivar endpoint: the Twisted server endpoint string to listen on.
    @ivar pool: the default pool's name.
    @ivar maxConnections: listener-wide limit, C{None} for none.
    """

    name: str
    endpoint: str
    layer: str
    pool: str
    maxConnections: int | None = None
    routes: tuple[RouteConfig, ...] = ()
    http: HTTPConfig = HTTPConfig()
    rateLimit: RateLimitConfig | None = None


@attrs.frozen
class Config:
    """
    A whole, validated configuration.
    """

    source: str
    listeners: tuple[ListenerConfig, ...]
    pools: tuple[PoolConfig, ...]
    lifecycle: LifecycleConfig = LifecycleConfig()
    admin: AdminConfig | None = None

    def pool(self, name: str) -> PoolConfig:
        """
        The pool called C{name}.

        @raise KeyError: no such pool.
        """
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def _hostForEndpoint(host: str) -> tuple[str, str]:
    """
    The endpoint type and the escaped host for C{host}.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "tcp", host
    if ip.version == 6:
        return "tcp6", host.replace(":", "\\:")
    return "tcp", host


def defaultServerName(address: str | None, port: int | None, endpoint: str) -> str:
    """
    A server's name when none is given: C{address:port} (C{[v6]:port}),
    or its endpoint string.
    """
    if address is None:
        return endpoint
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def clientEndpointString(host: str, port: int, timeout: float | None = None) -> str:
    """
    A Twisted client endpoint string for C{host}:C{port}.
    """
    # Twisted's tcp client takes IPv6 literals too (there is no tcp6 client
    # type), and whole seconds only: round up, never cutting the timeout short.
    escaped = host.replace(":", "\\:")
    s = f"tcp:host={escaped}:port={port}"
    if timeout is not None:
        s += f":timeout={math.ceil(timeout)}"
    return s


def serverEndpointString(address: str, port: int, backlog: int) -> str:
    """
    A Twisted server endpoint string listening on C{address}:C{port}.
    """
    kind, escaped = _hostForEndpoint(address)
    return f"{kind}:port={port}:interface={escaped}:backlog={backlog}"
