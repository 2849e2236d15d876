"""
lb.toml -> frozen attrs values.

Two forms are accepted.  The simple form (C{[load_balancer]} and
C{[[server]]}) is shorthand for one listener and one pool, both named
C{default}.  The full form names listeners (C{[listeners.NAME]}) and pools
(C{[pools.NAME]}).  Both end up as one L{Config}.

Every problem raises L{ConfigError} whose message names the file, the key path
and the bad value, e.g. C{lb.toml: server[2].port: must be 1-65535, got 70000}.
Unknown keys are errors with a "did you mean" hint.

The values are defined in L{txlb._configvalues} and the tables are read by
L{txlb._configread}; import every public name from here.
"""

from __future__ import annotations

import tomllib
from typing import Any, Callable, Mapping

import attrs

from txlb._configadmin import readAdmin
from txlb._configprotect import readLifecycle
from txlb._configread import _TOP_KEYS, _Reader, _readFull, _readSimple
from txlb._configvalues import (
    DEFAULT_ADDRESS,
    DEFAULT_BACKLOG,
    DEFAULT_PORT,
    HEALTH_CHECK_TYPES,
    LAYERS,
    MAX_WEIGHT,
    AdminConfig,
    BreakerConfig,
    Config,
    ConfigError,
    HealthCheckConfig,
    LifecycleConfig,
    ListenerConfig,
    OutlierConfig,
    PoolConfig,
    RateLimitConfig,
    RouteConfig,
    ServerConfig,
    TimeoutsConfig,
    clientEndpointString,
    serverEndpointString,
)
from txlb.interfaces import IStrategyFactory
from txlb.plugin import StrategyLookupError, strategyRegistry

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_BACKLOG",
    "DEFAULT_PORT",
    "HEALTH_CHECK_TYPES",
    "LAYERS",
    "MAX_WEIGHT",
    "AdminConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "HealthCheckConfig",
    "LifecycleConfig",
    "ListenerConfig",
    "OutlierConfig",
    "Overrides",
    "PoolConfig",
    "RateLimitConfig",
    "RouteConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "clientEndpointString",
    "loadConfig",
    "parseBackends",
    "parseConfig",
    "serverEndpointString",
]


@attrs.frozen
class Overrides:
    """
    Command-line flags that override the file.

    @ivar backends: C{(host, port)} pairs replacing the default pool's servers.
    """

    port: int | None = None
    backends: tuple[tuple[str, int], ...] | None = None
    algorithm: str | None = None
    layer: str | None = None
    healthCheckInterval: float | None = None

    def any(self) -> bool:
        """
        C{True} when at least one flag was given.
        """
        return any(v is not None for v in attrs.astuple(self, recurse=False))


def _overrideInterval(table: Any, interval: float) -> None:
    """
    Set a health-check table's interval, shortening its timeout to fit.
    """
    if not isinstance(table, dict):
        return
    table["interval"] = interval
    timeout = table.get("timeout", attrs.fields(HealthCheckConfig).timeout.default)
    if isinstance(timeout, (int, float)) and timeout > interval:
        table["timeout"] = interval


def _applyOverridesSimple(doc: dict[str, Any], o: Overrides) -> None:
    lb = doc.setdefault("load_balancer", {})
    if not isinstance(lb, dict):
        return
    if o.port is not None:
        lb.pop("endpoint", None)
        lb["port"] = o.port
    if o.algorithm is not None:
        lb["algorithm"] = o.algorithm
        lb.pop("algorithm_options", None)
    if o.layer is not None:
        lb["layer"] = o.layer
    if o.backends is not None:
        doc["server"] = [{"address": h, "port": p} for h, p in o.backends]
    if o.healthCheckInterval is not None:
        _overrideInterval(doc.setdefault("health_check", {}), o.healthCheckInterval)


