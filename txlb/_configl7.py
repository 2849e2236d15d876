"""
Reading the L7 keys of lb.toml: a listener's HTTP settings and a pool's
affinity, retry and connection-pool settings.

Each reader takes the table the keys live in (C{[listeners.NAME]} or, in the
simple form, C{[load_balancer]}; C{[pools.NAME]} or C{[load_balancer]}) and
marks what it read, so that unknown keys are still reported by the caller.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

import attrs

from txlb._configvalues import ConnectionPoolConfig, HTTPConfig, RetriesConfig

if TYPE_CHECKING:
    from txlb._configread import _Reader

HTTP_LISTENER_KEYS = (
    "max_header_size", "max_target_length", "max_body_size", "keepalive_timeout",
    "trusted_proxies", "forwarded", "forwarded_by", "backend_header", "access_log",
    "stats",
)
L7_POOL_KEYS = ("hash_key", "sticky_cookie", "host_rewrite", "retries", "connection_pool")
RETRIES_KEYS = ("attempts", "budget", "min_retries", "timeout")
CONNECTION_POOL_KEYS = ("max_idle", "idle_timeout")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def _boolean(r: _Reader, key: str, default: bool) -> bool:
    if r.absent(key):
        return default
    value = r.table[key]
    if not isinstance(value, bool):
        raise r.error(key, f"must be true or false, got {value!r}")
    return value


def readHTTPListener(r: _Reader, layer: str) -> HTTPConfig:
    """
    The HTTP settings in listener table C{r}.

    @raise ConfigError: a value is bad, or L7 keys are on an L4 listener.
    """
    if layer != "L7":
        for key in HTTP_LISTENER_KEYS:
            if r.has(key):
                raise r.error(key, 'is an HTTP setting: it needs layer = "L7"')
        return HTTPConfig()
    values: dict[str, Any] = {}
    for key, attr, low, high in (
        ("max_header_size", "maxHeaderSize", 1024, 1 << 20),
        ("max_target_length", "maxTargetLength", 64, 1 << 20),
        ("max_body_size", "maxBodySize", 0, None),
    ):
        value = r.integer(key, low=low, high=high)
        if value is not None:
            values[attr] = value
    if r.has("keepalive_timeout") and r.table["keepalive_timeout"] is False:
        r.raw("keepalive_timeout")
        values["keepaliveTimeout"] = None
    else:
        timeout = r.seconds("keepalive_timeout")
        if timeout is not None:
            values["keepaliveTimeout"] = timeout
    proxies = r.raw("trusted_proxies")
    if proxies is not None:
        if not isinstance(proxies, list):
            raise r.error("trusted_proxies", f"must be an array of CIDR strings, got {proxies!r}")
        checked = []
        for i, item in enumerate(proxies, 1):
            try:
                checked.append(str(ipaddress.ip_network(item, strict=False)))
            except (TypeError, ValueError):
                raise r.error(
                    f"trusted_proxies[{i}]", f"must be an address or CIDR network, got {item!r}"
                )
        values["trustedProxies"] = tuple(checked)
    values["forwarded"] = _boolean(r, "forwarded", False)
    values["backendHeader"] = _boolean(r, "backend_header", False)
    values["stats"] = _boolean(r, "stats", False)
    forwardedBy = r.string("forwarded_by")
    if forwardedBy is not None:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in forwardedBy) or (
            forwardedBy != forwardedBy.strip()
        ):
            raise r.error("forwarded_by", f"must be a plain header value, got {forwardedBy!r}")
        values["forwardedBy"] = forwardedBy
    accessLog = r.string("access_log")
    if accessLog is not None:
        values["accessLog"] = accessLog
    return HTTPConfig(**values)


def readL7Pool(r: _Reader, retries: _Reader | None, connectionPool: _Reader | None,
               base: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    The L7 fields of a pool, as keyword arguments for L{PoolConfig}.

    @param r: the table holding C{hash_key}, C{sticky_cookie},
        C{host_rewrite}.
    @param retries: the C{retries} table, if any.
    @param connectionPool: the C{connection_pool} table, if any.
    """
    values: dict[str, Any] = dict(base or {})
    hashKey = r.string("hash_key")
    if hashKey is not None:
        kind, sep, name = hashKey.partition(":")
        if kind in ("client_ip", "path") and not sep:
            pass
        elif kind in ("header", "cookie") and sep and _TOKEN.match(name):
            pass
        else:
            raise r.error(
                "hash_key",
                'must be "client_ip", "path", "header:NAME" or "cookie:NAME", '
                f"got {hashKey!r}",
            )
        values["hashKey"] = hashKey
    cookie = r.string("sticky_cookie")
    if cookie is not None:
        if not _TOKEN.match(cookie):
            raise r.error("sticky_cookie", f"must be a cookie name (a token), got {cookie!r}")
        values["stickyCookie"] = cookie
    host = r.string("host_rewrite")
    if host is not None:
        if not _HOST.match(host):
            raise r.error("host_rewrite", f"must be a host[:port], got {host!r}")
        values["hostRewrite"] = host
    if retries is not None:
        current = values.get("retries", RetriesConfig())
        fields: dict[str, Any] = {}
        attempts = retries.integer("attempts", low=1, high=10)
        if attempts is not None:
            fields["attempts"] = attempts
        if not retries.absent("budget"):
            budget = retries.table["budget"]
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (
                0 <= budget <= 1
            ):
                raise retries.error("budget", f"must be a fraction from 0 to 1, got {budget!r}")
            fields["budget"] = float(budget)
        minimum = retries.integer("min_retries", low=0, high=100000)
        if minimum is not None:
            fields["minRetries"] = minimum
        timeout = retries.seconds("timeout")
        if timeout is not None:
            fields["timeout"] = timeout
        retries.finish(RETRIES_KEYS)
        values["retries"] = RetriesConfig(**{**_fields(current), **fields})
    if connectionPool is not None:
        current = values.get("connectionPool", ConnectionPoolConfig())
        fields = {}
        maxIdle = connectionPool.integer("max_idle", low=0, high=100000)
        if maxIdle is not None:
            fields["maxIdle"] = maxIdle
        idle = connectionPool.seconds("idle_timeout")
        if idle is not None:
            fields["idleTimeout"] = idle
        connectionPool.finish(CONNECTION_POOL_KEYS)
        values["connectionPool"] = ConnectionPoolConfig(**{**_fields(current), **fields})
    return values


def _fields(value: Any) -> dict[str, Any]:
    return attrs.asdict(value, recurse=False)
