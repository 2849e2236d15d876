"""
Build the service tree from a L{txlb.config.Config}.

The tree is a L{TxlbService} (a L{MultiService}) with named children that start
in order and stop in reverse::

    txlb
      demo        the built-in demo backends (only with --demo)
      listeners   one L{ListenerService} per configured listener

Pools are runtime objects (L{txlb.pool.Pool}) shared by the listeners, held by
the L{TxlbService}.
"""

from __future__ import annotations

import ipaddress
import random
import resource
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from txlb.accesslog import AccessLog
from txlb.config import Config, ListenerConfig, PoolConfig
from txlb.interfaces import IStrategyFactory
from txlb.limits import RetryBudget
from txlb.plugin import findStrategy, strategyRegistry
from txlb.pool import Backend, Pool
from txlb.protocols.headers import ForwardingPolicy
from txlb.protocols.http import HTTPProxyFactory, HTTPSettings, L7Pool, RetryPolicy
from txlb.protocols.tcp import TCPRelayFactory
from txlb.protocols.upstream import UpstreamPool
from txlb.routing import Router

# Below this many open files, warn: each relayed connection needs two.
LOW_FD_LIMIT = 16384


class StartupError(Exception):
    """
    txlb cannot start; the message is one line meant for the operator.
    """


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
    A runtime L{Pool} for C{poolConfig}, its strategy built by its plugin.
    """
    factory = findStrategy(poolConfig.algorithm, registry)
    return Pool(
        name=poolConfig.name,
        algorithm=factory.name,
        strategy=factory.build(poolConfig.options),
        clock=reactor,
        random=randomSource if randomSource is not None else random.Random(),
        backends=[buildBackend(s) for s in poolConfig.servers],
    )


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
        self._listen()

    def startService(self) -> None:
        """
        Start, binding first if L{privilegedStartService} was not called.
        """
        Service.startService(self)
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        endpoint = serverFromString(self.reactor, self.listener.endpoint)
        outcome: list[Any] = []
        d = endpoint.listen(self.factory)
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


class TxlbService(MultiService):
    """
    The root of txlb's service tree.

    @ivar config: the L{Config} in force.
    @ivar pools: runtime L{Pool}s by name.
    @ivar listeners: the L{MultiService} of L{ListenerService}s.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        registry: Mapping[str, IStrategyFactory] | None = None,
        randomSource: random.Random | None = None,
        fileLimit: Callable[[], tuple[int, int]] = raiseFileLimit,
    ) -> None:
        MultiService.__init__(self)
        self.setName("txlb")
        self.config = config
        self.reactor = reactor
        self._fileLimit = fileLimit
        if registry is None:
            registry = strategyRegistry()
        self.pools: dict[str, Pool] = {
            p.name: buildPool(p, reactor, registry, randomSource) for p in config.pools
        }
        self.upstreams: dict[str, Any] = {}
        self.budgets: dict[str, Any] = {}
        self.listeners = MultiService()
        self.listeners.setName("listeners")
        for listener in config.listeners:
            factory = self.buildFactory(listener)
            ListenerService(listener, factory, reactor).setServiceParent(self.listeners)
        self.listeners.setServiceParent(self)

    def buildFactory(self, listener: ListenerConfig) -> Any:
        """
        The protocol factory serving C{listener}.

        @raise StartupError: the listener's layer is not available.
        """
        pool = self.pools[listener.pool]
        timeouts = self.config.pool(listener.pool).timeouts
        if listener.layer == "L4":
            return TCPRelayFactory(
                pool=pool,
                reactor=self.reactor,
                connectTimeout=timeouts.connect,
                idleTimeout=timeouts.idle,
                maxConnections=listener.maxConnections,
                listenerName=listener.name,
            )
        return self.buildHTTPFactory(listener)

    def upstreamPool(self, poolName: str) -> Any:
        """
        The persistent backend connections of pool C{poolName}, shared by
        every L7 listener that uses it.
        """
        upstream = self.upstreams.get(poolName)
        if upstream is None:
            poolConfig = self.config.pool(poolName)
            upstream = UpstreamPool(
                self.reactor,
                connectTimeout=poolConfig.timeouts.connect,
                maxIdlePerBackend=poolConfig.connectionPool.maxIdle,
                idleTimeout=poolConfig.connectionPool.idleTimeout,
            )
            self.upstreams[poolName] = upstream
        return upstream

    def buildHTTPFactory(self, listener: ListenerConfig) -> Any:
        """
        The L7 proxy factory serving C{listener}.

        @raise StartupError: a route or setting cannot be used.
        """

        where = f"{self.config.source}: listener {listener.name}"
        http = listener.http
        try:
            router = Router(listener.routes, listener.pool)
        except ValueError as e:
            raise StartupError(f"{where}: routes: {e}")
        l7pools = {}
        for name in {listener.pool, *(r.pool for r in listener.routes)}:
            poolConfig = self.config.pool(name)
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
                pool=self.pools[name],
                upstreams=self.upstreamPool(name),
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
                accessLog = AccessLog(http.accessLog)
            except OSError as e:
                raise StartupError(
                    f"{where}: access_log: cannot open {http.accessLog}: {e.strerror or e}"
                )
        timeouts = self.config.pool(listener.pool).timeouts
        return HTTPProxyFactory(
            pools=l7pools,
            router=router,
            reactor=self.reactor,
            settings=HTTPSettings(
                maxHeaderSize=http.maxHeaderSize,
                maxTargetLength=http.maxTargetLength,
                maxBodySize=http.maxBodySize,
                headerTimeout=timeouts.header,
                idleTimeout=http.keepaliveTimeout,
            ),
            maxConnections=listener.maxConnections,
            listenerName=listener.name,
            accessLog=accessLog,
        )

    def privilegedStartService(self) -> None:
        """
        Raise the open-file limit, then bind every listener.
        """
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
