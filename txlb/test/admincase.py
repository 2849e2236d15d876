"""
The fixture of the admin API's in-memory tests: a L{TxlbService} on a
L{MemoryReactorClock} with an admin service, its resource tree driven by
L{StubTreq}, and a fake health-check client.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txlb.admin import control
from txlb.config import AdminConfig, Config
from txlb.service import TxlbService
from txlb.test.test_lifecycle import fullConfig, noFileLimit

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
