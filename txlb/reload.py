"""
Applying a new configuration to a running L{txlb.service.TxlbService}
(SIGHUP).

A reload happens in two phases:

    1. I{Prepare}, which may fail and then changes nothing: every new or
       changed strategy is built, new pools are built aside, every listener
       that is new or listens somewhere new is bound (and accepts nothing
       yet), and every protocol factory is built.  If anything fails, what
       was bound is closed again and L{StartupError} is raised.
    2. I{Commit}, which cannot fail: pools, servers, health checkers and
       listeners are changed in place.

What a reload keeps and changes:

    - A server is identified by its C{name} within its pool.  A server in
      both configurations keeps its L{Backend}: health state, counters,
      breaker and ejection.  A changed weight or C{max_connections} is
      applied in place; a changed endpoint makes it a new server.
    - A removed server leaves its pool at once (no new traffic) and drains:
      connections and requests in flight finish; its idle pooled L7
      connections are closed.
    - An added server is pending (no traffic) until its first health check
      passes when its pool has a health check, and ramps up over the pool's
      C{slow_start} either way.
    - A pool's strategy is rebuilt when its algorithm or options change;
      backends and their counters stay.  A pool's health checker is
      replaced when its health check changes (the backends' health records
      stay).
    - A listener whose endpoint or layer changes is bound anew before
      anything is committed; the old socket then stops accepting, and its
      connections finish on their own.  A removed listener stops accepting;
      its kept-alive L7 clients are told C{Connection: close} on their next
      response.  A listener otherwise changed keeps its socket and serves
      new requests (L7) or connections (L4) with the new settings.

How changes made through the admin API meet a reload (servers the API
added stay unless the file names them; a state set by the API stays; an
API weight stays until the file's changes) is in L{txlb.admin.control}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, DeferredList
from twisted.logger import Logger

from txlb.config import Config, ListenerConfig, PoolConfig
from txlb.plugin import StrategyLookupError, findStrategy
from txlb.pool import AdminState, Backend, Pool

if TYPE_CHECKING:
    from txlb.service import ListenerService, TxlbService

_log = Logger()


def applyConfig(service: TxlbService, new: Config) -> str:
    """
    Make C{service} run C{new}.

    @return: a one-line summary of what changed.
    @raise StartupError: C{new} cannot be applied; nothing was changed.
    """
    from txlb.service import ListenerService, StartupError, buildPool

    old = service.config
    changes: list[str] = []

    # ---- prepare: strategies and new pools
    strategies: dict[str, tuple[str, Any]] = {}
    pools: dict[str, Pool] = {}
    for poolConfig in new.pools:
        existing = service.pools.get(poolConfig.name)
        if existing is None:
            try:
                pools[poolConfig.name] = buildPool(
                    poolConfig, service.reactor, service.registry, service._random
                )
            except (StrategyLookupError, ValueError) as e:
                raise StartupError(f"{new.source}: pools.{poolConfig.name}: {e}")
            continue
        pools[poolConfig.name] = existing
        before = _oldPool(old, poolConfig.name)
        if before is None or (before.algorithm, before.algorithmOptions) != (
            poolConfig.algorithm,
            poolConfig.algorithmOptions,
        ):
            try:
                factory = findStrategy(poolConfig.algorithm, service.registry)
                strategies[poolConfig.name] = (
                    factory.name,
                    factory.build(poolConfig.options),
                )
            except (StrategyLookupError, ValueError) as e:
                raise StartupError(f"{new.source}: pools.{poolConfig.name}: {e}")

    # ---- prepare: listeners (bind what is new before committing anything).
    # Building factories registers upstream pools, retry budgets and rate
    # limit tables on the service: put them back as they were on failure.
    saved = (dict(service.upstreams), dict(service.budgets), dict(service.rateLimits))
    current = {listener.name: listener for listener in service.listeners}
    bound: list[ListenerService] = []
    factories: dict[str, Any] = {}
    try:
        for listener in new.listeners:
            factories[listener.name] = service.buildFactory(listener, new, pools)
            running = current.get(listener.name)
            if running is not None and not _rebind(running.listener, listener):
                continue
            if running is not None and running.listener.layer == listener.layer:
                # Moved: the same factory (counters, connections, limit)
                # listens at the new place; it takes the new settings at
                # commit.
                factory = running.factory
            else:
                factory = factories[listener.name]
            fresh = ListenerService(listener, factory, service.reactor)
            fresh._listen()
            fresh.pauseAccepting()
            bound.append(fresh)
    except Exception as e:
        for fresh in bound:
            fresh.stopService()
        service.upstreams, service.budgets, service.rateLimits = saved
        if isinstance(e, StartupError):
            raise
        raise StartupError(f"{new.source}: cannot apply: {e}") from e

    # ---- commit: pools
    # Checkers of pools new with this reload: a listener new with it waits
    # for their first round before it accepts, as at startup.
    warming: dict[str, Any] = {}
    for name in set(service.pools) - set(pools):
        _removePool(service, name)
        changes.append(f"pool {name} removed")
    for poolConfig in new.pools:
        pool = pools[poolConfig.name]
        if poolConfig.name not in service.pools:
            service.pools[poolConfig.name] = pool
            checker = service.addHealthChecker(poolConfig, pool)
            if checker is not None:
                warming[poolConfig.name] = checker
            changes.append(f"pool {poolConfig.name} added")
            continue
        changes.extend(
            _updatePool(service, pool, _oldPool(old, poolConfig.name), poolConfig,
                        strategies.get(poolConfig.name))
        )

    # ---- commit: listeners
    newNames = {listener.name for listener in new.listeners}
    for name, running in current.items():
        if name not in newNames:
            _retire(service, running, drain=True)
            changes.append(f"listener {name} removed")
    freshByName = {fresh.listener.name: fresh for fresh in bound}
    for listener in new.listeners:
        factory = factories[listener.name]
        running = current.get(listener.name)
        fresh = freshByName.get(listener.name)
        if fresh is not None:
            if running is None:
                changes.append(f"listener {listener.name} added on {listener.endpoint}")
            elif running.factory is fresh.factory:
                # Moved: the old socket stops accepting; its connections
                # carry on with the same factory.
                running.disownServiceParent()
                running.stopService()
                fresh.factory.reconfigure(factory)
                changes.append(f"listener {listener.name} moved to {listener.endpoint}")
            else:
                _retire(service, running, drain=True)
                changes.append(
                    f"listener {listener.name} is now {listener.layer} on {listener.endpoint}"
                )
            fresh.setServiceParent(service.listeners)
            _acceptWhenWarm(fresh, [
                warming[name] for name in _poolsOf(listener) if name in warming
            ])
            continue
        assert running is not None
        if running.listener != listener:
            changes.append(f"listener {listener.name} changed")
        # Every protocol factory can take new settings in place: never swap
        # the factory a port holds (for TLS or PROXY endpoints that is a
        # wrapper, not txlb's factory).
        running.factory.reconfigure(factory)
        running.listener = listener
    for name in set(service.rateLimits) - newNames:
        del service.rateLimits[name]

    if service.admin is not None and new.admin is not None:
        if not service.admin.reconfigure(new.admin):
            changes.append(
                "admin: a new address or port needs a restart; its settings are "
                "unchanged until then"
            )
    elif (service.admin is None) != (new.admin is None):
        changes.append("adding or removing [admin] needs a restart")
    service.config = new
    return "; ".join(changes) if changes else "no changes"


def _poolsOf(listener: ListenerConfig) -> set[str]:
    """
    @return: the names of the pools C{listener} may send traffic to.
    """
    return {listener.pool, *(route.pool for route in listener.routes)}


def _acceptWhenWarm(fresh: ListenerService, checkers: list[Any]) -> None:
    """
    Let C{fresh}, a listener bound by this reload, accept: at once, or,
    when it uses pools this reload added with health checks (C{checkers}),
    once each has finished its first round, so that its first clients do
    not find every server of those pools still pending.
    """
    if not checkers:
        fresh.resumeAccepting()
        return

    def warm(_: object) -> None:
        if fresh.running and fresh.parent is not None:
            fresh.resumeAccepting()

    DeferredList(
        [checker.whenReady() for checker in checkers], consumeErrors=True
    ).addCallback(warm)


def _oldPool(config: Config, name: str) -> PoolConfig | None:
    try:
        return config.pool(name)
    except KeyError:
        return None


def _rebind(old: ListenerConfig, new: ListenerConfig) -> bool:
    """
    Whether going from C{old} to C{new} needs a new listening socket.
    """
    return old.endpoint != new.endpoint or old.layer != new.layer


def _retire(service: TxlbService, running: ListenerService, drain: bool) -> None:
    """
    Stop C{running} accepting; its connections finish on their own (told
    C{Connection: close} when C{drain}).
    """
    running.disownServiceParent()
    running.stopService()
    factory = running.factory
    if drain:
        stopping = getattr(factory, "stopping", None)
        if stopping is not None:
            factory.stopping = True
    service.retired.add(factory)
    _forgetWhenDrained(service, factory)


def _forgetWhenDrained(service: TxlbService, factory: Any) -> None:
    drained = getattr(factory, "drained", None)
    if drained is None:
        service.retired.discard(factory)
        return
    drained().addCallback(lambda _: service.retired.discard(factory))


def _removePool(service: TxlbService, name: str) -> None:
    pool = service.pools.pop(name)
    for checker in list(service.health):
        if getattr(checker, "pool", None) is pool:
            checker.disownServiceParent()
            checker.stopService()
    _dropBackends(service, pool, list(pool.backends))
    pool.closeQueue("removed by a reload")
    detector = pool.outlierDetector
    if detector is not None:
        detector.stop()
    upstream = service.upstreams.pop(name, None)
    if upstream is not None:
        upstream.closeIdle()
    service.budgets.pop(name, None)


def _dropBackends(service: TxlbService, pool: Pool, backends: list[Backend]) -> None:
    """
    C{backends} leave C{pool}: they drain.
    """
    upstream = service.upstreams.get(pool.name)
    detector = pool.outlierDetector
    for backend in backends:
        backend.state = AdminState.draining
        if upstream is not None:
            upstream.closeIdle(backend)
        if detector is not None:
            detector.forget(backend)
        if backend.breaker is not None:
            backend.breaker.stop()


def _updatePool(
    service: TxlbService,
    pool: Pool,
    before: PoolConfig | None,
    after: PoolConfig,
    strategy: tuple[str, Any] | None,
) -> list[str]:
    """
    Change C{pool} from C{before} to C{after}.

    @return: what changed, for the log.
    """
    from txlb.admin.control import keepOnReload
    from txlb.service import buildBackend, configurePool

    changes = []
    oldServers = {s.name: s for s in (before.servers if before else ())}
    backends = []
    added = []
    removed = []
    for server in after.servers:
        backend = pool.backend(server.name)
        was = oldServers.get(server.name)
        if backend is not None and backend.endpoint == server.endpoint:
            # Kept: a server of the old file, or one the API added that the
            # file now names.  A weight or limit the API set stays unless
            # the file's changed (see txlb.admin.control).
            if was is None or was.weight != server.weight:
                backend.configuredWeight = server.weight
            if was is None or was.maxConnections != server.maxConnections:
                backend.maxConnections = server.maxConnections
            if was is not None and (was.weight, was.maxConnections) != (
                server.weight,
                server.maxConnections,
            ):
                changes.append(f"server {server.name} of pool {pool.name} changed")
            backends.append(backend)
            continue
        if backend is not None:
            removed.append(backend)
        fresh = buildBackend(server)
        fresh.rampOnUp = True
        if after.healthCheck is not None:
            fresh.healthy = False
        backends.append(fresh)
        added.append(fresh)
    # Servers added by the API that the file does not name stay.
    backends.extend(keepOnReload(pool, after.servers))
    keptIds = set(map(id, backends))
    removed.extend(b for b in pool.backends if id(b) not in keptIds and b not in removed)
    pool.setBackends(backends)
    _dropBackends(service, pool, removed)
    for backend in removed:
        changes.append(f"server {backend.name} of pool {pool.name} removed")
    if strategy is not None:
        pool.setStrategy(*strategy)
        changes.append(f"pool {pool.name} uses {strategy[0]}")
    configurePool(pool, after)
    upstream = service.upstreams.get(pool.name)
    if upstream is not None:
        upstream.connectTimeout = after.timeouts.connect
        upstream.maxIdlePerBackend = after.connectionPool.maxIdle
        upstream.idleTimeout = after.connectionPool.idleTimeout
    budget = service.budgets.get(pool.name)
    if budget is not None:
        budget.ratio = after.retries.budget
        budget.minimum = after.retries.minRetries

    checker = None
    for candidate in list(service.health):
        if getattr(candidate, "pool", None) is pool:
            checker = candidate
    before_check = before.healthCheck if before is not None else None
    if before_check != after.healthCheck:
        if checker is not None:
            checker.disownServiceParent()
            checker.stopService()
        checker = service.addHealthChecker(after, pool)
        if after.healthCheck is None:
            # Nothing will check them: every server is taken as healthy.
            for backend in pool.backends:
                backend.setHealthy(True)
        changes.append(f"pool {pool.name} health check changed")
    for backend in added:
        changes.append(f"server {backend.name} of pool {pool.name} added")
        if checker is not None and checker.running:
            checker.checkNow(backend).addErrback(lambda f: f.trap(CancelledError))
        elif backend.healthy:
            backend.startSlowStart()
    return changes
