"""
Runtime changes to a running L{txlb.service.TxlbService}, as the admin API
(L{txlb.admin.api}) and C{txlbctl} make them: servers added, re-weighted,
drained, disabled, enabled and removed, and a pool's strategy swapped.

Every function checks all of its input before it changes anything (the
checks, and L{ControlError}, are in L{txlb.admin._inputs}): bad input
raises L{ControlError} (400 naming the field, 404 for an unknown pool or
server, 409 for a duplicate or a conflict) and leaves the service as it was.

A server added here is I{dynamic} (no configuration file names it).  It is
built as a server of the file would be: its endpoint gets the pool's connect
timeout, it gets the pool's slow start, circuit breaker and outlier
detection.  When its pool has a health check it takes no traffic until its
first check passes (checked at once); it ramps up over the pool's
C{slow_start} either way.

Removing a server drains it: it takes no new traffic from that moment, its
idle L7 connections are closed, and it leaves the pool once what it has in
flight has finished or after C{[lifecycle] drain_timeout} seconds, whichever
comes first (what is still in flight then is not cut: it finishes on its
own).

Runtime changes and SIGHUP reloads
==================================

Runtime changes are not written anywhere: a restart runs the configuration
file as it is.  A reload (SIGHUP) applies what changed I{in the file} and
keeps what the API changed where the file did not change:

  - A reload keeps servers added by the API, unless the new file names a
    server of the same name (or the same endpoint) in that pool: the file
    wins.  A file server with the same name and endpoint takes the running
    server over (its counters, health and state are kept, the file's weight
    and C{max_connections} apply) and it stops being dynamic; otherwise the
    dynamic server is drained and the file's is added.
  - A state set by the API (draining, disabled, or active again) survives a
    reload: a reload never changes the state of a server it keeps.
  - A weight set by the API is replaced only when the file's weight for
    that server changed (from the file in force before the reload); the
    same holds for C{max_connections}.
  - A strategy swapped by the API is replaced only when the file's
    C{algorithm} or C{algorithm_options} for that pool changed.
  - A server of the file removed by the API comes back (pending its health
    check) at the next reload if the file still names it: remove it from
    the file too.  A removal in progress finishes, reload or not.
  - A pool removed by a reload takes its dynamic servers with it.

L{keepOnReload} is how L{txlb.reload} keeps the dynamic servers.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txlb._configvalues import defaultServerName
from txlb.admin._inputs import (
    ControlError,
    _canonicalHost,
    _checkEndpoint,
    _checkName,
    checkHost,
    checkInteger,
    checkState,
)
from txlb.config import MAX_WEIGHT, ServerConfig, clientEndpointString
from txlb.plugin import StrategyLookupError, findStrategy
from txlb.pool import AdminState, Backend, Pool

if TYPE_CHECKING:
    from txlb.config import PoolConfig

__all__ = [
    "ControlError",
    "POLL_INTERVAL",
    "addServer",
    "changeServer",
    "checkHost",
    "checkInteger",
    "checkState",
    "dynamicNames",
    "findPool",
    "findServer",
    "findServersAt",
    "isDynamic",
    "isRemoving",
    "keepOnReload",
    "removeServer",
    "setState",
    "setStrategy",
    "setWeight",
]

_log = Logger()

#: Seconds between two looks at a removed server's connections in flight.
POLL_INTERVAL = 0.1

# ------------------------------------------------------------ runtime records


@attrs.define(eq=False)
class _Removal:
    """
    One server being drained, then removed from its pool.
    """

    pool: Pool
    backend: Backend
    runtime: _PoolRuntime
    clock: IReactorTime
    done: bool = False
    _waiters: list[Deferred[Backend]] = attrs.field(factory=list)
    _poll: IDelayedCall | None = None
    _deadline: IDelayedCall | None = None

    def start(self, deadline: float) -> None:
        """
        Remove the server once it has nothing in flight, or after
        C{deadline} seconds.
        """
        self._deadline = self.clock.callLater(deadline, self._finish, "drain timeout")
        self._check()

    def _check(self) -> None:
        self._poll = None
        if self.backend.activeConnections <= 0:
            self._finish("drained")
        else:
            self._poll = self.clock.callLater(POLL_INTERVAL, self._check)

    def _finish(self, why: str) -> None:
        for timer in (self._poll, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._poll = self._deadline = None
        self.done = True
        name = self.backend.name
        if self.runtime.removals.get(name) is self:
            del self.runtime.removals[name]
        if self.pool.backend(name) is self.backend:
            self.pool.removeBackend(name)
        if self.pool.backend(name) is None:
            self.runtime.dynamic.discard(name)
        _log.info(
            "server {server} of pool {pool} removed ({why}, {count} in flight)",
            server=name,
            pool=self.pool.name,
            why=why,
            count=self.backend.activeConnections,
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.backend)

    def whenDone(self) -> Deferred[Backend]:
        """
        A L{Deferred} that fires with the backend once it left the pool.
        Cancelling it does not stop the removal.
        """
        if self.done:
            return succeed(self.backend)
        d: Deferred[Backend] = Deferred()
        self._waiters.append(d)
        return d


@attrs.define(eq=False)
class _PoolRuntime:
    """
    What the API changed in one pool.

    @ivar dynamic: the names of the servers added by the API.
    @ivar removals: the servers being removed, by name.
    """

    dynamic: set[str] = attrs.field(factory=set)
    removals: dict[str, _Removal] = attrs.field(factory=dict)


# Keyed by the pool itself: a pool keeps its identity across reloads, and one
# that a reload removes takes its record with it.
_runtimes: weakref.WeakKeyDictionary[Pool, _PoolRuntime] = weakref.WeakKeyDictionary()


def _runtimeOf(pool: Pool) -> _PoolRuntime:
    runtime = _runtimes.get(pool)
    if runtime is None:
        runtime = _runtimes[pool] = _PoolRuntime()
    return runtime


def dynamicNames(txlb: Any, poolName: str) -> frozenset[str]:
    """
    The names of the servers of pool C{poolName} that were added by the API
    and that no configuration file names (empty for an unknown pool).
    """
    pool = txlb.pools.get(poolName)
    runtime = _runtimes.get(pool) if pool is not None else None
    return frozenset(runtime.dynamic) if runtime is not None else frozenset()


def isDynamic(pool: Pool, name: str) -> bool:
    """
    Whether C{pool}'s server C{name} was added by the API.
    """
    runtime = _runtimes.get(pool)
    return runtime is not None and name in runtime.dynamic


def isRemoving(pool: Pool, name: str) -> bool:
    """
    Whether C{pool}'s server C{name} is draining before it is removed.
    """
    runtime = _runtimes.get(pool)
    return runtime is not None and name in runtime.removals


def keepOnReload(pool: Pool, servers: Iterable[ServerConfig]) -> list[Backend]:
    """
    The servers added by the API that a reload keeps in C{pool} when the
    new file gives the pool C{servers}: those whose name and endpoint the
    file does not name, in pool order.  A server the file now names stops
    being dynamic (the file wins; see this module's docstring).

    Call it before the pool's backends are replaced.
    """
    runtime = _runtimes.get(pool)
    if runtime is None or not runtime.dynamic:
        return []
    names = set()
    endpoints = set()
    for server in servers:
        names.add(server.name)
        endpoints.add(server.endpoint)
    kept = []
    for backend in pool.backends:
        if backend.name not in runtime.dynamic:
            continue
        if backend.name in names or backend.endpoint in endpoints:
            runtime.dynamic.discard(backend.name)
            continue
        kept.append(backend)
    runtime.dynamic.intersection_update(b.name for b in kept)
    return kept


# ------------------------------------------------------------ lookups


def findPool(txlb: Any, poolName: str) -> Pool:
    """
    The running pool called C{poolName}.

    @raise ControlError: 404 when there is none.
    """
    pool = txlb.pools.get(poolName) if isinstance(poolName, str) else None
    if pool is None:
        known = ", ".join(sorted(txlb.pools)) or "none"
        raise ControlError(404, "pool", f"no pool named {poolName!r} (pools: {known})")
    return pool


def findServer(txlb: Any, poolName: str, name: str) -> tuple[Pool, Backend]:
    """
    The pool C{poolName} and its server C{name}.

    @raise ControlError: 404 when either is unknown.
    """
    pool = findPool(txlb, poolName)
    backend = pool.backend(name)
    if backend is None:
        raise ControlError(
            404, "name", f"pool {pool.name} has no server named {name!r}"
        )
    return pool, backend


def findServersAt(txlb: Any, address: str, port: int) -> list[tuple[Pool, Backend]]:
    """
    Every server, in any pool, at C{address} (an IP address compared in
    its canonical form, or a host name) and C{port}.
    """
    wanted = _canonicalHost(address)
    found = []
    for pool in txlb.pools.values():
        for backend in pool.backends:
            if (
                backend.address is not None
                and backend.port == port
                and _canonicalHost(backend.address) == wanted
            ):
                found.append((pool, backend))
    return found


def _poolConfig(txlb: Any, pool: Pool) -> PoolConfig:
    try:
        return txlb.config.pool(pool.name)
    except KeyError:
        raise ControlError(404, "pool", f"pool {pool.name} is being removed") from None


def _checkerOf(txlb: Any, pool: Pool) -> Any:
    for checker in txlb.health:
        if getattr(checker, "pool", None) is pool:
            return checker
    return None


# ------------------------------------------------------------ changes


def addServer(
    txlb: Any,
    poolName: str,
    address: Any = None,
    port: Any = None,
    name: Any = None,
    weight: Any = 1,
    maxConnections: Any = None,
    endpoint: Any = None,
) -> Backend:
    """
    Add a server to pool C{poolName} of the running service C{txlb}.

    Give either C{address} and C{port} or C{endpoint}, as in the
    configuration file.

    @param name: its name in the pool; by default C{address:port}
        (C{[v6]:port}), or the endpoint string.
    @param weight: 1 to L{MAX_WEIGHT}.
    @param maxConnections: at most this many in flight, or C{None}.
    @return: the new L{Backend}, dynamic; pending when the pool has a health
        check (checked at once), else ramping up over its slow start.
    @raise ControlError: 400 for bad input, 404 for an unknown pool, 409
        when the pool has a server of that name or at that endpoint.
    """
    from txlb.service import buildBackend, configureBackend

    pool = findPool(txlb, poolName)
    poolConfig = _poolConfig(txlb, pool)
    if endpoint is not None:
        if address is not None or port is not None:
            raise ControlError(
                400, "endpoint", "give either endpoint or address and port, not both"
            )
        endpoint = _checkEndpoint(endpoint)
        where = "endpoint"
    else:
        if address is None:
            raise ControlError(400, "address", "is required (or give endpoint)")
        address = checkHost("address", address)
        if port is None:
            raise ControlError(400, "port", "is required with address")
        port = checkInteger("port", port, 1, 65535)
        endpoint = clientEndpointString(address, port, poolConfig.timeouts.connect)
        where = "address"
    if name is None:
        name = defaultServerName(address, port, endpoint)
    else:
        name = _checkName(name)
    weight = checkInteger("weight", weight, 1, MAX_WEIGHT)
    if maxConnections is not None:
        maxConnections = checkInteger("max_connections", maxConnections, 1)
    if pool.backend(name) is not None:
        raise ControlError(
            409, "name", f"pool {pool.name} already has a server named {name!r}"
        )
    for other in pool.backends:
        if other.endpoint == endpoint or (
            address is not None
            and other.address is not None
            and other.port == port
            and _canonicalHost(other.address) == _canonicalHost(address)
        ):
            raise ControlError(
                409, where, f"server {other.name} of pool {pool.name} is already there"
            )

    backend = buildBackend(
        ServerConfig(
            name=name,
            address=address,
            port=port,
            endpoint=endpoint,
            weight=weight,
            maxConnections=maxConnections,
        )
    )
    # Its first verdict of healthy is an arrival: ramp up.
    backend.rampOnUp = True
    if poolConfig.healthCheck is not None:
        backend.healthy = False
    configureBackend(backend, pool, poolConfig)
    pool.addBackend(backend)
    _runtimeOf(pool).dynamic.add(name)
    checker = _checkerOf(txlb, pool)
    if checker is not None and checker.running:
        checker.checkNow(backend).addErrback(lambda f: f.trap(CancelledError))
    elif backend.healthy:
        backend.startSlowStart()
    _log.info(
        "server {server} added to pool {pool} by the API ({health})",
        server=name,
        pool=pool.name,
        health="pending its health check" if not backend.healthy else "up",
    )
    return backend


def changeServer(
    txlb: Any, poolName: str, name: str, weight: Any = None, state: Any = None
) -> Backend:
    """
    Set the weight and/or the state of server C{name} of pool C{poolName};
    C{None} leaves either as it is.

    @param weight: 1 to L{MAX_WEIGHT}; the strategy's tables are rebuilt.
    @param state: C{"active"}, C{"draining"} or C{"disabled"}.
    @return: the L{Backend}.
    @raise ControlError: 400 for a bad value, 404 for an unknown pool or
        server, 409 for a new state of a server being removed.
    """
    pool, backend = findServer(txlb, poolName, name)
    newState = checkState(state) if state is not None else None
    if weight is not None:
        weight = checkInteger("weight", weight, 1, MAX_WEIGHT)
    if newState is not None and isRemoving(pool, name):
        raise ControlError(
            409, "state", f"server {name} of pool {pool.name} is being removed"
        )
    if weight is not None and weight != backend.configuredWeight:
        backend.configuredWeight = weight
        # The same backends: hash rings and tables are laid out anew.
        pool.setBackends(pool.backends)
        _log.info(
            "server {server} of pool {pool}: weight {weight} set by the API",
            server=name,
            pool=pool.name,
            weight=weight,
        )
    if newState is not None and newState is not backend.state:
        backend.state = newState
        if newState is AdminState.active:
            pool.availabilityChanged()
        _log.info(
            "server {server} of pool {pool}: {state} by the API",
            server=name,
            pool=pool.name,
            state=newState.value,
        )
    return backend


def setWeight(txlb: Any, poolName: str, name: str, weight: Any) -> Backend:
    """
    Set server C{name}'s configured weight (see L{changeServer}).
    """
    return changeServer(txlb, poolName, name, weight=weight)


def setState(txlb: Any, poolName: str, name: str, state: Any) -> Backend:
    """
    Set server C{name} active, draining or disabled (see L{changeServer}).
    """
    return changeServer(txlb, poolName, name, state=state)


def removeServer(txlb: Any, poolName: str, name: str) -> Deferred[Backend]:
    """
    Drain server C{name} of pool C{poolName}, then remove it.

    From now on it takes no new traffic; its idle L7 connections are
    closed, the outlier detector forgets it and its breaker stops.  It
    leaves the pool once nothing is in flight to it, or after the
    configuration's C{[lifecycle] drain_timeout}.  Removing a server being
    removed already waits for the same removal.

    @return: a L{Deferred} that fires with the L{Backend} once it left the
        pool (cancelling it does not stop the removal).
    @raise ControlError: 404 for an unknown pool or server.
    """
    pool, backend = findServer(txlb, poolName, name)
    runtime = _runtimeOf(pool)
    removal = runtime.removals.get(name)
    if removal is not None and removal.backend is backend:
        return removal.whenDone()
    backend.state = AdminState.draining
    upstream = txlb.upstreams.get(pool.name)
    if upstream is not None:
        upstream.closeIdle(backend)
    detector = pool.outlierDetector
    if detector is not None:
        detector.forget(backend)
    if backend.breaker is not None:
        backend.breaker.stop()
    _log.info(
        "server {server} of pool {pool} draining before removal ({count} in flight)",
        server=name,
        pool=pool.name,
        count=backend.activeConnections,
    )
    removal = _Removal(pool=pool, backend=backend, runtime=runtime, clock=txlb.reactor)
    runtime.removals[name] = removal
    d = removal.whenDone()
    removal.start(txlb.config.lifecycle.drainTimeout)
    return d


def setStrategy(
    txlb: Any, poolName: str, algorithm: Any = None, options: Any = None
) -> Pool:
    """
    Give pool C{poolName} a new strategy; its backends and their counters
    (connections in flight included) are kept.

    @param algorithm: the strategy's name, as in the configuration; by
        default the pool's current one (new options only).
    @param options: its C{algorithm_options}, a mapping; by default none.
    @return: the L{Pool}.
    @raise ControlError: 400 naming C{algorithm} (unknown) or C{options}
        (refused by the strategy), 404 for an unknown pool.
    """
    pool = findPool(txlb, poolName)
    if algorithm is None and options is None:
        raise ControlError(400, "algorithm", "give algorithm and/or options")
    if algorithm is None:
        algorithm = pool.algorithm
    if not isinstance(algorithm, str) or not algorithm:
        raise ControlError(
            400, "algorithm", f"must be a strategy name, got {algorithm!r}"
        )
    try:
        factory = findStrategy(algorithm, txlb.registry)
    except StrategyLookupError as e:
        raise ControlError(400, "algorithm", str(e))
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ControlError(400, "options", f"must be an object, got {options!r}")
    try:
        strategy = factory.build(dict(options))
    except ValueError as e:
        raise ControlError(400, "options", f"{factory.name}: {e}")
    except Exception as e:
        raise ControlError(
            400, "options", f"{factory.name} failed to build: {type(e).__name__}: {e}"
        )
    pool.setStrategy(factory.name, strategy)
    _log.info(
        "pool {pool} uses {algorithm}, set by the API",
        pool=pool.name,
        algorithm=factory.name,
    )
    return pool
