"""
Tests for the admin API (L{txlb.admin.api}): its OpenAPI document against
the routes and answers, and the HAProxy-style compatibility endpoints.

Everything runs in memory: a L{TxlbService} on a L{MemoryReactorClock},
its admin resource tree driven by L{StubTreq} (see
L{txlb.test.admincase}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address

from txlb.admin import api, control
from txlb.test.admincase import (
    JSON_HEADERS,
    Answer,
    APITestCase,
)
from txlb.test.test_lifecycle import fullConfig

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
