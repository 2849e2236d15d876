"""
Build the service tree from a L{txlb.config.Config}.

The tree is a L{TxlbService} (a L{MultiService}) with named children that start
in order::

    txlb
      health      one L{txlb.health.PoolHealthChecker} per pool with a health check
      listeners   one L{ListenerService} per configured listener
      admin       the L{txlb.admin.service.AdminService}, with an [admin] table

Pools are runtime objects (L{txlb.pool.Pool}) shared by the listeners, held by
the L{TxlbService}.

Starting: listeners bind in C{privilegedStartService}; when any pool has a
health check, they accept nothing until its first round of checks is done
(connections wait in the listen backlog), so that no request meets a server
that was never checked.

Stopping, signals and reloading are in L{txlb._lifecycle}.
"""

from __future__ import annotations

import ipaddress
import random
import resource
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from txlb._lifecycle import Lifecycle, StartupError
from txlb.accesslog import AccessLog
from txlb.config import Config, ListenerConfig, PoolConfig
from txlb.health import PoolHealthChecker
from txlb.interfaces import IStrategyFactory
from txlb.limits import RetryBudget
from txlb.plugin import findStrategy, strategyRegistry
from txlb.pool import Backend, Pool
from txlb.protection import CircuitBreaker, OutlierDetector
from txlb.protocols.headers import ForwardingPolicy
from txlb.protocols.http import HTTPProxyFactory, HTTPSettings, L7Pool, RetryPolicy
from txlb.protocols.tcp import TCPRelayFactory
from txlb.protocols.upstream import UpstreamPool
from txlb.ratelimit import TokenBucketTable
from txlb.routing import Router

__all__ = ["ListenerService", "StartupError", "TxlbService"]

# Below this many open files, warn: each relayed connection needs two.
LOW_FD_LIMIT = 16384


def buildBackend(server: Any) -> Backend:
    """
    A runtime L{Backend} for a L{txlb.config.ServerConfig}.
    """
    return Backend(
        name=server.name,
        address=server.address,
        port=server.port,
        endpoint=server.endpoint,
        configuredWeight=server.weight,
        maxConnections=server.maxConnections,
    )


def buildPool(
    poolConfig: PoolConfig,
    reactor: Any,
    registry: Mapping[str, IStrategyFactory] | None = None,
    randomSource: random.Random | None = None,
) -> Pool:
    """
    A runtime L{Pool} for C{poolConfig}, its strategy built by its plugin
    and its protection (L{configurePool}) in place.

    With a health check, servers start pending (not healthy) until their
    first check passes.
    """
    factory = findStrategy(poolConfig.algorithm, registry)
    backends = [buildBackend(s) for s in poolConfig.servers]
    if poolConfig.healthCheck is not None:
        for backend in backends:
            backend.healthy = False
    pool = Pool(
        name=poolConfig.name,
        algorithm=factory.name,
        strategy=factory.build(poolConfig.options),
        clock=reactor,
        random=randomSource if randomSource is not None else random.Random(),
        backends=backends,
    )
    configurePool(pool, poolConfig)
    return pool


def configurePool(pool: Pool, poolConfig: PoolConfig) -> None:
    """
    Apply C{poolConfig}'s queueing, panic, slow start, outlier detection
    and circuit breakers to C{pool} and each of its backends.

    Called when a pool is built and again on every reload, with the pool's
    current backends: a backend's breaker is kept when its settings did not
    change.
    """
    pool.maxQueue = poolConfig.maxQueue
    pool.queueTimeout = poolConfig.queueTimeout
    pool.panic = poolConfig.panic
    detector = getattr(pool, "outlierDetector", None)
    if detector is not None and (
        poolConfig.outlier is None or detector.config != poolConfig.outlier
    ):
        # Stopping it puts what it ejected back in rotation.
        detector.stop()
        detector = None
    if detector is None and poolConfig.outlier is not None:
        detector = OutlierDetector(pool, poolConfig.outlier, pool.clock)
    pool.outlierDetector = detector
    for backend in pool.backends:
        configureBackend(backend, pool, poolConfig)


