"""
Reading the tables of a parsed lb.toml into the values of
L{txlb._configvalues}.

A L{_Reader} wraps one TOML table: it tracks the key path for error
messages and which keys were read, so that leftovers are reported as unknown
keys with a "did you mean" hint.  One C{_read*} function per kind of table
builds one value; L{_readSimple} and L{_readFull} read a whole document in
the simple and the full form.  L{txlb.config.parseConfig} drives them.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from typing import Any, Mapping, Sequence

import attrs
from twisted.internet.endpoints import clientFromString, serverFromString

from txlb._configl7 import (
    HTTP_LISTENER_KEYS,
    L7_POOL_KEYS,
    readHTTPListener,
    readL7Pool,
)
from txlb._configprotect import (
    PROTECTION_POOL_KEYS,
    readBreaker,
    readOutlier,
    readProtection,
    readRateLimit,
)
from txlb._configvalues import (
    DEFAULT_ADDRESS,
    DEFAULT_BACKLOG,
    DEFAULT_PORT,
    HEALTH_CHECK_TYPES,
    LAYERS,
    MAX_WEIGHT,
    ConfigError,
    HealthCheckConfig,
    ListenerConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TimeoutsConfig,
    clientEndpointString,
    defaultServerName,
    serverEndpointString,
)
from txlb.interfaces import IStrategyFactory
from txlb.plugin import StrategyLookupError, findStrategy


class _NoReactor:
    """
    Stands in for a reactor while endpoint strings are only parsed.
    """


def _typeName(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Reader:
    """
    Reads one TOML table, tracking the key path for error messages and which
    keys were used, so that leftovers are reported as unknown.
    """

    def __init__(self, source: str, path: str, table: Mapping[str, Any]) -> None:
        self.source = source
        self.path = path
        self.table = table
        self.used: set[str] = set()

    def keyPath(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(
            self.source, self.keyPath(key) if key else self.path, problem
        )

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.table.get(key, default)

    def absent(self, key: str) -> bool:
        """
        Mark C{key} as read; C{True} when the table does not have it.
        """
        self.used.add(key)
        return key not in self.table

    def sub(self, key: str) -> _Reader | None:
        """
        The sub-table C{key}, or C{None} when absent.
        """
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, got {_typeName(value)}")
        return _Reader(self.source, self.keyPath(key), value)

    def tables(self, key: str, label: str | None = None) -> list[_Reader]:
        """
        The array of tables C{key} (empty when absent).
        """
        value = self.raw(key, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, f"must be an array of tables, got {_typeName(value)}")
        label = label or self.keyPath(key)
        readers = []
        for i, item in enumerate(value, 1):
            if not isinstance(item, dict):
                raise ConfigError(
                    self.source, f"{label}[{i}]", f"must be a table, got {_typeName(item)}"
                )
            readers.append(_Reader(self.source, f"{label}[{i}]", item))
        return readers

    def string(self, key: str, default: Any = None, choices: Sequence[str] = ()) -> Any:
        if self.absent(key):
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        if choices:
            for choice in choices:
                if value.lower() == choice.lower():
                    return choice
            raise self.error(
                key, f"must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def integer(
        self, key: str, default: Any = None, low: int | None = None, high: int | None = None
    ) -> Any:
        if self.absent(key):
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                raise self.error(key, f"must be at least {low}, got {value}")
            raise self.error(key, f"must be {low}-{high}, got {value}")
        return value

    def seconds(self, key: str, default: Any = None, allowZero: bool = False) -> Any:
        if self.absent(key):
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number of seconds, got {value!r}")
        if value < 0 or (value == 0 and not allowZero) or not math.isfinite(value):
            raise self.error(key, f"must be a positive number of seconds, got {value!r}")
        return float(value)

    def checkKeys(self, known: Sequence[str]) -> None:
        """
        Fail now on any key not in C{known}, so that a misspelt table is
        named as such rather than reported as missing.
        """
        unknown = {k: v for k, v in self.table.items() if k not in known}
        _Reader(self.source, self.path, unknown).finish(known)

    def finish(self, extra: Sequence[str] = ()) -> None:
        """
        Fail on any key that was not read.
        """
        for key in self.table:
            if key in self.used:
                continue
            known = sorted(self.used | set(extra))
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if hint:
                problem = f"unknown key; did you mean {hint[0]!r}?"
            else:
                problem = f"unknown key; known keys here: {', '.join(known)}"
            raise self.error(key, problem)


# Keys each table accepts, so that "did you mean" can suggest keys that were
# absent from the file (and therefore never read).
_SERVER_KEYS = ("name", "address", "port", "endpoint", "weight", "max_connections")
_TIMEOUT_KEYS = ("connect", "idle", "response", "header", "body")
_HEALTH_KEYS = (
    "type", "interval", "timeout", "rise", "fall", "path", "host",
    "expected_status", "jitter",
)
_LISTENER_KEYS = (
    "address", "port", "endpoint", "layer", "pool", "max_connections", "backlog",
    "routes", "rate_limit", *HTTP_LISTENER_KEYS,
)
_LB_KEYS = (
    "address", "port", "endpoint", "layer", "algorithm", "algorithm_options",
    "max_connections", "backlog", "hash_key", "sticky_cookie", "host_rewrite",
    "slow_start", "max_queue", "queue_timeout", "on_all_down",
    *HTTP_LISTENER_KEYS,
)
_POOL_KEYS = (
    "algorithm", "algorithm_options", "health_check", "timeouts", "servers", *L7_POOL_KEYS,
    *PROTECTION_POOL_KEYS,
)
_ROUTE_KEYS = ("pool", "host", "path_prefix", "headers")
_TOP_KEYS = (
    "load_balancer", "server", "listeners", "pools", "health_check", "timeouts",
    "retries", "connection_pool", "outlier_detection", "circuit_breaker", "rate_limit",
    "lifecycle", "admin",
)


def _readTimeouts(r: _Reader | None, base: TimeoutsConfig) -> TimeoutsConfig:
    if r is None:
        return base
    values = {}
    for key in _TIMEOUT_KEYS:
        if r.has(key):
            value = r.raw(key)
            if value is False and key != "connect":
                values[key] = None
            else:
                values[key] = r.seconds(key)
        else:
            r.raw(key)
    r.finish(_TIMEOUT_KEYS)
    return attrs.evolve(base, **values)


def _readStatusRange(r: _Reader) -> tuple[int, int] | None:
    value = r.raw("expected_status")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and "-" in value:
        lowText, _, highText = value.partition("-")
        try:
            low, high = int(lowText), int(highText)
        except ValueError:
            raise r.error("expected_status", f"must be like \"200-399\", got {value!r}")
    else:
        raise r.error(
            "expected_status", f"must be a status or a range like \"200-399\", got {value!r}"
        )
    if not (100 <= low <= high <= 599):
        raise r.error("expected_status", f"must be within 100-599, got {value!r}")
    return (low, high)


def _readHealthCheck(
    r: _Reader | None, base: HealthCheckConfig | None
) -> HealthCheckConfig | None:
    if r is None:
        return base
    values: dict[str, Any] = {}
    kind = r.string("type", choices=HEALTH_CHECK_TYPES)
    if kind is not None:
        values["type"] = kind
    for key in ("interval", "timeout"):
        value = r.seconds(key)
        if value is not None:
            values[key] = value
    jitter = r.raw("jitter")
    if jitter is not None:
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not (
            0 <= jitter < 1
        ):
            raise r.error("jitter", f"must be a fraction from 0 to below 1, got {jitter!r}")
        values["jitter"] = float(jitter)
    for key in ("rise", "fall"):
        value = r.integer(key, low=1, high=100)
        if value is not None:
            values[key] = value
    path = r.string("path")
    if path is not None:
        if not path.startswith("/"):
            raise r.error("path", f"must start with '/', got {path!r}")
        values["path"] = path
    host = r.string("host")
    if host is not None:
        values["host"] = host
    status = _readStatusRange(r)
    if status is not None:
        values["expectedStatus"] = status
    r.finish(_HEALTH_KEYS)
    result = attrs.evolve(base or HealthCheckConfig(), **values)
    if result.timeout > result.interval:
        raise r.error(
            "timeout",
            f"must not exceed interval ({result.interval:g}), got {result.timeout:g}",
        )
    return result


def _readServer(r: _Reader, connectTimeout: float) -> ServerConfig:
    endpoint = r.string("endpoint")
    address = r.string("address")
    port = r.integer("port", low=1, high=65535)
    if endpoint is not None:
        if address is not None or port is not None:
            raise r.error("endpoint", "give either endpoint or address/port, not both")
        try:
            clientFromString(_NoReactor(), endpoint)
        except Exception as e:
            raise r.error("endpoint", f"not a valid client endpoint string ({e}): {endpoint!r}")
    else:
        if address is None:
            raise r.error(None, "needs address (and port) or endpoint")
        if port is None:
            raise r.error("port", "is required with address")
        if ":" in address:
            try:
                ipaddress.IPv6Address(address)
            except ValueError:
                raise r.error(
                    "address",
                    f"must be a host name or an IP address, without a port, got {address!r}",
                )
        endpoint = clientEndpointString(address, port, connectTimeout)
    name = r.string("name")
    if name is None:
        name = defaultServerName(address, port, endpoint)
    weight = r.integer("weight", 1, low=1, high=MAX_WEIGHT)
    maxConnections = r.integer("max_connections", low=1)
    r.finish(_SERVER_KEYS)
    return ServerConfig(
        name=name,
        address=address,
        port=port,
        endpoint=endpoint,
        weight=weight,
        maxConnections=maxConnections,
    )


def _readServers(
    readers: list[_Reader], source: str, path: str, connectTimeout: float
) -> tuple[ServerConfig, ...]:
    servers = []
    seen: dict[str, str] = {}
    for r in readers:
        server = _readServer(r, connectTimeout)
        for key in (f"name {server.name!r}", f"endpoint {server.endpoint!r}"):
            if key in seen:
                raise ConfigError(
                    source, r.path, f"duplicate server: same {key} as {seen[key]}"
                )
            seen[key] = r.path
        servers.append(server)
    if not servers:
        raise ConfigError(source, path, "a pool needs at least one server")
    return tuple(servers)


def _readAlgorithm(
    r: _Reader,
    registry: Mapping[str, IStrategyFactory],
    default: str = "round_robin",
) -> tuple[str, tuple[tuple[str, Any], ...]]:
    name = r.string("algorithm", default)
    try:
        factory = findStrategy(name, registry)
    except StrategyLookupError as e:
        raise r.error("algorithm", str(e))
    opts = r.sub("algorithm_options")
    options = dict(opts.table) if opts is not None else {}
    try:
        factory.build(dict(options))
    except ValueError as e:
        raise r.error("algorithm_options", f"{factory.name}: {e}")
    except Exception as e:
        raise r.error(
            "algorithm_options", f"{factory.name} failed to build: {type(e).__name__}: {e}"
        )
    return factory.name, tuple(sorted(options.items()))


def _checkSystemdEndpoint(endpoint: str) -> None:
    """
    Check a C{systemd:} server endpoint string without adopting its socket.

    Twisted's parser looks the descriptor up among those this process
    inherited, which exist only under socket activation, not under
    C{txlb check}; the listener looks it up when it starts.

    @raise ValueError: the string is malformed.
    """
    fields: dict[str, str] = {}
    for i, part in enumerate(endpoint.split(":")[1:]):
        key, sep, value = part.partition("=")
        if not sep and i == 0:
            key, value = "domain", part
        elif key not in ("domain", "index", "name"):
            raise ValueError(f"unexpected argument {part!r}")
        fields[key] = value
    if fields.get("domain") not in ("INET", "INET6", "UNIX"):
        raise ValueError("domain must be INET, INET6 or UNIX")
    if ("index" in fields) == ("name" in fields):
        raise ValueError("give exactly one of index or name")
    if "index" in fields and not fields["index"].isdigit():
        raise ValueError(f"index must be a number, got {fields['index']!r}")


def _readListenEndpoint(r: _Reader, defaultPort: int | None) -> str:
    endpoint = r.string("endpoint")
    backlog = r.integer("backlog", DEFAULT_BACKLOG, low=1, high=65535)
    if endpoint is not None:
        if r.has("address") or r.has("port"):
            raise r.error("endpoint", "give either endpoint or address/port, not both")
        if r.has("backlog"):
            raise r.error(
                "backlog",
                "goes in the endpoint string (e.g. tcp:8080:backlog=50) when endpoint is given",
            )
        try:
            if endpoint.split(":", 1)[0].lower() == "systemd":
                _checkSystemdEndpoint(endpoint)
            else:
                serverFromString(_NoReactor(), endpoint)
        except Exception as e:
            raise r.error("endpoint", f"not a valid server endpoint string ({e}): {endpoint!r}")
        return endpoint
    address = r.string("address", DEFAULT_ADDRESS)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise r.error("address", f"must be an IP address to listen on, got {address!r}")
    port = r.integer("port", defaultPort, low=0, high=65535)
    if port is None:
        raise r.error("port", "is required (or give endpoint)")
    return serverEndpointString(address, port, backlog)


def _readRoutes(r: _Reader, layer: str) -> tuple[RouteConfig, ...]:
    routes = []
    for rr in r.tables("routes"):
        if layer != "L7":
            raise rr.error(None, "routes need layer = \"L7\"")
        pool = rr.string("pool")
        if pool is None:
            raise rr.error("pool", "is required")
        host = rr.string("host")
        prefix = rr.string("path_prefix")
        if prefix is not None and not prefix.startswith("/"):
            raise rr.error("path_prefix", f"must start with '/', got {prefix!r}")
        headers = rr.sub("headers")
        pairs: list[tuple[str, str]] = []
        if headers is not None:
            for hname, hvalue in headers.table.items():
                headers.raw(hname)
                if not isinstance(hvalue, str):
                    raise headers.error(hname, f"must be a string, got {hvalue!r}")
                pairs.append((hname.lower(), hvalue))
        rr.finish(_ROUTE_KEYS)
        routes.append(
            RouteConfig(pool=pool, host=host, pathPrefix=prefix, headers=tuple(pairs))
        )
    return tuple(routes)


def _readSimple(
    top: _Reader, registry: Mapping[str, IStrategyFactory]
) -> tuple[tuple[ListenerConfig, ...], tuple[PoolConfig, ...]]:
    lb = top.sub("load_balancer") or _Reader(top.source, "load_balancer", {})
    timeouts = _readTimeouts(top.sub("timeouts"), TimeoutsConfig())
    health = _readHealthCheck(top.sub("health_check"), None)
    endpoint = _readListenEndpoint(lb, DEFAULT_PORT)
    layer = lb.string("layer", "L4", choices=LAYERS)
    maxConnections = lb.integer("max_connections", low=1)
    algorithm, options = _readAlgorithm(lb, registry)
    http = readHTTPListener(lb, layer)
    l7 = readL7Pool(lb, top.sub("retries"), top.sub("connection_pool"))
    protection = readProtection(
        lb, top.sub("outlier_detection"), top.sub("circuit_breaker")
    )
    rateLimit = readRateLimit(top.sub("rate_limit"), None)
    lb.finish(_LB_KEYS)
    servers = _readServers(
        top.tables("server", "server"), top.source, "server", timeouts.connect
    )
    pool = PoolConfig(
        name="default",
        algorithm=algorithm,
        algorithmOptions=options,
        servers=servers,
        healthCheck=health,
        timeouts=timeouts,
        **l7,
        **protection,
    )
    listener = ListenerConfig(
        name="default",
        endpoint=endpoint,
        layer=layer,
        pool="default",
        maxConnections=maxConnections,
        http=http,
        rateLimit=rateLimit,
    )
    return (listener,), (pool,)


def _readFull(
    top: _Reader, registry: Mapping[str, IStrategyFactory]
) -> tuple[tuple[ListenerConfig, ...], tuple[PoolConfig, ...]]:
    baseTimeouts = _readTimeouts(top.sub("timeouts"), TimeoutsConfig())
    baseHealth = _readHealthCheck(top.sub("health_check"), None)
    baseL7 = readL7Pool(
        _Reader(top.source, "", {}), top.sub("retries"), top.sub("connection_pool")
    )
    baseProtection = {
        "outlier": readOutlier(top.sub("outlier_detection"), None),
        "breaker": readBreaker(top.sub("circuit_breaker"), None),
    }
    baseRateLimit = readRateLimit(top.sub("rate_limit"), None)
    poolsTable = top.sub("pools")
    if poolsTable is None or not poolsTable.table:
        raise top.error("pools", "at least one [pools.NAME] table is required")
    pools = []
    for name in poolsTable.table:
        p = poolsTable.sub(name)
        assert p is not None
        p.checkKeys(_POOL_KEYS)
        timeouts = _readTimeouts(p.sub("timeouts"), baseTimeouts)
        health = _readHealthCheck(p.sub("health_check"), baseHealth)
        algorithm, options = _readAlgorithm(p, registry)
        servers = _readServers(p.tables("servers"), top.source, p.path + ".servers",
                               timeouts.connect)
        l7 = readL7Pool(p, p.sub("retries"), p.sub("connection_pool"), baseL7)
        protection = readProtection(
            p, p.sub("outlier_detection"), p.sub("circuit_breaker"), baseProtection
        )
        p.finish(_POOL_KEYS)
        pools.append(
            PoolConfig(
                name=name,
                algorithm=algorithm,
                algorithmOptions=options,
                servers=servers,
                healthCheck=health,
                timeouts=timeouts,
                **l7,
                **protection,
            )
        )
    poolNames = [p.name for p in pools]
    listenersTable = top.sub("listeners")
    if listenersTable is None or not listenersTable.table:
        raise top.error("listeners", "at least one [listeners.NAME] table is required")
    listeners = []
    endpoints: dict[str, str] = {}
    for name in listenersTable.table:
        lr = listenersTable.sub(name)
        assert lr is not None
        endpoint = _readListenEndpoint(lr, None)
        layer = lr.string("layer", "L4", choices=LAYERS)
        pool = lr.string("pool")
        if pool is None:
            if len(poolNames) != 1:
                raise lr.error("pool", f"is required; pools: {', '.join(poolNames)}")
            pool = poolNames[0]
        maxConnections = lr.integer("max_connections", low=1)
        routes = _readRoutes(lr, layer)
        http = readHTTPListener(lr, layer)
        rateLimit = readRateLimit(lr.sub("rate_limit"), baseRateLimit)
        lr.finish(_LISTENER_KEYS)
        for where, target in [("pool", pool)] + [
            (f"routes[{i}].pool", route.pool) for i, route in enumerate(routes, 1)
        ]:
            if target not in poolNames:
                raise lr.error(
                    where, f"no pool named {target!r}; pools: {', '.join(poolNames)}"
                )
        # The backlog does not make a listener listen anywhere else.
        where = re.sub(r":backlog=[^:]*", "", endpoint)
        if where in endpoints and not where.split(":")[1].startswith("port=0"):
            raise lr.error(
                "endpoint" if lr.has("endpoint") else "port",
                f"listens where listener {endpoints[where]!r} does: {endpoint}",
            )
        endpoints[where] = name
        listeners.append(
            ListenerConfig(
                name=name,
                endpoint=endpoint,
                layer=layer,
                pool=pool,
                maxConnections=maxConnections,
                routes=routes,
                http=http,
                rateLimit=rateLimit,
            )
        )
    return tuple(listeners), tuple(pools)
