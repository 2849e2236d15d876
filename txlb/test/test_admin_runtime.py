"""
Tests for the admin API's guard as the API sees it, runtime changes across
reloads, and the built-in strategies' explanations of their choices, in
memory.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txlb.admin import api, control
from txlb.config import Config, parseConfig
from txlb.interfaces import IChoiceExplainer
from txlb.plugin import strategyRegistry
from txlb.pool import AdminState
from txlb.test.admincase import (
    APITestCase,
    adminConfig,
)
from txlb.test.test_lifecycle import fullConfig
from txlb.testing import makeBackends, makeContext

# ------------------------------------------------------------ the guard


class GuardTests(APITestCase):
    """
    Refused requests change nothing.
    """

    MUTATIONS = [
        ("POST", "/servers", {"ip": "10.0.0.8", "port": 80}),
        ("DELETE", "/servers/127.0.0.1/3000", None),
        ("PATCH", "/api/v1/pools/app", {"algorithm": "maglev"}),
        ("POST", "/api/v1/pools/app/servers", {"address": "10.0.0.8", "port": 80}),
        (
            "PATCH",
            "/api/v1/pools/app/servers/127.0.0.1:3000",
            {"state": "disabled", "weight": 9},
        ),
        ("DELETE", "/api/v1/pools/app/servers/127.0.0.1:3000", None),
    ]

    def setUp(self) -> None:
        self.build()

    def assertRefused(self, code: int, **kwargs: Any) -> None:
        """
        Every mutation made with C{kwargs} is refused with C{code} and
        changes nothing.
        """
        before = self.snapshot()
        for method, path, body in self.MUTATIONS:
            answer = self.call(method, path, body, **kwargs)
            self.assertError(answer, code)
            self.assertEqual(self.snapshot(), before, (method, path))

    def test_noToken(self) -> None:
        """
        Without the token: 401, with C{WWW-Authenticate}.
        """
        self.assertRefused(401, token=None)
        answer = self.call(
            "POST", "/servers", {"ip": "10.0.0.8", "port": 80}, token=None
        )
        self.assertTrue(answer.header("www-authenticate").startswith("Bearer"))

    def test_wrongToken(self) -> None:
        """
        With a wrong token: 401.
        """
        self.assertRefused(401, token="0123456789abcdef-wrong")

    def test_foreignOrigin(self) -> None:
        """
        From a page of another site: 403.
        """
        self.assertRefused(403, headers={"Origin": ["https://evil.example"]})
        self.assertRefused(403, headers={"Origin": ["null"]})

    def test_notJSON(self) -> None:
        """
        A body that is not sent as JSON (what an HTML form sends): 415.
        """
        before = self.snapshot()
        for method, path, body in self.MUTATIONS:
            if body is None:
                continue
            answer = self.call(
                method,
                path,
                raw=json.dumps(body).encode(),
                headers={"Content-Type": ["text/plain"]},
            )
            self.assertError(answer, 415)
        self.assertEqual(self.snapshot(), before)

    def test_foreignHost(self) -> None:
        """
        A Host that does not name the admin service (DNS rebinding): 421,
        for reads too.
        """
        self.assertRefused(421, headers={"Host": ["evil.example"]})
        self.assertError(
            self.call("GET", "/api/v1/pools", headers={"Host": ["evil.example:9090"]}),
            421,
        )

    def test_sameOriginAllowed(self) -> None:
        """
        The dashboard's own page (same origin) may call with the token.
        """
        answer = self.call(
            "PATCH",
            "/api/v1/pools/app/servers/127.0.0.1:3000",
            {"state": "draining"},
            headers={"Origin": ["http://127.0.0.1:9090"]},
        )
        self.assertEqual(answer.code, 200)

    def test_closedReads(self) -> None:
        """
        With C{open_reads} off, reads need the token too.
        """
        self.guard.config = adminConfig(openReads=False)
        for route in api.ROUTES:
            if "GET" not in route.methods or "{" in route.path:
                continue
            self.assertError(self.call("GET", route.path, token=None), 401)
            self.assertEqual(self.call("GET", route.path).code, 200, route.path)

    def test_openReads(self) -> None:
        """
        By default reads need no token.
        """
        for route in api.ROUTES:
            if "GET" in route.methods and "{" not in route.path:
                self.assertEqual(self.call("GET", route.path, token=None).code, 200)


# ------------------------------------------------------------ reloads


class ReloadTests(APITestCase):
    """
    How runtime changes and a SIGHUP reload interact (see
    L{txlb.admin.control}).
    """

    def setUp(self) -> None:
        self.configs: list[Config] = []
        self.build(fullConfig(), reloader=lambda: self.configs.pop(0))

    def reload(self, config: Config) -> None:
        self.configs.append(config)
        self.assertTrue(self.service.reload())

    def test_stateSurvives(self) -> None:
        """
        A state set by the API survives a reload that keeps the server.
        """
        self.call(
            "PATCH", "/api/v1/pools/app/servers/127.0.0.1:3000", {"state": "disabled"}
        )
        self.reload(fullConfig({"app": [3000, 3001, 3002]}))
        self.assertIs(self.pool.backend("127.0.0.1:3000").state, AdminState.disabled)

    def test_strategyKeptUnlessFileChanges(self) -> None:
        """
        A strategy set by the API stays until the file's algorithm changes.
        """
        self.call("PATCH", "/api/v1/pools/app", {"algorithm": "maglev"})
        self.reload(fullConfig({"app": [3000, 3001, 3002]}))
        self.assertEqual(self.pool.algorithm, "maglev")
        self.reload(fullConfig(pools={"app": {"algorithm": "random"}}))
        self.assertEqual(self.pool.algorithm, "random")


class ReloadKeepsDynamicTests(APITestCase):
    """
    A reload keeps what the API did, by the rules of
    L{txlb.admin.control}.
    """

    def setUp(self) -> None:
        self.configs: list[Config] = []
        self.build(fullConfig(), reloader=lambda: self.configs.pop(0))

    def reload(self, config: Config) -> None:
        self.configs.append(config)
        self.assertTrue(self.service.reload())

    def test_dynamicServerKept(self) -> None:
        """
        A server added by the API survives a reload that does not name it,
        counters and all.
        """
        self.call("POST", "/servers", {"ip": "10.0.0.1", "port": 80})
        backend = self.pool.backend("10.0.0.1:80")
        backend.acquire()
        self.reload(fullConfig({"app": [3000]}))
        self.assertEqual(
            [b.name for b in self.pool.backends], ["127.0.0.1:3000", "10.0.0.1:80"]
        )
        self.assertIs(self.pool.backend("10.0.0.1:80"), backend)
        self.assertEqual(backend.activeConnections, 1)
        self.assertEqual(control.dynamicNames(self.service, "app"), {"10.0.0.1:80"})

    def test_fileTakesOver(self) -> None:
        """
        When the file names a dynamic server (same name and endpoint), the
        running server is kept and is the file's from then on.
        """
        self.call("POST", "/servers", {"ip": "127.0.0.1", "port": 3002, "weight": 5})
        backend = self.pool.backend("127.0.0.1:3002")
        self.reload(fullConfig({"app": [3000, 3001, 3002]}))
        self.assertIs(self.pool.backend("127.0.0.1:3002"), backend)
        self.assertEqual(backend.configuredWeight, 1)
        self.assertEqual(control.dynamicNames(self.service, "app"), frozenset())
        self.reload(fullConfig({"app": [3000]}))
        self.assertIsNone(self.pool.backend("127.0.0.1:3002"))

    def test_fileEndpointWins(self) -> None:
        """
        A dynamic server at an endpoint the file now names under another
        name drains and leaves.
        """
        self.call(
            "POST",
            "/api/v1/pools/app/servers",
            {"address": "127.0.0.1", "port": 3002, "name": "mine"},
        )
        dynamic = self.pool.backend("mine")
        self.reload(fullConfig({"app": [3000, 3001, 3002]}))
        self.assertIsNone(self.pool.backend("mine"))
        self.assertIs(dynamic.state, AdminState.draining)
        self.assertIsNotNone(self.pool.backend("127.0.0.1:3002"))

    def test_weightKeptUnlessFileChanges(self) -> None:
        """
        A weight set by the API stays until the file's weight for that
        server changes.
        """
        self.call("PATCH", "/api/v1/pools/app/servers/127.0.0.1:3000", {"weight": 9})
        self.reload(fullConfig({"app": [3000, 3001, 3002]}))
        backend = self.pool.backend("127.0.0.1:3000")
        self.assertEqual(backend.configuredWeight, 9)
        document = {
            "listeners": {"web": {"port": 8080, "layer": "L7", "pool": "app"}},
            "pools": {
                "app": {
                    "servers": [
                        {"address": "127.0.0.1", "port": 3000, "weight": 2},
                    ]
                }
            },
        }
        self.reload(parseConfig(document, "lb.toml"))
        self.assertEqual(backend.configuredWeight, 2)


# ------------------------------------------------------------ explanations


class ExplainTests(SynchronousTestCase):
    """
    Each built-in strategy says in one line why it chose a backend.
    """

    def explained(
        self, algorithm: str, backends: list[Any], context: Any = None, **options: Any
    ) -> tuple[Any, str]:
        """
        Choose once with a fresh strategy and explain the choice.
        """
        strategy = strategyRegistry()[algorithm.replace("_", "")].build(options)
        self.assertTrue(verifyObject(IChoiceExplainer, strategy))
        membership = getattr(strategy, "membershipChanged", None)
        if membership is not None:
            membership(backends)
        context = context if context is not None else makeContext("10.0.0.1")
        chosen = strategy.choose(backends, context)
        return chosen, strategy.explain(chosen, backends, context)

    def test_everyBuiltInExplains(self) -> None:
        """
        Every built-in strategy provides L{IChoiceExplainer} and returns
        one short line.
        """
        for key, factory in strategyRegistry().items():
            if not factory.__class__.__module__.startswith("txlb."):
                continue
            chosen, reason = self.explained(key, makeBackends(3))
            self.assertIsInstance(reason, str)
            self.assertTrue(0 < len(reason) < 120, (key, reason))
            self.assertNotIn("\n", reason)

    def test_reasons(self) -> None:
        """
        The reasons name what decided.
        """
        backends = makeBackends(["a", "b"], activeConnections=[3, 2])
        self.assertEqual(
            self.explained("least_connections", backends)[1],
            "fewest in flight per weight (2/1)",
        )
        tied = makeBackends(["a", "b"])
        self.assertEqual(
            self.explained("least_connections", tied)[1],
            "fewest in flight per weight (0/1), rotating among 2 tied",
        )
        self.assertEqual(
            self.explained("round_robin", makeBackends(3))[1],
            "next in rotation (1 of 3)",
        )
        self.assertEqual(
            self.explained("weighted_round_robin", makeBackends(2, weights=[3, 1]))[1],
            "largest current weight (weight 3 of 4)",
        )
        self.assertEqual(
            self.explained("random", makeBackends(2, weights=[1, 1]))[1],
            "weighted random draw (weight 1 of 2)",
        )
        chosen, reason = self.explained(
            "power_of_two", makeBackends(["a", "b"], activeConnections=[2, 5])
        )
        self.assertEqual(chosen.name, "a")
        self.assertEqual(reason, "lower cost of two random draws: a 2/1 vs b 5/1")
        for algorithm in ("ip_hashing", "consistent_hash"):
            self.assertEqual(
                self.explained(algorithm, makeBackends(3))[1][:27],
                "key hash owns this server's",
            )
        self.assertEqual(
            self.explained("maglev", makeBackends(3), table_size=7)[1],
            "Maglev table entry of the key's hash",
        )
        self.assertEqual(
            self.explained("maglev", makeBackends(3), makeContext(None), table_size=7)[
                1
            ],
            "no key: random Maglev table entry",
        )

    def test_passedOver(self) -> None:
        """
        When the key's own backend is not a candidate the reason says so.
        """
        backends = makeBackends(3)
        for algorithm in ("ip_hashing", "consistent_hash", "maglev"):
            strategy = strategyRegistry()[algorithm.replace("_", "")].build({})
            strategy.membershipChanged(backends)
            context = makeContext("10.0.0.1")
            owner = strategy.choose(backends, context)
            rest = [b for b in backends if b is not owner]
            chosen = strategy.choose(rest, context)
            reason = strategy.explain(chosen, rest, context)
            self.assertIn(f"belongs to {owner.name}, passed over", reason)
