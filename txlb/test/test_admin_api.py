"""
Tests for the admin API (L{txlb.admin.api}), the runtime changes behind it
(L{txlb.admin.control}), its OpenAPI document, and the built-in strategies'
explanations of their choices.

Everything runs in memory: a L{TxlbService} on a L{MemoryReactorClock},
its admin resource tree driven by L{StubTreq}.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from txlb.admin import api, control
from txlb.config import AdminConfig, Config, parseConfig
from txlb.interfaces import IChoiceExplainer
from txlb.plugin import strategyRegistry
from txlb.pool import AdminState
from txlb.service import TxlbService
from txlb.test.test_lifecycle import fullConfig, noFileLimit
from txlb.testing import makeBackends, makeContext

TOKEN = "0123456789abcdef-token"
BASE = "http://127.0.0.1:9090"
JSON_HEADERS = {"Content-Type": ["application/json"]}


def adminConfig(**kwargs: Any) -> AdminConfig:
    """
    The C{[admin]} of these tests: loopback, with L{TOKEN}.
    """
    values: dict[str, Any] = {
        "endpoint": "tcp:port=9090:interface=127.0.0.1",
        "address": "127.0.0.1",
        "port": 9090,
        "token": TOKEN,
    }
    values.update(kwargs)
    return AdminConfig(**values)


@attrs.frozen
class Answer:
    """
    An API response: its status, headers and JSON body (C{None} if empty).
    """

    code: int
    headers: Headers
    body: Any

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@attrs.define
class FakeCheckResponse:
    """
    The response to one HTTP health check: a status and an empty body.
    """

    code: int

    def deliverBody(self, protocol: Any) -> None:
        protocol.connectionLost(None)


class FakeHealthClient:
    """
    Stands for the HTTP client of health checks: each check waits until
    the test answers it with L{answer}.
    """

    def __init__(self) -> None:
        self.waiting: dict[str, list[Deferred[Any]]] = {}

    def __call__(self, backend: Any) -> Any:
        """
        The client of C{backend}'s checks.
        """
        waiting = self.waiting.setdefault(backend.name, [])

        class Client:
            def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                waiting.append(d)
                return d

        return Client()

    def answer(self, name: str, code: int = 200) -> None:
        """
        Answer every check of backend C{name} waiting now with C{code}.
        """
        waiting = self.waiting.get(name, [])
        while waiting:
            waiting.pop(0).callback(FakeCheckResponse(code))


class APITestCase(SynchronousTestCase):
    """
    A started service for a configuration, the API over it, and a client.
    """

    def build(
        self,
        config: Config | None = None,
        admin: AdminConfig | None = None,
        **kwargs: Any,
    ) -> TxlbService:
        """
        Start a service for C{config} (by default pool C{app} of
        127.0.0.1:3000 and :3001 behind L7 listener C{web}) with its admin
        service (L{adminConfig} unless C{admin} is given), and a client of
        the admin service's whole resource tree.
        """
        config = config if config is not None else fullConfig()
        config = attrs.evolve(
            config, admin=admin if admin is not None else adminConfig()
        )
        self.reactor = MemoryReactorClock()
        self.service = TxlbService(
            config, self.reactor, fileLimit=noFileLimit, **kwargs
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.guard = self.service.admin.guard
        self.root = self.service.admin.site.resource
        self.client = StubTreq(self.root)
        return self.service

    @property
    def pool(self) -> Any:
        """
        Pool C{app}.
        """
        return self.service.pools["app"]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        headers: dict[str, list[str]] | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        """
        Make a request and return its L{Answer}.

        @param body: sent as JSON (with its content type) unless C{None}.
        @param raw: sent as it is instead.
        """
        sent: dict[str, list[str]] = {}
        if token is not None:
            sent["Authorization"] = [f"Bearer {token}"]
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            sent.update(JSON_HEADERS)
        sent.update(headers or {})
        response = self.successResultOf(
            self.client.request(method, BASE + path, headers=sent, data=data)
        )
        content = self.successResultOf(self.client.content(response))
        return Answer(
            response.code, response.headers, json.loads(content) if content else None
        )

    def assertError(self, answer: Answer, code: int, field: str | None = None) -> None:
        """
        C{answer} is a JSON error with status C{code} naming C{field}.
        """
        self.assertEqual(answer.code, code, answer.body)
        self.assertIsInstance(answer.body["error"], str)
        self.assertEqual(answer.body.get("field"), field, answer.body)

    def snapshot(self) -> Any:
        """
        Everything a refused or bad request must leave as it was.
        """
        return (
            [
                (
                    p.name,
                    p.algorithm,
                    id(p.strategy),
                    [
                        (b.name, b.endpoint, b.configuredWeight, b.state, b.healthy)
                        for b in p.backends
                    ],
                    sorted(control.dynamicNames(self.service, p.name)),
                )
                for p in self.service.pools.values()
            ],
            len(self.reactor.getDelayedCalls()),
        )


# ------------------------------------------------------------ OpenAPI


def _document() -> dict[str, Any]:
    return json.loads(api.openAPIDocument())


def _deref(document: dict[str, Any], node: Any) -> Any:
    """
    C{node}, following C{$ref}s within C{document}.
    """
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def schemaProblems(
    document: dict[str, Any], value: Any, schema: Any, where: str = "$"
) -> list[str]:
    """
    Where C{value} does not fit C{schema} (types, required and declared
    properties, array items, enums; the subset txlb's document uses).
    """
    schema = _deref(document, schema)
    problems = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(
            isinstance(value, _TYPES[n])
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
        ):
            return [f"{where}: {value!r} is not {names}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in schema.get("required", ()):
            if key not in value:
                problems.append(f"{where}: missing {key}")
        for key, item in value.items():
            if key in properties:
                problems.extend(
                    schemaProblems(document, item, properties[key], f"{where}.{key}")
                )
            elif isinstance(extra, dict):
                problems.extend(schemaProblems(document, item, extra, f"{where}.{key}"))
            elif properties:
                # The document lists every field txlb sends.
                problems.append(f"{where}: undocumented {key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems.extend(
                schemaProblems(document, item, schema["items"], f"{where}[{i}]")
            )
    return problems


class OpenAPITests(APITestCase):
    """
    The OpenAPI document describes exactly the routes the API serves, and
    the responses fit it.
    """

    def setUp(self) -> None:
        self.build()
        self.document = _document()

    def documentedOperations(self) -> set[tuple[str, str]]:
        """
        Every (path, METHOD) of the document.
        """
        return {
            (path, method.upper())
            for path, item in self.document["paths"].items()
            for method in item
            if method != "parameters"
        }

    def test_routesMatchDocument(self) -> None:
        """
        The route table and the document's paths and methods are the same.
        """
        routes = {(r.path, m) for r in api.ROUTES for m in r.methods}
        self.assertEqual(routes, self.documentedOperations())

    def test_resourceTreeServesEveryRoute(self) -> None:
        """
        Walking the installed resource tree, each route answers a method
        it lacks with 405 and C{Allow} naming exactly the document's
        methods for that path: the tree, the table and the document agree.
        """
        filled = {
            "{pool}": "app",
            "{name}": "127.0.0.1:3000",
            "{ip}": "127.0.0.1",
            "{port}": "3000",
        }
        for route in api.ROUTES:
            path = "/" + "/".join(filled.get(s, s) for s in route.segments)
            answer = self.call("PUT", path, body={})
            self.assertEqual(answer.code, 405, path)
            documented = {
                m.upper()
                for m in self.document["paths"][route.path]
                if m != "parameters"
            }
            self.assertEqual(set(answer.header("allow").split(", ")), documented, path)

    def test_documentIsWellFormed(self) -> None:
        """
        An OpenAPI 3.1 document whose references resolve, whose operations
        have unique ids and responses, and whose path placeholders are all
        declared parameters.
        """
        document = self.document
        self.assertEqual(document["openapi"], "3.1.0")
        ids = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    _deref(document, node)
                for child in node.values():
                    walk(child)
            elif isinstance(node, list):
                for child in node:
                    walk(child)

        walk(document)
        for path, item in document["paths"].items():
            shared = [_deref(document, p)["name"] for p in item.get("parameters", ())]
            for method, operation in item.items():
                if method == "parameters":
                    continue
                ids.append(operation["operationId"])
                self.assertTrue(operation["responses"], (path, method))
                names = shared + [
                    _deref(document, p)["name"] for p in operation.get("parameters", ())
                ]
                placeholders = [s[1:-1] for s in path.split("/") if s.startswith("{")]
                self.assertEqual(sorted(placeholders), sorted(names), (path, method))
                security = operation["security"]
                if method == "get":
                    self.assertIn({}, security)
                else:
                    self.assertEqual(security, [{"bearer": []}], (path, method))
        self.assertEqual(len(ids), len(set(ids)))

    def test_servedDocument(self) -> None:
        """
        C{GET /openapi.json} serves the document.
        """
        answer = self.call("GET", "/openapi.json", token=None)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.body, self.document)
        self.assertEqual(answer.header("content-type"), "application/json")

    def responseSchema(self, path: str, method: str, code: int) -> Any:
        operation = self.document["paths"][path][method.lower()]
        response = _deref(self.document, operation["responses"][str(code)])
        return response["content"]["application/json"]["schema"]

    def assertFits(self, answer: Answer, path: str, method: str) -> None:
        schema = self.responseSchema(path, method, answer.code)
        self.assertEqual(schemaProblems(self.document, answer.body, schema), [])

    def test_responsesFitTheDocument(self) -> None:
        """
        Every kind of answer has the shape the document gives it.
        """
        self.pool.pick(IPv4Address("TCP", "10.0.0.1", 5000))
        self.pool.backends[0].recordResponse(200, 0.01)
        reads = [
            ("/lb-health", "/lb-health"),
            ("/lb-stats", "/lb-stats"),
            ("/stats", "/stats"),
            ("/stats/detail", "/stats/detail"),
            ("/api/v1/pools", "/api/v1/pools"),
            ("/api/v1/pools/app", "/api/v1/pools/{pool}"),
            ("/api/v1/pools/app/servers", "/api/v1/pools/{pool}/servers"),
            (
                "/api/v1/pools/app/servers/127.0.0.1:3000",
                "/api/v1/pools/{pool}/servers/{name}",
            ),
            ("/api/v1/pools/app/decisions", "/api/v1/pools/{pool}/decisions"),
            ("/api/v1/listeners", "/api/v1/listeners"),
        ]
        for url, path in reads:
            answer = self.call("GET", url)
            self.assertEqual(answer.code, 200, url)
            self.assertFits(answer, path, "GET")
        writes = [
            ("POST", "/servers", "/servers", {"ip": "10.0.0.5", "port": 80}),
            (
                "POST",
                "/api/v1/pools/app/servers",
                "/api/v1/pools/{pool}/servers",
                {"address": "10.0.0.6", "port": 80},
            ),
            (
                "PATCH",
                "/api/v1/pools/app/servers/10.0.0.6:80",
                "/api/v1/pools/{pool}/servers/{name}",
                {"weight": 3},
            ),
            (
                "PATCH",
                "/api/v1/pools/app",
                "/api/v1/pools/{pool}",
                {"algorithm": "maglev"},
            ),
            (
                "DELETE",
                "/api/v1/pools/app/servers/10.0.0.6:80",
                "/api/v1/pools/{pool}/servers/{name}",
                None,
            ),
            ("DELETE", "/servers/10.0.0.5/80", "/servers/{ip}/{port}", None),
            ("POST", "/servers", "/servers", {"ip": "10.0.0.7", "port": 0}),
            ("POST", "/servers", "/servers", {"ip": "127.0.0.1", "port": 3000}),
            ("GET", "/api/v1/pools/nope", "/api/v1/pools/{pool}", None),
        ]
        for method, url, path, body in writes:
            answer = self.call(method, url, body)
            self.assertFits(answer, path, method)


# ------------------------------------------------------------ compat


class CompatTests(APITestCase):
    """
    The endpoints of the original tools.
    """

    def setUp(self) -> None:
        self.build(
            fullConfig(
                {"app": [3000, 3001], "other": [4000]},
                listeners={
                    "web": {"port": 8080, "layer": "L7", "pool": "app"},
                    "db": {"port": 5432, "layer": "L4", "pool": "other"},
                },
            )
        )

    def test_lbHealth(self) -> None:
        """
        C{GET /lb-health} reports every backend.
        """
        self.pool.backends[1].healthy = False
        answer = self.call("GET", "/lb-health", token=None)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.body["status"], "degraded")
        self.assertEqual(
            (answer.body["healthy_backends"], answer.body["total_backends"]), (2, 3)
        )
        self.assertEqual(
            [b["address"] for b in answer.body["backends"]],
            ["127.0.0.1:3000", "127.0.0.1:3001", "127.0.0.1:4000"],
        )

    def test_lbStats(self) -> None:
        """
        C{GET /lb-stats} gives the first listener's algorithm and every
        backend's numbers.
        """
        answer = self.call("GET", "/lb-stats", token=None)
        self.assertEqual(answer.body["algorithm"], "round_robin")
        self.assertEqual(answer.body["backends"][0]["weight"], 1)

    def test_stats(self) -> None:
        """
        C{GET /stats} and C{GET /stats/detail} count successes and
        failures, the latter per server.
        """
        backend = self.pool.backends[0]
        backend.acquire()
        backend.release()
        backend.recordFailure("refused")
        answer = self.call("GET", "/stats", token=None)
        self.assertEqual(set(answer.body), {"client", "server"})
        self.assertEqual(answer.body["server"]["failed"], 1)
        detail = self.call("GET", "/stats/detail", token=None)
        self.assertEqual(len(detail.body["servers"]), 3)
        self.assertEqual(detail.body["servers"][0]["failed"], 1)

    def test_addToDefaultPool(self) -> None:
        """
        C{POST /servers} adds to the first listener's pool, dynamic and
        healthy (no health check), and answers 201 with the server and its
        location.
        """
        answer = self.call("POST", "/servers", {"ip": "10.0.0.9", "port": 8000})
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.body["name"], "10.0.0.9:8000")
        self.assertEqual(answer.body["pool"], "app")
        self.assertTrue(answer.body["dynamic"])
        self.assertEqual(
            answer.header("location"), "/api/v1/pools/app/servers/10.0.0.9%3A8000"
        )
        backend = self.pool.backend("10.0.0.9:8000")
        self.assertIn(backend, self.pool.candidates())
        self.assertEqual(backend.endpoint, "tcp:host=10.0.0.9:port=8000:timeout=5")
        self.assertEqual(control.dynamicNames(self.service, "app"), {"10.0.0.9:8000"})

    def test_addToNamedPoolWithWeight(self) -> None:
        """
        C{"pool"} and C{"weight"} choose the pool and the weight; IPv6
        addresses get a bracketed name.
        """
        answer = self.call(
            "POST",
            "/servers",
            {"ip": "[::1]", "port": 4001, "pool": "other", "weight": 7},
        )
        self.assertEqual(answer.code, 201)
        backend = self.service.pools["other"].backend("[::1]:4001")
        self.assertEqual(backend.configuredWeight, 7)
        self.assertEqual(backend.address, "::1")

    def test_addRefusals(self) -> None:
        """
        Bad input is refused naming the field, an unknown pool is 404 and
        a duplicate 409; none changes anything.
        """
        before = self.snapshot()
        cases = [
            ({"ip": "10.0.0.9", "port": 70000}, 400, "port"),
            ({"ip": "10.0.0.9", "port": "80"}, 400, "port"),
            ({"ip": "10.0.0.9", "port": True}, 400, "port"),
            ({"port": 80}, 400, "ip"),
            ({"ip": "10.0.0.9:80", "port": 80}, 400, "ip"),
            ({"ip": "10.0.0.9"}, 400, "port"),
            ({"ip": "10.0.0.9", "port": 80, "weight": 0}, 400, "weight"),
            ({"ip": "10.0.0.9", "port": 80, "weight": 1001}, 400, "weight"),
            ({"ip": "10.0.0.9", "port": 80, "colour": "red"}, 400, "colour"),
            ({"ip": "10.0.0.9", "port": 80, "pool": 3}, 400, "pool"),
            ({"ip": "10.0.0.9", "port": 80, "pool": "nope"}, 404, "pool"),
            ({"ip": "127.0.0.1", "port": 3000}, 409, "name"),
        ]
        for body, code, field in cases:
            self.assertError(self.call("POST", "/servers", body), code, field)
        answer = self.call("POST", "/servers", {"ip": "10.0.0.9", "port": 70000})
        self.assertEqual(answer.body["error"], "port: must be 1-65535, got 70000")
        self.assertError(
            self.call("POST", "/servers", raw=b"{nope", headers=JSON_HEADERS), 400
        )
        self.assertError(self.call("POST", "/servers", [1, 2]), 400)
        self.assertError(
            self.call("POST", "/servers", raw=b"", headers=JSON_HEADERS), 400
        )
        self.assertEqual(self.snapshot(), before)

    def test_deleteDrainsThenRemoves(self) -> None:
        """
        C{DELETE /servers/<ip>/<port>} answers 202 and drains the server,
        which leaves its pool once idle.
        """
        backend = self.pool.backend("127.0.0.1:3001")
        backend.acquire()
        answer = self.call("DELETE", "/servers/127.0.0.1/3001")
        self.assertEqual(answer.code, 202)
        self.assertEqual(answer.body["status"], "draining")
        (server,) = answer.body["servers"]
        self.assertEqual(
            (server["name"], server["state"]), ("127.0.0.1:3001", "draining")
        )
        self.assertTrue(server["removing"])
        self.assertNotIn(backend, self.pool.candidates())
        self.assertIs(self.pool.backend("127.0.0.1:3001"), backend)
        backend.release()
        self.reactor.advance(control.POLL_INTERVAL)
        self.assertIsNone(self.pool.backend("127.0.0.1:3001"))

    def test_deleteIPv6(self) -> None:
        """
        An IPv6 server is found by its address with or without brackets,
        in any of its forms.
        """
        self.call("POST", "/servers", {"ip": "::1", "port": 81, "pool": "other"})
        self.call("POST", "/servers", {"ip": "::1", "port": 82, "pool": "other"})
        self.assertEqual(self.call("DELETE", "/servers/[::1]/81").code, 202)
        self.assertEqual(self.call("DELETE", "/servers/0:0::1/82").code, 202)
        other = self.service.pools["other"]
        self.assertEqual([b.name for b in other.backends], ["127.0.0.1:4000"])

    def test_deleteRefusals(self) -> None:
        """
        An unknown server is 404, a bad port or address 400; nothing changes.
        """
        before = self.snapshot()
        self.assertError(self.call("DELETE", "/servers/127.0.0.1/3999"), 404, "ip")
        self.assertError(self.call("DELETE", "/servers/127.0.0.1/port"), 400, "port")
        self.assertError(self.call("DELETE", "/servers/127.0.0.1/99999"), 400, "port")
        self.assertError(self.call("DELETE", "/servers/a b/80"), 400, "ip")
        self.assertEqual(self.snapshot(), before)


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