def _applyOverridesFull(doc: dict[str, Any], o: Overrides, source: str) -> None:
    listeners = doc.get("listeners")
    if not isinstance(listeners, dict) or len(listeners) != 1:
        flags = [
            flag
            for flag, value in (
                ("--port", o.port),
                ("--backends", o.backends),
                ("--algorithm", o.algorithm),
                ("--layer", o.layer),
            )
            if value is not None
        ]
        if flags:
            raise ConfigError(
                source,
                "listeners",
                f"{', '.join(flags)} {'need' if len(flags) > 1 else 'needs'} exactly one listener in the file to apply to",
            )
    if isinstance(listeners, dict) and len(listeners) == 1:
        (listener,) = listeners.values()
        if isinstance(listener, dict):
            if o.port is not None:
                listener.pop("endpoint", None)
                listener["port"] = o.port
            if o.layer is not None:
                listener["layer"] = o.layer
            poolName = listener.get("pool")
            pools = doc.get("pools")
            if poolName is None and isinstance(pools, dict) and len(pools) == 1:
                (poolName,) = pools
            if isinstance(pools, dict) and isinstance(pools.get(poolName), dict):
                pool = pools[poolName]
                if o.algorithm is not None:
                    pool["algorithm"] = o.algorithm
                    pool.pop("algorithm_options", None)
                if o.backends is not None:
                    pool["servers"] = [{"address": h, "port": p} for h, p in o.backends]
    if o.healthCheckInterval is not None:
        _overrideInterval(doc.setdefault("health_check", {}), o.healthCheckInterval)
        pools = doc.get("pools")
        if isinstance(pools, dict):
            for pool in pools.values():
                if isinstance(pool, dict) and "health_check" in pool:
                    _overrideInterval(pool["health_check"], o.healthCheckInterval)


def parseConfig(
    document: Mapping[str, Any],
    source: str,
    overrides: Overrides = Overrides(),
    registry: Mapping[str, IStrategyFactory] | None = None,
) -> Config:
    """
    Validate a parsed TOML document.

    @param document: the TOML document as a mapping (it is not modified).
    @param source: names the file in error messages.
    @param overrides: command-line flags applied on top of the document.
    @param registry: strategies by normalized name; the installed ones by
        default.
    @raise ConfigError: anything is wrong.
    """
    doc = _deepCopy(document)
    if registry is None:
        try:
            registry = strategyRegistry()
        except StrategyLookupError as e:
            raise ConfigError(source, "", str(e))
    simple = "load_balancer" in doc or "server" in doc
    full = "listeners" in doc or "pools" in doc
    if simple and full:
        raise ConfigError(
            source,
            "",
            "mixes the simple form ([load_balancer], [[server]]) with the full form "
            "([listeners.*], [pools.*]); use one",
        )
    if full:
        _applyOverridesFull(doc, overrides, source)
    else:
        _applyOverridesSimple(doc, overrides)
    top = _Reader(source, "", doc)
    top.checkKeys(_TOP_KEYS)
    if full:
        listeners, pools = _readFull(top, registry)
    else:
        listeners, pools = _readSimple(top, registry)
    lifecycle = readLifecycle(top.sub("lifecycle"))
    admin = readAdmin(top.sub("admin"))
    top.finish(_TOP_KEYS)
    return Config(
        source=source, listeners=listeners, pools=pools, lifecycle=lifecycle, admin=admin
    )


def _deepCopy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deepCopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepCopy(v) for v in value]
    return value


def loadConfig(
    path: str | None,
    overrides: Overrides = Overrides(),
    registry: Mapping[str, IStrategyFactory] | None = None,
    readFile: Callable[[str], bytes] | None = None,
) -> Config:
    """
    Read, parse and validate C{path} (or only the overrides when C{None}).

    @raise ConfigError: the file cannot be read, is not TOML, or is invalid.
    """
    if path is None:
        if overrides.backends is None:
            raise ConfigError(
                "<command line>", "", "give --config FILE, --backends HOST:PORT,... or --demo"
            )
        return parseConfig({}, "<command line>", overrides, registry)
    try:
        if readFile is None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = readFile(path)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror or e}")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 text: {e}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}")
    return parseConfig(document, path, overrides, registry)


def parseBackends(value: str, what: str = "--backends") -> tuple[tuple[str, int], ...]:
    """
    Parse C{host:port,host:port} (IPv6 as C{[::1]:80}).

    @raise ValueError: with a message naming the bad entry.
    """
    result = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, portText = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{what}: expected HOST:PORT, got {item!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(portText)
        except ValueError:
            raise ValueError(f"{what}: port must be a number, got {item!r}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"{what}: port must be 1-65535, got {item!r}")
        result.append((host, port))
    if not result:
        raise ValueError(f"{what}: give at least one HOST:PORT")
    return tuple(result)