def configureBackend(backend: Backend, pool: Pool, poolConfig: PoolConfig) -> None:
    """
    Give C{backend} its pool's slow start, outlier detector and (when the
    pool has one configured) a circuit breaker.
    """
    backend.slowStart = poolConfig.slowStart
    backend.passive = getattr(pool, "outlierDetector", None)
    breaker = backend.breaker
    if breaker is not None and breaker.config != poolConfig.breaker:
        breaker.stop()
        breaker = None
    if breaker is None and poolConfig.breaker is not None:
        breaker = CircuitBreaker(
            poolConfig.breaker,
            pool.clock,
            name=backend.name,
            onAvailable=pool.availabilityChanged,
        )
    backend.breaker = breaker


def hashKeySpec(text: str | None) -> tuple[str, bytes | None] | None:
    """
    The L7 front's form of a pool's C{hash_key}: C{None} (client IP),
    C{("path", None)}, C{("client_ip", None)}, or C{("header", lowercase
    name)} / C{("cookie", name)} (cookie names are case-sensitive).
    """
    if text is None:
        return None
    kind, _, name = text.partition(":")
    if not name:
        return (kind, None)
    return (kind, (name.lower() if kind == "header" else name).encode("ascii"))


class ListenerService(Service):
    """
    Listens on one endpoint with one protocol factory.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    failure to listen is not logged and forgotten: it raises L{StartupError}
    from L{privilegedStartService} (binding happens there so that ports below
    1024 can be bound before twistd drops privileges).

    @ivar factory: the protocol factory (e.g. L{TCPRelayFactory}).
    @ivar port: the L{IListeningPort} once listening.
    """

    _log = Logger()

    def __init__(self, listener: ListenerConfig, factory: Any, reactor: Any) -> None:
        self.setName(listener.name)
        self.listener = listener
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        """
        Bind now, raising L{StartupError} when that fails synchronously.
        """
        Service.privilegedStartService(self)
        if self._listening is None:
            self._listen()

    def startService(self) -> None:
        """
        Start, binding first if L{privilegedStartService} was not called.
        """
        Service.startService(self)
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        outcome: list[Any] = []
        try:
            endpoint = serverFromString(self.reactor, self.listener.endpoint)
            d = endpoint.listen(self.factory)
        except Exception as e:
            # Not a bind error: e.g. systemd:index=N with no such inherited
            # descriptor.  Still one line for the operator.
            raise StartupError(
                f"listener {self.listener.name}: cannot listen on "
                f"{self.listener.endpoint}: {e or type(e).__name__}"
            ) from e
        d.addBoth(outcome.append)
        self._listening = d
        if outcome and isinstance(outcome[0], Failure):
            self._listening = None
            raise StartupError(
                f"listener {self.listener.name}: cannot listen on "
                f"{self.listener.endpoint}: {describeListenFailure(outcome[0])}"
            )
        if outcome:
            self._listened(outcome[0])
        else:
            # Endpoints that listen asynchronously (none of Twisted's stream
            # endpoints today) report failure when it comes.
            self._listening = Deferred()
            d.addCallbacks(self._listened, self._listenFailed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self._log.info(
            "listener {name} ({layer}) listening on {address} -> pool {pool}",
            name=self.listener.name,
            layer=self.listener.layer,
            address=describeAddress(port.getHost()),
            pool=self.listener.pool,
        )
        return port

    def _listenFailed(self, f: Failure) -> None:
        self._log.critical(
            "listener {name}: cannot listen on {endpoint}: {why}",
            name=self.listener.name,
            endpoint=self.listener.endpoint,
            why=describeListenFailure(f),
        )
        if IReactorCore.providedBy(self.reactor) and self.reactor.running:
            self.reactor.stop()

    def pauseAccepting(self) -> None:
        """
        Accept no connection for now; the kernel keeps queueing them in the
        listen backlog.
        """
        stopReading = getattr(self.port, "stopReading", None)
        if stopReading is not None:
            stopReading()

    def resumeAccepting(self) -> None:
        """
        Accept connections again.
        """
        startReading = getattr(self.port, "startReading", None)
        if startReading is not None and self.port is not None:
            startReading()

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening; connections already accepted are not touched.
        """
        Service.stopService(self)
        port, self.port, self._listening = self.port, None, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)


def describeAddress(address: Any) -> str:
    """
    C{host:port} (C{[v6]:port}) for an IP address, else its string form.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(getattr(address, "name", address))
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def describeListenFailure(f: Failure) -> str:
    """
    One line for why listening failed, without a traceback.
    """
    value = f.value
    socketError = getattr(value, "socketError", None)
    if socketError is not None and getattr(socketError, "strerror", None):
        return socketError.strerror.lower()
    return str(value) or type(value).__name__


def raiseFileLimit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[int, int]:
    """
    Raise the soft open-file limit to the hard limit.

    @return: the (soft, hard) limits now in force.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit for files; stay generous.
        target = max(soft, 1048576)
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


class TxlbService(Lifecycle, MultiService):
    """
    The root of txlb's service tree.

    @ivar config: the L{Config} in force.
    @ivar pools: runtime L{Pool}s by name.
    @ivar health: the L{MultiService} of health checkers, one per pool that
        has a health check.
    @ivar listeners: the L{MultiService} of L{ListenerService}s.
    @ivar retired: protocol factories of listeners removed or replaced by a
        reload, until their last connection is gone.
    @ivar reloader: called for SIGHUP: returns the new L{Config} (the file
        re-read, the command-line flags re-applied) or raises
        L{ConfigError}; C{None} when there is nothing to re-read.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        registry: Mapping[str, IStrategyFactory] | None = None,
        randomSource: random.Random | None = None,
        fileLimit: Callable[[], tuple[int, int]] = raiseFileLimit,
        reloader: Callable[[], Config] | None = None,
        signals: Any = None,
        healthClient: Any = None,
    ) -> None:
        """
        @param signals: the C{signal} module (or a fake of it) to install
            SIGTERM, SIGINT and SIGHUP handlers with once the reactor runs;
            C{None} installs none (tests, embedding).
        @param healthClient: makes the HTTP client of HTTP health checks
            for a backend (see L{PoolHealthChecker}); C{None} for the real
            one.
        """
        MultiService.__init__(self)
        self.setName("txlb")
        self.config = config
        self.reactor = reactor
        self.reloader = reloader
        self._fileLimit = fileLimit
        self._signals = signals
        self._healthClient = healthClient
        self._random = randomSource
        if registry is None:
            registry = strategyRegistry()
        self.registry = registry
        self.pools: dict[str, Pool] = {
            p.name: buildPool(p, reactor, registry, randomSource) for p in config.pools
        }
        self.upstreams: dict[str, Any] = {}
        self.budgets: dict[str, Any] = {}
        self.rateLimits: dict[str, tuple[Any, TokenBucketTable]] = {}
        self.retired: set[Any] = set()
        self.stopping = False
        self._stopRequested = False
        self._drainTimer: Any = None
        self.health = MultiService()
        self.health.setName("health")
        for poolConfig in config.pools:
            self.addHealthChecker(poolConfig)
        self.health.setServiceParent(self)
        self.listeners = MultiService()
        self.listeners.setName("listeners")
        for listener in config.listeners:
            factory = self.buildFactory(listener)
            ListenerService(listener, factory, reactor).setServiceParent(self.listeners)
        self.listeners.setServiceParent(self)
        self.admin = None
        if config.admin is not None:
            from txlb.admin.service import AdminService

            self.admin = AdminService(config.admin, self, reactor)
            self.admin.setServiceParent(self)

    def addHealthChecker(
        self, poolConfig: PoolConfig, pool: Pool | None = None
    ) -> PoolHealthChecker | None:
        """
        Add the health checker of C{poolConfig}'s pool (C{pool}, by default
        the service's pool of that name), when it has a health check.  It
        starts when the health service does, or at once if that runs.
        """
        if poolConfig.healthCheck is None:
            return None
        checker = PoolHealthChecker(
            pool if pool is not None else self.pools[poolConfig.name],
            poolConfig.healthCheck,
            self.reactor,
            httpClientFactory=self._healthClient,
            random=self._random,
        )
        checker.setServiceParent(self.health)
        return checker

    def rateLimiter(self, listener: ListenerConfig) -> TokenBucketTable | None:
        """
        The token buckets of C{listener}'s rate limit (kept across reloads
        while the limit is unchanged), or C{None}.
        """
        limit = listener.rateLimit
        if limit is None:
            self.rateLimits.pop(listener.name, None)
            return None
        kept = self.rateLimits.get(listener.name)
        if kept is not None and kept[0] == limit:
            return kept[1]
        table = TokenBucketTable(
            limit.requestsPerSecond, limit.burst, self.reactor, limit.maxClients
        )
        self.rateLimits[listener.name] = (limit, table)
        return table

    def buildFactory(
        self,
        listener: ListenerConfig,
        config: Config | None = None,
        pools: Mapping[str, Pool] | None = None,
    ) -> Any:
        """
        The protocol factory serving C{listener}.

        @param config: the configuration C{listener} is part of (the one in
            force by default; a reload passes the new one).
        @param pools: the runtime pools by name (the service's by default).
        @raise StartupError: the listener's layer is not available.
        """
        config = config if config is not None else self.config
        pools = pools if pools is not None else self.pools
        pool = pools[listener.pool]
        timeouts = config.pool(listener.pool).timeouts
        if listener.layer == "L4":
            return TCPRelayFactory(
                pool=pool,
                reactor=self.reactor,
                connectTimeout=timeouts.connect,
                idleTimeout=timeouts.idle,
                maxConnections=listener.maxConnections,
                listenerName=listener.name,
                rateLimit=self.rateLimiter(listener),
            )
        return self.buildHTTPFactory(listener, config, pools)

    def upstreamPool(self, poolName: str, config: Config | None = None) -> Any:
        """
        The persistent backend connections of pool C{poolName}, shared by
        every L7 listener that uses it.
        """
        upstream = self.upstreams.get(poolName)
        if upstream is None:
            poolConfig = (config if config is not None else self.config).pool(poolName)
            upstream = UpstreamPool(
                self.reactor,
                connectTimeout=poolConfig.timeouts.connect,
                maxIdlePerBackend=poolConfig.connectionPool.maxIdle,
                idleTimeout=poolConfig.connectionPool.idleTimeout,
            )
            self.upstreams[poolName] = upstream
        return upstream

    def buildHTTPFactory(
        self,
        listener: ListenerConfig,
        config: Config | None = None,
        pools: Mapping[str, Pool] | None = None,
    ) -> Any:
        """
        The L7 proxy factory serving C{listener}.

        @param config: as for L{buildFactory}.
        @param pools: as for L{buildFactory}.
        @raise StartupError: a route or setting cannot be used.
        """
        config = config if config is not None else self.config
        pools = pools if pools is not None else self.pools
        where = f"{config.source}: listener {listener.name}"
        http = listener.http
        try:
            router = Router(listener.routes, listener.pool)
        except ValueError as e:
            raise StartupError(f"{where}: routes: {e}")
        l7pools = {}
        for name in {listener.pool, *(r.pool for r in listener.routes)}:
            poolConfig = config.pool(name)
            budget = self.budgets.get(name)
            if budget is None:
                budget = self.budgets[name] = RetryBudget(
                    poolConfig.retries.budget, poolConfig.retries.minRetries
                )
            try:
                policy = ForwardingPolicy(
                    trustedProxies=[ipaddress.ip_network(n) for n in http.trustedProxies],
                    forwarded=http.forwarded,
                    forwardedBy=http.forwardedBy.encode("utf-8") if http.forwardedBy else None,
                    backendHeader=http.backendHeader,
                    hostRewrite=(
                        poolConfig.hostRewrite.encode("ascii")
                        if poolConfig.hostRewrite else None
                    ),
                )
            except ValueError as e:
                raise StartupError(f"{where}: pool {name}: {e}")
            hashKey = hashKeySpec(poolConfig.hashKey)
            l7pools[name] = L7Pool(
                pool=pools[name],
                upstreams=self.upstreamPool(name, config),
                policy=policy,
                retry=RetryPolicy(
                    attempts=poolConfig.retries.attempts,
                    perTryTimeout=poolConfig.timeouts.response,
                    timeout=poolConfig.retries.timeout,
                ),
                budget=budget,
                hashKey=hashKey,
                stickyCookie=(
                    poolConfig.stickyCookie.encode("ascii")
                    if poolConfig.stickyCookie else None
                ),
            )
        accessLog = None
        if http.accessLog is not None:
            try:
                accessLog = AccessLog(http.accessLog, clock=self.reactor)
            except OSError as e:
                raise StartupError(
                    f"{where}: access_log: cannot open {http.accessLog}: {e.strerror or e}"
                )
        timeouts = config.pool(listener.pool).timeouts
        return HTTPProxyFactory(
            pools=l7pools,
            router=router,
            reactor=self.reactor,
            settings=HTTPSettings(
                maxHeaderSize=http.maxHeaderSize,
                maxTargetLength=http.maxTargetLength,
                maxBodySize=http.maxBodySize,
                headerTimeout=timeouts.header,
                bodyTimeout=timeouts.body,
                idleTimeout=http.keepaliveTimeout,
            ),
            maxConnections=listener.maxConnections,
            listenerName=listener.name,
            accessLog=accessLog,
            rateLimit=self.rateLimiter(listener),
            localStats=self.localStats if http.stats else None,
        )

    def localStats(self, path: bytes) -> Any:
        """
        What an L7 listener with C{stats = true} answers for C{path}
        (C{/lb-health} or C{/lb-stats}), as the admin service does.
        """
        from txlb.admin import views

        if path == b"/lb-health":
            return views.lbHealth(self)
        return views.lbStats(self)

    def privilegedStartService(self) -> None:
        """
        Handle SIGHUP, raise the open-file limit, then bind every listener.
        """
        if self._signals is not None:
            self.installReloadHandler()
        soft, hard = self._fileLimit()
        if soft < LOW_FD_LIMIT:
            self._log.warn(
                "open-file limit is {limit} (hard limit {hard}): each relayed "
                "connection uses two, so at most about {connections} connections; "
                "raise it (ulimit -n, LimitNOFILE=)",
                limit=soft,
                hard=hard,
                connections=soft // 2,
            )
        MultiService.privilegedStartService(self)

    def startService(self) -> None:
        """
        Start health checking and the listeners; with health checks, accept
        connections only once the first round of checks is done.
        """
        MultiService.startService(self)
        rounds = [checker.whenReady() for checker in self.health]
        if rounds:
            for listener in self.listeners:
                listener.pauseAccepting()
            DeferredList(rounds, consumeErrors=True).addCallback(
                lambda _: self._acceptNow()
            )
        if self._signals is not None and IReactorCore.providedBy(self.reactor):
            self.reactor.callWhenRunning(self.installSignalHandlers)

    def _acceptNow(self) -> None:
        if self.stopping:
            return
        for listener in self.listeners:
            listener.resumeAccepting()
