"""
Tests for the protection keys of lb.toml (L{txlb._configprotect}): slow
start, queueing, panic, outlier detection, circuit breakers, rate limits and
the drain deadline.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txlb.config import (
    BreakerConfig,
    LifecycleConfig,
    OutlierConfig,
    RateLimitConfig,
)
from txlb.test.test_config import (
    APP_SERVER,
    LISTENER,
    POOL,
    SERVER,
    ConfigTestMixin,
    parse,
    toml,
)


class SimpleFormTests(ConfigTestMixin, SynchronousTestCase):
    """
    The protection keys in the simple form.
    """

    def test_defaults(self) -> None:
        """
        Without the keys: no slow start, no queue (refuse at once), fail
        fast when every backend is down, no passive checks, no rate limit,
        a 30 s drain.
        """
        config = parse(SERVER)
        [pool] = config.pools
        self.assertEqual(
            (pool.slowStart, pool.maxQueue, pool.queueTimeout, pool.panic),
            (0.0, 0, 5.0, False),
        )
        self.assertIsNone(pool.outlier)
        self.assertIsNone(pool.breaker)
        self.assertIsNone(config.listeners[0].rateLimit)
        self.assertEqual(config.lifecycle, LifecycleConfig(drainTimeout=30.0))

    def test_all(self) -> None:
        """
        Every key is read where the simple form puts it.
        """
        config = parse(
            toml(
                """
                [load_balancer]
                slow_start = 20
                max_queue = 100
                queue_timeout = 2.5
                on_all_down = "panic"

                [outlier_detection]
                consecutive_failures = 3

                [circuit_breaker]
                failure_ratio = 0.25
                window = 40

                [rate_limit]
                requests_per_second = 50
                burst = 80

                [lifecycle]
                drain_timeout = 5
                """
            )
            + SERVER
        )
        [pool] = config.pools
        self.assertEqual(
            (pool.slowStart, pool.maxQueue, pool.queueTimeout, pool.panic),
            (20.0, 100, 2.5, True),
        )
        self.assertEqual(pool.outlier, OutlierConfig(consecutiveFailures=3))
        self.assertEqual(pool.breaker, BreakerConfig(failureRatio=0.25, window=40))
        self.assertEqual(
            config.listeners[0].rateLimit,
            RateLimitConfig(requestsPerSecond=50.0, burst=80),
        )
        self.assertEqual(config.lifecycle.drainTimeout, 5.0)

    def test_tablesEnableWithDefaults(self) -> None:
        """
        An empty C{[outlier_detection]} or C{[circuit_breaker]} table turns
        the feature on with its defaults; a rate limit's burst defaults to
        one second's worth.
        """
        config = parse(
            "[outlier_detection]\n[circuit_breaker]\n"
            "[rate_limit]\nrequests_per_second = 2.5\n" + SERVER
        )
        [pool] = config.pools
        self.assertEqual(pool.outlier, OutlierConfig())
        self.assertEqual(pool.breaker, BreakerConfig())
        self.assertEqual(
            config.listeners[0].rateLimit,
            RateLimitConfig(requestsPerSecond=2.5, burst=3),
        )

    def test_queueTimeoutFalse(self) -> None:
        """
        C{queue_timeout = false} lets a request wait as long as it takes.
        """
        config = parse("[load_balancer]\nmax_queue = 5\nqueue_timeout = false\n" + SERVER)
        self.assertIsNone(config.pools[0].queueTimeout)

    def test_errors(self) -> None:
        """
        Bad values name their key.
        """
        self.assertErrorTable(
            [
                (
                    "[load_balancer]\nslow_start = -1\n" + SERVER,
                    "load_balancer.slow_start: must be a positive number of seconds, got -1",
                ),
                (
                    "[load_balancer]\nmax_queue = -1\n" + SERVER,
                    "load_balancer.max_queue: must be 0-1000000, got -1",
                ),
                (
                    '[load_balancer]\non_all_down = "retry"\n' + SERVER,
                    "load_balancer.on_all_down: must be one of fail, panic, got 'retry'",
                ),
                (
                    "[outlier_detection]\nconsecutive_failure = 3\n" + SERVER,
                    "outlier_detection.consecutive_failure: unknown key; "
                    "did you mean 'consecutive_failures'?",
                ),
                (
                    "[outlier_detection]\nmax_ejection_percent = 0\n" + SERVER,
                    "outlier_detection.max_ejection_percent: must be 1-100, got 0",
                ),
                (
                    "[outlier_detection]\nbase_ejection_time = 60\n"
                    "max_ejection_time = 30\n" + SERVER,
                    "outlier_detection.max_ejection_time: must be at least "
                    "base_ejection_time (60), got 30",
                ),
                (
                    "[circuit_breaker]\nfailure_ratio = 0\n" + SERVER,
                    "circuit_breaker.failure_ratio: must be a number above 0 and at "
                    "most 1, got 0",
                ),
                (
                    "[circuit_breaker]\nwindow = 5\n" + SERVER,
                    "circuit_breaker.min_requests: must not exceed window (5), got 10",
                ),
                (
                    "[rate_limit]\nburst = 5\n" + SERVER,
                    "rate_limit.requests_per_second: is required",
                ),
                (
                    '[rate_limit]\nrequests_per_second = "fast"\n' + SERVER,
                    "rate_limit.requests_per_second: must be a positive number, "
                    "got 'fast'",
                ),
                (
                    "[rate_limit]\nrequests_per_second = 5\nburst = 0\n" + SERVER,
                    "rate_limit.burst: must be 1-10000000, got 0",
                ),
                (
                    "[lifecycle]\ndrain_time = 5\n" + SERVER,
                    "lifecycle.drain_time: unknown key; did you mean 'drain_timeout'?",
                ),
            ]
        )


class FullFormTests(ConfigTestMixin, SynchronousTestCase):
    """
    The protection keys in the full form: top-level tables are defaults,
    per-pool and per-listener tables override them key by key.
    """

    def test_defaultsAndOverrides(self) -> None:
        """
        A pool's C{outlier_detection} table overrides the top-level one key
        by key; a pool without one gets the top-level one; a listener's
        C{rate_limit} overrides the top-level one.
        """
        config = parse(
            toml(
                """
                [outlier_detection]
                consecutive_failures = 7
                base_ejection_time = 10

                [rate_limit]
                requests_per_second = 100
                burst = 200

                [listeners.web]
                port = 8080
                pool = "app"
                [listeners.web.rate_limit]
                requests_per_second = 10

                [listeners.other]
                port = 8081
                pool = "api"

                [pools.app]
                slow_start = 30
                on_all_down = "panic"
                [pools.app.outlier_detection]
                consecutive_failures = 2
                """
            )
            + APP_SERVER
            + toml(
                """
                [pools.api]
                max_queue = 10
                [[pools.api.servers]]
                address = "10.0.0.2"
                port = 80
                """
            )
        )
        app, api = config.pools
        self.assertEqual(
            app.outlier, OutlierConfig(consecutiveFailures=2, baseEjectionTime=10.0)
        )
        self.assertEqual(
            api.outlier, OutlierConfig(consecutiveFailures=7, baseEjectionTime=10.0)
        )
        self.assertEqual((app.slowStart, app.panic, app.maxQueue), (30.0, True, 0))
        self.assertEqual((api.slowStart, api.panic, api.maxQueue), (0.0, False, 10))
        web, other = config.listeners
        self.assertEqual(web.rateLimit, RateLimitConfig(requestsPerSecond=10.0, burst=200))
        self.assertEqual(other.rateLimit, RateLimitConfig(requestsPerSecond=100.0, burst=200))

    def test_poolErrorsNamePool(self) -> None:
        """
        Errors in a pool's tables name the pool.
        """
        self.assertErrorTable(
            [
                (
                    LISTENER + "[pools.app]\nslow_start = true\n" + APP_SERVER,
                    "pools.app.slow_start: must be a number of seconds, got True",
                ),
                (
                    LISTENER + POOL + "[pools.app.circuit_breaker]\nopen_time = 0\n",
                    "pools.app.circuit_breaker.open_time: must be a positive number "
                    "of seconds, got 0",
                ),
                (
                    LISTENER + "[listeners.web.rate_limit]\nburst = 3\n" + POOL,
                    "listeners.web.rate_limit.requests_per_second: is required",
                ),
            ]
        )
