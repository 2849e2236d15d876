"""
Tests for the admin REST API's pools and servers (L{txlb.admin.api}) and
the runtime changes behind them (L{txlb.admin.control}), in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address

from txlb.admin import control
from txlb.pool import AdminState
from txlb.test.admincase import (
    APITestCase,
    FakeHealthClient,
)
from txlb.test.test_lifecycle import fullConfig

# ------------------------------------------------------------ REST: pools


class PoolTests(APITestCase):
    """
    C{/api/v1/pools}, strategy swaps, decisions and listeners.
    """

    def setUp(self) -> None:
        self.build()

    def test_listAndGet(self) -> None:
        """
        Pools are listed and fetched by name with their servers.
        """
        answer = self.call("GET", "/api/v1/pools", token=None)
        self.assertEqual([p["name"] for p in answer.body["pools"]], ["app"])
        one = self.call("GET", "/api/v1/pools/app", token=None)
        self.assertEqual(one.body["algorithm"], "round_robin")
        self.assertEqual(
            [(s["name"], s["dynamic"], s["removing"]) for s in one.body["servers"]],
            [("127.0.0.1:3000", False, False), ("127.0.0.1:3001", False, False)],
        )
        self.assertEqual(self.call("GET", "/api/v1/pools/").code, 200)
        self.assertError(self.call("GET", "/api/v1/pools/nope"), 404, "pool")

    def test_strategySwapKeepsCounts(self) -> None:
        """
        C{PATCH} with an algorithm swaps the strategy; the backends, their
        connections in flight and their counters stay, and the new
        strategy sees them.
        """
        first, second = self.pool.backends
        first.acquire()
        first.acquire()
        answer = self.call(
            "PATCH", "/api/v1/pools/app", {"algorithm": "least-connections"}
        )
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.body["algorithm"], "least_connections")
        self.assertEqual(self.pool.backends, (first, second))
        self.assertEqual((first.activeConnections, first.totalConnections), (2, 2))
        self.assertIs(self.pool.pick(), second)

    def test_strategyOptions(self) -> None:
        """
        Options alone rebuild the current algorithm with them.
        """
        self.call("PATCH", "/api/v1/pools/app", {"algorithm": "consistent_hash"})
        answer = self.call(
            "PATCH", "/api/v1/pools/app", {"options": {"virtual_nodes": 3}}
        )
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.pool.strategy.virtualNodes, 3)

    def test_strategyRefusals(self) -> None:
        """
        An unknown algorithm or bad options are 400 naming the field; an
        unknown pool 404; nothing changes.
        """
        before = self.snapshot()
        cases = [
            ({"algorithm": "round_robbin"}, 400, "algorithm"),
            ({"algorithm": 3}, 400, "algorithm"),
            ({"algorithm": "maglev", "options": {"table_size": 4}}, 400, "options"),
            ({"algorithm": "maglev", "options": {"size": 7}}, 400, "options"),
            ({"algorithm": "maglev", "options": [1]}, 400, "options"),
            ({"algorithm": "maglev", "speed": 1}, 400, "speed"),
            ({}, 400, "algorithm"),
        ]
        for body, code, field in cases:
            self.assertError(self.call("PATCH", "/api/v1/pools/app", body), code, field)
        answer = self.call("PATCH", "/api/v1/pools/app", {"algorithm": "round_robbin"})
        self.assertIn("did you mean 'round_robin'", answer.body["error"])
        self.assertError(
            self.call("PATCH", "/api/v1/pools/nope", {"algorithm": "maglev"}),
            404,
            "pool",
        )
        self.assertEqual(self.snapshot(), before)

    def test_decisions(self) -> None:
        """
        Recent decisions are listed newest first, with each candidate's
        load and the strategy's reason.
        """
        first, second = self.pool.backends
        second.acquire()
        second.latency = 0.004
        self.pool.pick(IPv4Address("TCP", "10.1.1.1", 5000))
        second.healthy = first.healthy = False
        self.pool.pick(IPv4Address("TCP", "10.1.1.2", 5000))
        answer = self.call("GET", "/api/v1/pools/app/decisions", token=None)
        self.assertEqual(answer.code, 200)
        newest, oldest = answer.body["decisions"]
        self.assertEqual(newest["chosen"], None)
        self.assertEqual(newest["reason"], "no usable backend")
        self.assertEqual(oldest["client"], "10.1.1.1")
        self.assertEqual(oldest["chosen"], "127.0.0.1:3000")
        self.assertEqual(oldest["reason"], "next in rotation (1 of 2)")
        self.assertEqual(
            oldest["candidates"],
            [
                {
                    "name": "127.0.0.1:3000",
                    "in_flight": 0,
                    "weight": 1.0,
                    "latency_ms": None,
                },
                {
                    "name": "127.0.0.1:3001",
                    "in_flight": 1,
                    "weight": 1.0,
                    "latency_ms": 4.0,
                },
            ],
        )
        self.assertError(self.call("GET", "/api/v1/pools/nope/decisions"), 404, "pool")

    def test_listeners(self) -> None:
        """
        C{GET /api/v1/listeners} lists each listener.
        """
        answer = self.call("GET", "/api/v1/listeners", token=None)
        (listener,) = answer.body["listeners"]
        self.assertEqual(
            (listener["name"], listener["layer"], listener["pool"]),
            ("web", "L7", "app"),
        )

    def test_unknownPathAndMethod(self) -> None:
        """
        An unknown path under the API is 404; a known one with another
        method 405 with C{Allow}.
        """
        self.assertError(self.call("GET", "/api/v2/pools"), 404)
        self.assertError(self.call("GET", "/stats/detail/more"), 404)
        answer = self.call("DELETE", "/api/v1/pools/app")
        self.assertError(answer, 405)
        self.assertEqual(answer.header("allow"), "GET, PATCH")


# ------------------------------------------------------------ REST: servers


class ServerTests(APITestCase):
    """
    C{/api/v1/pools/{pool}/servers}: adding, changing and removing servers.
    """

    def setUp(self) -> None:
        self.build(
            fullConfig(
                pools={"app": {"slow_start": 10}},
                top={"lifecycle": {"drain_timeout": 5}},
            )
        )

    def test_list(self) -> None:
        """
        The pool's servers are listed.
        """
        answer = self.call("GET", "/api/v1/pools/app/servers", token=None)
        self.assertEqual(answer.body["pool"], "app")
        self.assertEqual(len(answer.body["servers"]), 2)
        self.assertError(self.call("GET", "/api/v1/pools/nope/servers"), 404, "pool")

    def test_addWithoutHealthCheck(self) -> None:
        """
        Without a health check, an added server takes traffic at once,
        ramping up over the pool's slow start; its settings are the pool's.
        """
        answer = self.call(
            "POST",
            "/api/v1/pools/app/servers",
            {
                "address": "10.0.0.2",
                "port": 80,
                "name": "extra",
                "weight": 4,
                "max_connections": 9,
            },
        )
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.header("location"), "/api/v1/pools/app/servers/extra")
        backend = self.pool.backend("extra")
        self.assertEqual((backend.configuredWeight, backend.maxConnections), (4, 9))
        self.assertEqual(backend.slowStart, 10)
        self.assertIn(backend, self.pool.candidates())
        self.assertAlmostEqual(backend.weight, 0.4)
        self.reactor.advance(10)
        self.assertEqual(backend.weight, 4)

    def test_addEndpoint(self) -> None:
        """
        A server may be given as an endpoint string, named by it.
        """
        answer = self.call(
            "POST", "/api/v1/pools/app/servers", {"endpoint": "unix:/run/app.sock"}
        )
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.body["name"], "unix:/run/app.sock")
        get = self.call("GET", "/api/v1/pools/app/servers/unix%3A%2Frun%2Fapp.sock")
        self.assertEqual(get.body["endpoint"], "unix:/run/app.sock")

    def test_ipv6Names(self) -> None:
        """
        An IPv6 server is named C{[v6]:port}; its name works in URLs
        percent-encoded or not.
        """
        answer = self.call(
            "POST", "/api/v1/pools/app/servers", {"address": "::1", "port": 80}
        )
        self.assertEqual(answer.body["name"], "[::1]:80")
        self.assertEqual(
            answer.header("location"), "/api/v1/pools/app/servers/%5B%3A%3A1%5D%3A80"
        )
        for path in ("%5B%3A%3A1%5D%3A80", "[::1]:80"):
            got = self.call("GET", "/api/v1/pools/app/servers/" + path)
            self.assertEqual(got.body["address"], "[::1]:80")
        patched = self.call(
            "PATCH",
            "/api/v1/pools/app/servers/%5B%3A%3A1%5D%3A80",
            {"state": "disabled"},
        )
        self.assertEqual(patched.body["state"], "disabled")

    def test_addRefusals(self) -> None:
        """
        Bad servers are refused naming the field, duplicates with 409;
        nothing changes.
        """
        before = self.snapshot()
        cases = [
            ({"address": "10.0.0.2", "port": 0}, 400, "port"),
            ({"address": "10.0.0.2"}, 400, "port"),
            ({"port": 80}, 400, "address"),
            ({"address": "", "port": 80}, 400, "address"),
            (
                {"address": "10.0.0.2", "port": 80, "endpoint": "tcp:a:1"},
                400,
                "endpoint",
            ),
            ({"endpoint": "nonsense:x"}, 400, "endpoint"),
            ({"endpoint": 5}, 400, "endpoint"),
            ({"address": "10.0.0.2", "port": 80, "name": ""}, 400, "name"),
            ({"address": "10.0.0.2", "port": 80, "name": "a\nb"}, 400, "name"),
            ({"address": "10.0.0.2", "port": 80, "weight": 2.5}, 400, "weight"),
            (
                {"address": "10.0.0.2", "port": 80, "max_connections": 0},
                400,
                "max_connections",
            ),
            ({"address": "10.0.0.2", "port": 80, "ip": "x"}, 400, "ip"),
            (
                {"address": "10.0.0.2", "port": 80, "name": "127.0.0.1:3000"},
                409,
                "name",
            ),
            ({"address": "127.0.0.1", "port": 3000, "name": "again"}, 409, "address"),
        ]
        for body, code, field in cases:
            self.assertError(
                self.call("POST", "/api/v1/pools/app/servers", body), code, field
            )
        self.assertError(
            self.call(
                "POST",
                "/api/v1/pools/nope/servers",
                {"address": "10.0.0.2", "port": 80},
            ),
            404,
            "pool",
        )
        self.assertEqual(self.snapshot(), before)

    def test_getServer(self) -> None:
        """
        A server is fetched by name; an unknown one is 404.
        """
        answer = self.call(
            "GET", "/api/v1/pools/app/servers/127.0.0.1:3000", token=None
        )
        self.assertEqual(answer.body["name"], "127.0.0.1:3000")
        self.assertEqual(answer.body["state"], "active")
        self.assertError(
            self.call("GET", "/api/v1/pools/app/servers/nope"), 404, "name"
        )

    def test_patchStates(self) -> None:
        """
        C{state} drains, disables and re-enables a server.
        """
        first, second = self.pool.backends
        for state in ("draining", "disabled"):
            answer = self.call(
                "PATCH", "/api/v1/pools/app/servers/127.0.0.1:3000", {"state": state}
            )
            self.assertEqual(answer.body["state"], state)
            self.assertEqual(first.state, AdminState(state))
            self.assertEqual(self.pool.candidates(), [second])
        self.call(
            "PATCH", "/api/v1/pools/app/servers/127.0.0.1:3000", {"state": "active"}
        )
        self.assertEqual(self.pool.candidates(), [first, second])

    def test_patchWeightRebuildsTables(self) -> None:
        """
        C{weight} sets the configured weight and the strategy's table is
        laid out anew.
        """
        self.call(
            "PATCH",
            "/api/v1/pools/app",
            {"algorithm": "consistent_hash", "options": {"virtual_nodes": 2}},
        )
        self.assertEqual(len(self.pool.strategy._points), 4)
        answer = self.call(
            "PATCH", "/api/v1/pools/app/servers/127.0.0.1:3000", {"weight": 3}
        )
        self.assertEqual(answer.body["weight"], 3)
        self.assertEqual(self.pool.backends[0].configuredWeight, 3)
        self.assertEqual(len(self.pool.strategy._points), 8)

    def test_patchRefusals(self) -> None:
        """
        A bad weight or state is 400 naming it, and neither half of the
        change is applied; an empty change is 400; unknown names 404.
        """
        before = self.snapshot()
        url = "/api/v1/pools/app/servers/127.0.0.1:3000"
        cases = [
            ({"weight": 0}, 400, "weight"),
            ({"weight": "2"}, 400, "weight"),
            ({"state": "drain"}, 400, "state"),
            ({"state": "disabled", "weight": 5000}, 400, "weight"),
            ({"weight": 2, "state": "off"}, 400, "state"),
            ({"weight": 2, "enabled": True}, 400, "enabled"),
            ({}, 400, None),
        ]
        for body, code, field in cases:
            self.assertError(self.call("PATCH", url, body), code, field)
        self.assertError(
            self.call("PATCH", "/api/v1/pools/app/servers/nope", {"weight": 2}),
            404,
            "name",
        )
        self.assertError(
            self.call("PATCH", "/api/v1/pools/nope/servers/x", {"weight": 2}),
            404,
            "pool",
        )
        self.assertEqual(self.snapshot(), before)

    def test_removeLifecycle(self) -> None:
        """
        C{DELETE} answers 202 at once: the server takes no new traffic, its
        idle upstream connections are closed, the outlier detector forgets
        it and its breaker stops; it leaves the pool within a poll once
        nothing is in flight.
        """
        backend = self.pool.backend("127.0.0.1:3001")
        closed: list[Any] = []
        forgotten: list[Any] = []
        stopped: list[bool] = []
        self.patch(self.service.upstreams["app"], "closeIdle", closed.append)

        class Detector:
            def forget(self, b: Any) -> None:
                forgotten.append(b)

            def describe(self, b: Any) -> None:
                return None

        class Breaker:
            def allows(self) -> bool:
                return True

            def stop(self) -> None:
                stopped.append(True)

            def describe(self) -> dict[str, Any]:
                return {}

        self.pool.outlierDetector = Detector()
        backend.breaker = Breaker()
        backend.acquire()
        backend.acquire()
        answer = self.call("DELETE", "/api/v1/pools/app/servers/127.0.0.1:3001")
        self.assertEqual(answer.code, 202)
        self.assertEqual(
            (answer.body["state"], answer.body["removing"]), ("draining", True)
        )
        self.assertEqual((closed, forgotten, stopped), ([backend], [backend], [True]))
        self.assertNotIn(backend, self.pool.candidates())
        self.assertError(
            self.call(
                "PATCH", "/api/v1/pools/app/servers/127.0.0.1:3001", {"state": "active"}
            ),
            409,
            "state",
        )
        again = self.call("DELETE", "/api/v1/pools/app/servers/127.0.0.1:3001")
        self.assertEqual(again.code, 202)
        removed = control.removeServer(self.service, "app", "127.0.0.1:3001")
        backend.release()
        self.reactor.advance(1)
        self.assertIs(self.pool.backend("127.0.0.1:3001"), backend)
        self.assertNoResult(removed)
        backend.release()
        self.reactor.advance(control.POLL_INTERVAL)
        self.assertIsNone(self.pool.backend("127.0.0.1:3001"))
        self.assertIs(self.successResultOf(removed), backend)
        self.assertError(
            self.call("GET", "/api/v1/pools/app/servers/127.0.0.1:3001"), 404, "name"
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_removeDeadline(self) -> None:
        """
        A server still busy at the drain timeout leaves the pool anyway;
        what it has in flight finishes on its own.
        """
        backend = self.pool.backend("127.0.0.1:3001")
        backend.acquire()
        removed = control.removeServer(self.service, "app", "127.0.0.1:3001")
        self.reactor.pump([control.POLL_INTERVAL] * 49)
        self.assertIs(self.pool.backend("127.0.0.1:3001"), backend)
        self.reactor.advance(0.11)
        self.assertIs(self.successResultOf(removed), backend)
        self.assertIsNone(self.pool.backend("127.0.0.1:3001"))
        backend.release()
        self.assertEqual(backend.activeConnections, 0)

    def test_removeIdleAtOnce(self) -> None:
        """
        A server with nothing in flight leaves at once; a dynamic one is
        forgotten.
        """
        self.call(
            "POST", "/api/v1/pools/app/servers", {"address": "10.0.0.3", "port": 80}
        )
        self.assertEqual(
            self.call("DELETE", "/api/v1/pools/app/servers/10.0.0.3:80").code, 202
        )
        self.assertIsNone(self.pool.backend("10.0.0.3:80"))
        self.assertEqual(control.dynamicNames(self.service, "app"), frozenset())
        self.assertError(
            self.call("DELETE", "/api/v1/pools/app/servers/10.0.0.3:80"), 404, "name"
        )


class HealthCheckedAddTests(APITestCase):
    """
    A server added to a pool with a health check waits for its first
    check.
    """

    def setUp(self) -> None:
        self.health = FakeHealthClient()
        self.build(
            fullConfig(
                pools={
                    "app": {
                        "slow_start": 10,
                        "health_check": {
                            "type": "http",
                            "interval": 10,
                            "timeout": 5,
                            "jitter": 0,
                        },
                    }
                }
            ),
            healthClient=self.health,
        )
        self.health.answer("127.0.0.1:3000")
        self.health.answer("127.0.0.1:3001")

    def test_pendingUntilChecked(self) -> None:
        """
        The new server is pending (no traffic) and checked at once; when
        the check passes it takes traffic, ramping up.
        """
        answer = self.call(
            "POST", "/servers", {"ip": "10.0.0.4", "port": 80, "weight": 2}
        )
        self.assertEqual(answer.code, 201)
        self.assertEqual(
            (answer.body["health"], answer.body["healthy"]), ("pending", False)
        )
        backend = self.pool.backend("10.0.0.4:80")
        self.assertNotIn(backend, self.pool.candidates())
        self.assertEqual(len(self.health.waiting["10.0.0.4:80"]), 1)
        self.health.answer("10.0.0.4:80")
        self.assertTrue(backend.healthy)
        self.assertIn(backend, self.pool.candidates())
        self.assertAlmostEqual(backend.weight, 0.2)

    def test_failingCheckKeepsItOut(self) -> None:
        """
        A server whose check fails takes no traffic.
        """
        self.call("POST", "/servers", {"ip": "10.0.0.4", "port": 80})
        self.health.answer("10.0.0.4:80", 503)
        backend = self.pool.backend("10.0.0.4:80")
        self.assertFalse(backend.healthy)
        self.assertNotIn(backend, self.pool.candidates())

    def test_stopCancelsCheck(self) -> None:
        """
        Stopping health checking with the added server's check in flight
        cancels it without an unhandled error.
        """
        self.call("POST", "/servers", {"ip": "10.0.0.4", "port": 80})
        self.successResultOf(self.service.health.stopService())
        self.assertFalse(self.pool.backend("10.0.0.4:80").healthy)
        self.assertEqual(self.flushLoggedErrors(), [])
