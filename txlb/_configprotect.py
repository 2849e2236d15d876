"""
Reading the keys of lb.toml that protect backends and txlb itself: slow
start, queueing, panic, outlier detection, circuit breakers, rate limits and
the drain deadline.

Like L{txlb._configl7}, each reader takes the table its keys live in and
marks what it read; the caller reports what is left as unknown.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from txlb._configvalues import (
    BreakerConfig,
    LifecycleConfig,
    OutlierConfig,
    RateLimitConfig,
)

if TYPE_CHECKING:
    from txlb._configread import _Reader

# Keys of a pool table (C{[pools.NAME]}, or C{[load_balancer]} in the simple
# form), and the sub-tables that may also be top-level defaults.
PROTECTION_POOL_KEYS = (
    "slow_start", "max_queue", "queue_timeout", "on_all_down",
    "outlier_detection", "circuit_breaker",
)
OUTLIER_KEYS = (
    "consecutive_failures", "base_ejection_time", "max_ejection_time",
    "max_ejection_percent",
)
BREAKER_KEYS = (
    "failure_ratio", "window", "min_requests", "open_time", "half_open_requests",
)
RATE_LIMIT_KEYS = ("requests_per_second", "burst", "max_clients")
LIFECYCLE_KEYS = ("drain_timeout",)
ON_ALL_DOWN = ("fail", "panic")


def _fraction(r: _Reader, key: str, low: float, high: float) -> float | None:
    if r.absent(key):
        return None
    value = r.table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        low < value <= high
    ):
        raise r.error(key, f"must be a number above {low:g} and at most {high:g}, got {value!r}")
    return float(value)


def readOutlier(r: _Reader | None, base: OutlierConfig | None) -> OutlierConfig | None:
    """
    An C{outlier_detection} table over C{base} (the top-level defaults).
    """
    if r is None:
        return base
    values: dict[str, Any] = {}
    failures = r.integer("consecutive_failures", low=1, high=1000)
    if failures is not None:
        values["consecutiveFailures"] = failures
    for key, attr in (
        ("base_ejection_time", "baseEjectionTime"),
        ("max_ejection_time", "maxEjectionTime"),
    ):
        value = r.seconds(key)
        if value is not None:
            values[attr] = value
    percent = r.integer("max_ejection_percent", low=1, high=100)
    if percent is not None:
        values["maxEjectionPercent"] = percent
    r.finish(OUTLIER_KEYS)
    result = attrs.evolve(base or OutlierConfig(), **values)
    if result.maxEjectionTime < result.baseEjectionTime:
        raise r.error(
            "max_ejection_time",
            f"must be at least base_ejection_time ({result.baseEjectionTime:g}), "
            f"got {result.maxEjectionTime:g}",
        )
    return result


def readBreaker(r: _Reader | None, base: BreakerConfig | None) -> BreakerConfig | None:
    """
    A C{circuit_breaker} table over C{base} (the top-level defaults).
    """
    if r is None:
        return base
    values: dict[str, Any] = {}
    ratio = _fraction(r, "failure_ratio", 0.0, 1.0)
    if ratio is not None:
        values["failureRatio"] = ratio
    for key, attr, high in (
        ("window", "window", 10000),
        ("min_requests", "minRequests", 10000),
        ("half_open_requests", "halfOpenRequests", 1000),
    ):
        value = r.integer(key, low=1, high=high)
        if value is not None:
            values[attr] = value
    openTime = r.seconds("open_time")
    if openTime is not None:
        values["openTime"] = openTime
    r.finish(BREAKER_KEYS)
    result = attrs.evolve(base or BreakerConfig(), **values)
    if result.minRequests > result.window:
        raise r.error(
            "min_requests",
            f"must not exceed window ({result.window}), got {result.minRequests}",
        )
    return result


def readProtection(
    r: _Reader,
    outlier: _Reader | None,
    breaker: _Reader | None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The protection fields of a pool, as keyword arguments for
    L{txlb._configvalues.PoolConfig}.

    @param r: the pool's table (C{slow_start}, C{max_queue},
        C{queue_timeout}, C{on_all_down}).
    @param outlier: its C{outlier_detection} table, if any.
    @param breaker: its C{circuit_breaker} table, if any.
    @param base: the defaults from the top level of the full form.
    """
    values: dict[str, Any] = dict(base or {})
    slowStart = r.seconds("slow_start", allowZero=True)
    if slowStart is not None:
        values["slowStart"] = slowStart
    maxQueue = r.integer("max_queue", low=0, high=1000000)
    if maxQueue is not None:
        values["maxQueue"] = maxQueue
    if r.has("queue_timeout") and r.raw("queue_timeout") is False:
        values["queueTimeout"] = None
    else:
        queueTimeout = r.seconds("queue_timeout")
        if queueTimeout is not None:
            values["queueTimeout"] = queueTimeout
    onAllDown = r.string("on_all_down", choices=ON_ALL_DOWN)
    if onAllDown is not None:
        values["panic"] = onAllDown == "panic"
    values["outlier"] = readOutlier(outlier, values.get("outlier"))
    values["breaker"] = readBreaker(breaker, values.get("breaker"))
    return values


def readRateLimit(
    r: _Reader | None, base: RateLimitConfig | None
) -> RateLimitConfig | None:
    """
    A C{rate_limit} table over C{base} (the top-level defaults).
    """
    if r is None:
        return base
    rate = r.raw("requests_per_second")
    if rate is None and base is not None:
        rate = base.requestsPerSecond
    if rate is None:
        raise r.error("requests_per_second", "is required")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
        0 < rate and math.isfinite(rate)
    ):
        raise r.error("requests_per_second", f"must be a positive number, got {rate!r}")
    default = base.burst if base is not None else max(1, math.ceil(rate))
    burst = r.integer("burst", default, low=1, high=10000000)
    maxClients = r.integer(
        "max_clients",
        base.maxClients if base is not None else attrs.fields(RateLimitConfig).maxClients.default,
        low=1000,
        high=100000000,
    )
    r.finish(RATE_LIMIT_KEYS)
    return RateLimitConfig(
        requestsPerSecond=float(rate), burst=burst, maxClients=maxClients
    )


def readLifecycle(r: _Reader | None) -> LifecycleConfig:
    """
    The top-level C{lifecycle} table.
    """
    if r is None:
        return LifecycleConfig()
    drain = r.seconds("drain_timeout", allowZero=True)
    r.finish(LIFECYCLE_KEYS)
    if drain is None:
        return LifecycleConfig()
    return LifecycleConfig(drainTimeout=drain)
