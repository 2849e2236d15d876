"""
Tests for L{txlb.ctl}, the C{txlbctl} console command.

Every test runs L{txlb.ctl.main} in this process with a L{FakeOpener} in
place of urllib's: it records each request and answers with canned JSON, so
no test touches the network.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import urllib.error
import urllib.request
from email.message import Message
from io import StringIO
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txlb import _ctltables, ctl
from txlb.admin import views
from txlb.interfaces import IStrategy
from txlb.pool import AdminState, Backend, Pool


def server(name: str, address: str | None = None, **kw: Any) -> dict[str, Any]:
    """
    A server as C{views.serverView} shows it, with C{kw} changed.
    """
    view: dict[str, Any] = {
        "name": name,
        "address": address or name,
        "endpoint": f"tcp:host={name}",
        "state": "active",
        "health": "up",
        "healthy": True,
        "usable": True,
        "weight": 1,
        "effective_weight": 1.0,
        "max_connections": None,
        "connections": 0,
        "total_connections": 0,
        "failures": 0,
        "consecutive_failures": 0,
        "last_failure": None,
        "response_time_ms": None,
        "p50_ms": None,
        "p99_ms": None,
        "responses": {"none": 0, "1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
        "ejected": False,
        "ejection": None,
        "breaker": None,
        "health_checks": [],
        "last_health_check": None,
    }
    view.update(kw)
    return view


APP = {
    "name": "app",
    "algorithm": "least_connections",
    "health_check": True,
    "servers": [
        server(
            "127.0.0.1:3000", weight=3, effective_weight=1.5, connections=12,
            total_connections=950, failures=2, p50_ms=5.0, p99_ms=250.0,
            responses={"none": 0, "1xx": 0, "2xx": 900, "3xx": 0, "4xx": 3, "5xx": 7},
        ),
        server("[::1]:3001", state="draining", health="down", healthy=False,
               usable=False, connections=1, p50_ms=2.5, p99_ms=10.0, removing=True),
        server("web-3", "10.0.0.3:80", health="pending", healthy=False, usable=False,
               ejected=True, breaker={"state": "open"}),
    ],
    "healthy_servers": 1,
    "panic": False,
    "panics": 0,
    "queued": 4,
    "max_queue": 100,
    "dropped": {},
    "no_backend": 0,
}

EMPTY = {
    "name": "spare",
    "algorithm": "round_robin",
    "health_check": False,
    "servers": [],
    "healthy_servers": 0,
    "panic": False,
    "panics": 0,
    "queued": 0,
    "max_queue": 0,
    "dropped": {},
    "no_backend": 0,
}

APP_TABLE = [
    "pool app (least_connections): 1 of 3 servers healthy, 4 queued",
    "NAME            ADDRESS         STATE     HEALTH                           "
    "WEIGHT  IN FLIGHT  P50 MS  P99 MS  ERRORS",
    "127.0.0.1:3000  127.0.0.1:3000  active    up                                "
    "1.5/3         12       5     250       9",
    "[::1]:3001      [::1]:3001      removing  down                              "
    "  1/1          1     2.5      10       0",
    "web-3           10.0.0.3:80     active    pending (ejected, breaker open)   "
    "  1/1          0       -       -       0",
]

STATS = {
    "client": {"success": 1200, "failed": 3},
    "server": {"success": 1190, "failed": 10},
    "servers": [
        {"address": "127.0.0.1:3000", "pool": "app", "success": 1000, "failed": 9,
         "healthy": True, "connections": 12},
        {"address": "[::1]:3001", "pool": "app", "success": 190, "failed": 1,
         "healthy": False, "connections": 0},
    ],
}

HEALTH = {
    "status": "degraded",
    "healthy_backends": 1,
    "total_backends": 2,
    "backends": [
        {"address": "127.0.0.1:3000", "pool": "app", "healthy": True,
         "connections": 12, "response_time_ms": 4.25},
        {"address": "[::1]:3001", "pool": "app", "healthy": False,
         "connections": 0, "response_time_ms": None},
    ],
}


class FakeResponse(io.BytesIO):
    """
    What L{FakeOpener.open} returns for a 2xx answer, like
    L{http.client.HTTPResponse}.
    """

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body)
        self.status = status
        self.reason = "OK"


class FakeOpener:
    """
    Stands in for a L{urllib.request.OpenerDirector}: records each request
    and answers with the next canned answer.

    @ivar answers: what to answer, in order: C{(status, JSON value or
        bytes)}, or an exception to raise (as urllib raises C{URLError}).
    @ivar requests: the L{urllib.request.Request}s made, with their timeouts.
    """

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[urllib.request.Request, float]] = []

    def open(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        self.requests.append((request, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, value = answer
        body = value if isinstance(value, bytes) else json.dumps(value).encode("utf-8")
        if status >= 400:
            raise urllib.error.HTTPError(
                request.full_url, status, "Reason Phrase", Message(), io.BytesIO(body)
            )
        return FakeResponse(status, body)


def headers(request: urllib.request.Request) -> dict[str, str]:
    """
    The request's headers, with lowercase names.
    """
    return {name.lower(): value for name, value in request.header_items()}


def sent(request: urllib.request.Request) -> tuple[str, str, Any]:
    """
    The method, URL and decoded JSON body (or C{None}) of C{request}.
    """
    data = request.data
    body = json.loads(data) if isinstance(data, bytes) else data
    return request.get_method(), request.full_url, body


class CommandTestCase(SynchronousTestCase):
    """
    Runs C{txlbctl} with an environment of the test's choosing.
    """

    def setUp(self) -> None:
        self.environ = {"PATH": "/usr/bin"}
        self.patch(os, "environ", self.environ)

    def txlbctl(self, *argv: str, answers: Any = ((200, {}),)) -> tuple[
        int, str, str, FakeOpener
    ]:
        """
        Run C{txlbctl argv} answering with C{answers}.

        @return: the exit status, standard output, standard error and the
            opener (with the requests made).
        """
        opener = FakeOpener(*answers)
        out, err = StringIO(), StringIO()
        status = ctl.main(list(argv), stdout=out, stderr=err, opener=opener)
        return status, out.getvalue(), err.getvalue(), opener

    def only(self, opener: FakeOpener) -> urllib.request.Request:
        """
        The one request made through C{opener}.
        """
        self.assertEqual(len(opener.requests), 1)
        return opener.requests[0][0]


class ListTests(CommandTestCase):
    """
    C{txlbctl list} shows pools and servers.
    """

    def test_request(self) -> None:
        """
        C{list} GETs C{/api/v1/pools} from the default admin address within
        10 seconds, with no body and, without a token, no Authorization.
        """
        _, _, _, opener = self.txlbctl("list", answers=[(200, {"pools": []})])
        request, timeout = opener.requests[0]
        self.assertEqual(sent(request), ("GET", "http://127.0.0.1:9090/api/v1/pools", None))
        self.assertEqual(timeout, 10.0)
        self.assertNotIn("authorization", headers(request))
        self.assertNotIn("content-type", headers(request))
        self.assertEqual(headers(request)["accept"], "application/json")

    def test_table(self) -> None:
        """
        Each pool has a title line and an aligned table: weight as
        effective/configured, errors as 5xx responses plus failures, C{-}
        for unknown latencies, C{removing} for a draining server being
        removed, ejection and an open breaker beside health.
        """
        status, out, err, _ = self.txlbctl(
            "list", answers=[(200, {"pools": [APP, EMPTY]})]
        )
        self.assertEqual(
            (status, out.splitlines(), err),
            (
                0,
                APP_TABLE
                + ["", "pool spare (round_robin): 0 of 0 servers healthy", "  no servers"],
                "",
            ),
        )

    def test_panic(self) -> None:
        """
        A pool in panic says so in its title.
        """
        pool = dict(EMPTY, panic=True)
        _, out, _, _ = self.txlbctl("list", answers=[(200, {"pools": [pool]})])
        self.assertEqual(
            out.splitlines()[0],
            "pool spare (round_robin): 0 of 0 servers healthy, PANIC (no server usable)",
        )

    def test_noPools(self) -> None:
        """
        Without pools, C{list} says so.
        """
        self.assertEqual(
            self.txlbctl("list", answers=[(200, {"pools": []})])[:3], (0, "no pools\n", "")
        )

    def test_onePool(self) -> None:
        """
        C{list POOL} GETs that pool, its name percent-encoded, and shows it.
        """
        status, out, _, opener = self.txlbctl("list", "a/b c", answers=[(200, APP)])
        self.assertEqual(
            sent(self.only(opener)),
            ("GET", "http://127.0.0.1:9090/api/v1/pools/a%2Fb%20c", None),
        )
        self.assertEqual((status, out.splitlines()), (0, APP_TABLE))

    def test_json(self) -> None:
        """
        With C{--json}, before or after the command, the API's answer is
        printed as JSON instead of a table.
        """
        answer = {"pools": [APP]}
        for argv in (["--json", "list"], ["list", "--json"]):
            status, out, _, _ = self.txlbctl(*argv, answers=[(200, answer)])
            self.assertEqual((status, json.loads(out)), (0, answer))
            self.assertEqual(out, json.dumps(answer, indent=2) + "\n")

    def test_realShapes(self) -> None:
        """
        The table reads the fields L{views.poolView} really writes.
        """

        @implementer(IStrategy)
        class First:
            def choose(self, candidates: Any, context: Any) -> Any:
                return candidates[0]

        busy = Backend(name="a", address="10.0.0.1", port=80, endpoint="tcp:10.0.0.1:80",
                       configuredWeight=2, failures=1)
        busy.activeConnections = 3
        busy.recordResponse(200, 0.004)
        busy.recordResponse(503, 0.2)
        off = Backend(name="b", address="::1", port=81, endpoint="tcp:\\:\\:1:81",
                      healthy=False, state=AdminState.disabled)
        pool = Pool(name="web", algorithm="first", strategy=First(), clock=Clock(),
                    backends=[busy, off])
        answer = json.loads(json.dumps({"pools": [views.poolView(pool)]}))
        _, out, _, _ = self.txlbctl("list", answers=[(200, answer)])
        self.assertEqual(
            out.splitlines(),
            [
                "pool web (first): 1 of 2 servers healthy",
                "NAME  ADDRESS      STATE     HEALTH  WEIGHT  IN FLIGHT  P50 MS  "
                "P99 MS  ERRORS",
                "a     10.0.0.1:80  active    up         2/2          3       5  "
                "   250       2",
                "b     [::1]:81     disabled  down       1/1          0       -  "
                "     -       0",
            ],
        )


class ChangeTests(CommandTestCase):
    """
    The commands that change things send the token and JSON bodies.
    """

    def setUp(self) -> None:
        super().setUp()
        self.environ["TXLB_ADMIN_TOKEN"] = "s3cret"

    def assertMutation(self, request: urllib.request.Request, method: str, path: str,
                       body: Any) -> None:
        """
        C{request} is C{method path} with C{body} as JSON, and the token.
        """
        self.assertEqual(sent(request), (method, "http://127.0.0.1:9090" + path, body))
        self.assertEqual(headers(request)["authorization"], "Bearer s3cret")
        if body is not None:
            self.assertEqual(headers(request)["content-type"], "application/json")
        else:
            self.assertNotIn("content-type", headers(request))

    def test_add(self) -> None:
        """
        C{add POOL ADDRESS:PORT} POSTs the address and port to the pool's
        servers and reports the new server.
        """
        status, out, err, opener = self.txlbctl(
            "add", "app", "127.0.0.1:3000",
            answers=[(201, server("127.0.0.1:3000", health="pending"))],
        )
        self.assertMutation(
            self.only(opener), "POST", "/api/v1/pools/app/servers",
            {"address": "127.0.0.1", "port": 3000},
        )
        self.assertEqual(
            (status, out, err),
            (0, "pool app: added server 127.0.0.1:3000 at 127.0.0.1:3000, weight 1, "
                "health pending\n", ""),
        )

    def test_addIPv6WithOptions(self) -> None:
        """
        An IPv6 address is written in brackets and sent without them;
        C{--weight}, C{--name} and C{--max-connections} are sent too.
        """
        status, _, _, opener = self.txlbctl(
            "add", "app", "[::1]:80", "--weight", "5", "--name", "local",
            "--max-connections", "100", answers=[(201, server("local", "[::1]:80"))],
        )
        self.assertMutation(
            self.only(opener), "POST", "/api/v1/pools/app/servers",
            {"address": "::1", "port": 80, "name": "local", "weight": 5,
             "max_connections": 100},
        )
        self.assertEqual(status, 0)

    def test_addBadAddress(self) -> None:
        """
        An address without a port, an IPv6 one without brackets or a port
        out of range is a usage error (2); nothing is sent.
        """
        for bad, why in [
            ("127.0.0.1", "'127.0.0.1' is not ADDRESS:PORT"),
            ("::1:80", "'::1:80': write an IPv6 address in brackets, as [::1]:80"),
            ("[::1]80", "'[::1]80' is not [ADDRESS]:PORT"),
            ("host:0", "'host:0': the port must be 1 to 65535"),
            ("host:65536", "'host:65536': the port must be 1 to 65535"),
            (":80", "':80' has no address"),
        ]:
            status, out, err, opener = self.txlbctl("add", "app", bad)
            self.assertEqual((status, out, opener.requests), (2, "", []))
            self.assertTrue(err.startswith("usage: txlbctl add"), err)
            self.assertEqual(
                err.splitlines()[-1], f"txlbctl add: error: argument ADDRESS:PORT: {why}"
            )

    def test_states(self) -> None:
        """
        C{drain}, C{enable} and C{disable} PATCH the server's state, its
        name percent-encoded as one path segment.
        """
        for command, state in [
            ("drain", "draining"), ("enable", "active"), ("disable", "disabled")
        ]:
            status, out, _, opener = self.txlbctl(
                command, "app", "[::1]:80", answers=[(200, server("[::1]:80", state=state))]
            )
            self.assertMutation(
                self.only(opener), "PATCH",
                "/api/v1/pools/app/servers/%5B%3A%3A1%5D%3A80", {"state": state},
            )
            self.assertEqual(
                (status, out), (0, f"pool app: server [::1]:80 is {state}\n")
            )

    def test_remove(self) -> None:
        """
        C{remove} DELETEs the server, without a body.
        """
        status, out, _, opener = self.txlbctl(
            "remove", "app", "127.0.0.1:3000", answers=[(202, {})]
        )
        self.assertMutation(
            self.only(opener), "DELETE", "/api/v1/pools/app/servers/127.0.0.1%3A3000", None
        )
        self.assertEqual(
            (status, out),
            (0, "pool app: server 127.0.0.1:3000 is draining and will be removed\n"),
        )

    def test_removeEmptyAnswer(self) -> None:
        """
        An empty answer is fine; with C{--json} nothing is printed.
        """
        self.assertEqual(
            self.txlbctl("--json", "remove", "app", "a", answers=[(202, b"")])[:3],
            (0, "", ""),
        )

    def test_weight(self) -> None:
        """
        C{weight POOL SERVER N} PATCHes the weight.
        """
        status, out, _, opener = self.txlbctl(
            "weight", "app", "127.0.0.1:3000", "7",
            answers=[(200, server("127.0.0.1:3000", weight=7))],
        )
        self.assertMutation(
            self.only(opener), "PATCH", "/api/v1/pools/app/servers/127.0.0.1%3A3000",
            {"weight": 7},
        )
        self.assertEqual((status, out), (0, "pool app: server 127.0.0.1:3000 has weight 7\n"))

    def test_weightNotANumber(self) -> None:
        """
        A weight that is not a non-negative integer is a usage error.
        """
        for bad in ("x", "-1", "1.5"):
            status, _, err, opener = self.txlbctl("weight", "app", "a", bad)
            self.assertEqual((status, opener.requests), (2, []))
            self.assertIn("argument N:", err)

    def test_strategy(self) -> None:
        """
        C{strategy POOL ALGORITHM} PATCHes the pool with the algorithm and
        its options: values that are JSON are sent as JSON, others as
        strings.
        """
        status, out, _, opener = self.txlbctl(
            "strategy", "app", "consistent_hash", "--option", "replicas=100",
            "-o", "key=client_ip", "--option", "sticky=true", "-o", "list=[1, 2]",
            "-o", "empty=",
            answers=[(200, dict(APP, algorithm="consistent_hash"))],
        )
        self.assertMutation(
            self.only(opener), "PATCH", "/api/v1/pools/app",
            {"algorithm": "consistent_hash",
             "options": {"replicas": 100, "key": "client_ip", "sticky": True,
                         "list": [1, 2], "empty": ""}},
        )
        self.assertEqual(
            (status, out),
            (0, 'pool app: algorithm consistent_hash (replicas=100, key="client_ip", '
                'sticky=true, list=[1, 2], empty="")\n'),
        )

    def test_strategyWithoutOptions(self) -> None:
        """
        Without options, an empty C{options} object is sent.
        """
        status, out, _, opener = self.txlbctl(
            "strategy", "app", "round_robin", answers=[(200, APP)]
        )
        self.assertEqual(
            sent(self.only(opener))[2], {"algorithm": "round_robin", "options": {}}
        )
        self.assertEqual(status, 0)

    def test_strategyBadOption(self) -> None:
        """
        An option without C{=} is a usage error.
        """
        status, _, err, opener = self.txlbctl("strategy", "app", "x", "-o", "replicas")
        self.assertEqual((status, opener.requests), (2, []))
        self.assertEqual(
            err.splitlines()[-1],
            "txlbctl strategy: error: argument -o/--option: 'replicas' is not KEY=VALUE",
        )


class ReadTests(CommandTestCase):
    """
    C{stats}, C{health}, C{decisions} and C{listeners}.
    """

    def test_stats(self) -> None:
        """
        C{stats} GETs C{/stats/detail} and shows the client and server
        totals, then each server.
        """
        status, out, _, opener = self.txlbctl("stats", answers=[(200, STATS)])
        self.assertEqual(
            sent(self.only(opener)), ("GET", "http://127.0.0.1:9090/stats/detail", None)
        )
        self.assertEqual(
            (status, out.splitlines()),
            (
                0,
                [
                    "        SUCCESS  FAILED",
                    "client     1200       3",
                    "server     1190      10",
                    "",
                    "POOL  SERVER          SUCCESS  FAILED  HEALTHY  IN FLIGHT",
                    "app   127.0.0.1:3000     1000       9  yes             12",
                    "app   [::1]:3001          190       1  no               0",
                ],
            ),
        )

    def test_statsJSON(self) -> None:
        """
        C{stats --json} prints the answer.
        """
        status, out, _, _ = self.txlbctl("stats", "--json", answers=[(200, STATS)])
        self.assertEqual((status, json.loads(out)), (0, STATS))

    def test_health(self) -> None:
        """
        C{health} GETs C{/lb-health} and shows the status and each server.
        """
        status, out, _, opener = self.txlbctl("health", answers=[(200, HEALTH)])
        self.assertEqual(
            sent(self.only(opener)), ("GET", "http://127.0.0.1:9090/lb-health", None)
        )
        self.assertEqual(
            (status, out.splitlines()),
            (
                0,
                [
                    "status: degraded, 1 of 2 servers healthy",
                    "POOL  SERVER          HEALTHY  IN FLIGHT  RESPONSE MS",
                    "app   127.0.0.1:3000  yes             12         4.25",
                    "app   [::1]:3001      no               0            -",
                ],
            ),
        )

    def test_decisions(self) -> None:
        """
        C{decisions POOL} GETs the pool's decisions and shows each with its
        time (UTC), client, choice, reason and candidates.
        """
        answer = {
            "pool": "app",
            "decisions": [
                {
                    "at": 1700000000.25,
                    "client": "10.1.1.1",
                    "chosen": "b",
                    "reason": "fewest in flight per weight: 0/1",
                    "candidates": [
                        {"name": "a", "in_flight": 2, "weight": 1.0, "latency_ms": 3.0},
                        {"name": "b", "in_flight": 0, "weight": 1.0, "latency_ms": None},
                    ],
                },
                {"at": 1700000060, "client": None, "chosen": None,
                 "reason": "no usable backend", "candidates": []},
            ],
        }
        status, out, _, opener = self.txlbctl(
            "decisions", "my pool", answers=[(200, answer)]
        )
        self.assertEqual(
            sent(self.only(opener)),
            ("GET", "http://127.0.0.1:9090/api/v1/pools/my%20pool/decisions", None),
        )
        self.assertEqual(
            (status, out.splitlines()),
            (
                0,
                [
                    "2023-11-14T22:13:20Z  10.1.1.1 -> b: fewest in flight per weight: 0/1",
                    "  candidates: a (2 in flight, weight 1), b (0 in flight, weight 1)",
                    "2023-11-14T22:14:20Z  unknown client -> no server: no usable backend",
                ],
            ),
        )

    def test_decisionsCandidateLists(self) -> None:
        """
        Candidates given as C{[name, in flight, weight, latency]} lists
        show the same way.
        """
        answer = {"decisions": [{"at": 0, "client": "c", "chosen": "a", "reason": "r",
                                 "candidates": [["a", 1, 2.5, None]]}]}
        _, out, _, _ = self.txlbctl("decisions", "app", answers=[(200, answer)])
        self.assertEqual(
            out.splitlines(),
            ["1970-01-01T00:00:00Z  c -> a: r", "  candidates: a (1 in flight, weight 2.5)"],
        )

    def test_noDecisions(self) -> None:
        """
        Without recorded decisions, C{decisions} says so.
        """
        _, out, _, _ = self.txlbctl("decisions", "app", answers=[(200, {"decisions": []})])
        self.assertEqual(out, "pool app: no decisions recorded yet\n")

    def test_listeners(self) -> None:
        """
        C{listeners} GETs C{/api/v1/listeners} and shows a table; a
        listener not bound shows its endpoint.
        """
        answer = {
            "listeners": [
                {"name": "web", "layer": "L7", "pool": "app",
                 "endpoint": "tcp:8080", "address": "127.0.0.1:8080",
                 "connections": 3, "accepted": None, "shed": 0, "counters": {}},
                {"name": "raw", "layer": "L4", "pool": "db",
                 "endpoint": "unix:/run/x.sock", "address": None,
                 "connections": 0, "accepted": 17, "shed": 2, "counters": {}},
            ]
        }
        status, out, _, opener = self.txlbctl("listeners", answers=[(200, answer)])
        self.assertEqual(
            sent(self.only(opener)), ("GET", "http://127.0.0.1:9090/api/v1/listeners", None)
        )
        self.assertEqual(
            (status, out.splitlines()),
            (
                0,
                [
                    "NAME  LAYER  ADDRESS           POOL  IN FLIGHT  ACCEPTED  SHED",
                    "web   L7     127.0.0.1:8080    app           3         -     0",
                    "raw   L4     unix:/run/x.sock  db            0        17     2",
                ],
            ),
        )


class ErrorTests(CommandTestCase):
    """
    API errors exit 1, an unreachable API 3, each with one line on
    standard error.
    """

    def test_badRequestNamesField(self) -> None:
        """
        A 400 naming a field prints the status, message and field; exit 1.
        """
        status, out, err, _ = self.txlbctl(
            "weight", "app", "a", "100000",
            answers=[(400, {"error": "weight must be at most 1000", "field": "weight"})],
        )
        self.assertEqual(
            (status, out, err),
            (1, "", "txlbctl: error: 400 weight must be at most 1000 (field: weight)\n"),
        )

    def test_fieldNamedInMessage(self) -> None:
        """
        A message that starts with its field (as txlb's do) is printed
        as it is.
        """
        status, _, err, _ = self.txlbctl(
            "weight", "app", "a", "100000",
            answers=[(400, {"error": "weight: must be 1-1000, got 100000",
                            "field": "weight"})],
        )
        self.assertEqual(
            (status, err), (1, "txlbctl: error: 400 weight: must be 1-1000, got 100000\n")
        )

    def test_unauthorized(self) -> None:
        """
        A 401 prints its message.
        """
        status, _, err, _ = self.txlbctl(
            "drain", "app", "a",
            answers=[(401, {"error": "this call needs Authorization: Bearer <token>"})],
        )
        self.assertEqual(
            (status, err),
            (1, "txlbctl: error: 401 this call needs Authorization: Bearer <token>\n"),
        )

    def test_notFound(self) -> None:
        """
        A 404 prints its message, also with C{--json}.
        """
        status, out, err, _ = self.txlbctl(
            "--json", "list", "nope", answers=[(404, {"error": "no pool named 'nope'"})]
        )
        self.assertEqual(
            (status, out, err), (1, "", "txlbctl: error: 404 no pool named 'nope'\n")
        )

    def test_errorNotJSON(self) -> None:
        """
        An error answer that is not JSON (or has no C{"error"}) prints the
        HTTP reason.
        """
        for body in (b"<html>No Such Resource</html>", b'{"detail": 1}'):
            status, _, err, _ = self.txlbctl("stats", answers=[(404, body)])
            self.assertEqual((status, err), (1, "txlbctl: error: 404 Reason Phrase\n"))

    def test_answerNotJSON(self) -> None:
        """
        A 2xx answer that is not JSON is an error (exit 1).
        """
        status, out, err, _ = self.txlbctl("stats", answers=[(200, b"<html>hi</html>")])
        self.assertEqual(
            (status, out, err), (1, "", "txlbctl: error: 200 the answer is not JSON\n")
        )

    def test_connectionRefused(self) -> None:
        """
        A refused connection exits 3 with one line naming the URL.
        """
        refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        status, out, err, _ = self.txlbctl("list", answers=[refused])
        self.assertEqual(
            (status, out, err),
            (3, "", "txlbctl: error: cannot reach the admin API at "
                    "http://127.0.0.1:9090: connection refused\n"),
        )

    def test_otherConnectionFailures(self) -> None:
        """
        A timeout, an unknown host, a closed connection or another socket
        error exits 3 too, saying why.
        """
        for failure, why in [
            (urllib.error.URLError(TimeoutError("timed out")), "no answer within 10 s"),
            (TimeoutError("timed out"), "no answer within 10 s"),
            (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")),
             "unknown host (Name or service not known)"),
            (http.client.RemoteDisconnected("closed"),
             "the connection closed without an answer"),
            (urllib.error.URLError(OSError(113, "No route to host")), "no route to host"),
        ]:
            status, _, err, _ = self.txlbctl("--url", "http://lb:9", "stats",
                                             answers=[failure])
            self.assertEqual(
                (status, err),
                (3, f"txlbctl: error: cannot reach the admin API at http://lb:9: {why}\n"),
            )


class OptionTests(CommandTestCase):
    """
    Where the admin URL and token come from.
    """

    def test_urlFromEnvironment(self) -> None:
        """
        C{TXLB_ADMIN_URL} replaces the default URL; a trailing slash and a
        path prefix are kept right.
        """
        self.environ["TXLB_ADMIN_URL"] = "https://lb.example:8443/admin/"
        _, _, _, opener = self.txlbctl("stats")
        self.assertEqual(
            sent(self.only(opener))[1], "https://lb.example:8443/admin/stats/detail"
        )

    def test_urlOption(self) -> None:
        """
        C{--url}, before or after the command, wins over C{TXLB_ADMIN_URL}.
        """
        self.environ["TXLB_ADMIN_URL"] = "http://env:1"
        for argv in (["--url", "http://flag:2", "stats"], ["stats", "--url", "http://flag:2"]):
            _, _, _, opener = self.txlbctl(*argv)
            self.assertEqual(sent(self.only(opener))[1], "http://flag:2/stats/detail")

    def test_badURL(self) -> None:
        """
        A URL that is not http or https is a usage error.
        """
        status, _, err, opener = self.txlbctl("--url", "lb:9090", "stats")
        self.assertEqual((status, opener.requests), (2, []))
        self.assertEqual(
            err.splitlines()[-1],
            "txlbctl: error: argument --url: 'lb:9090' is not an http:// or https:// URL",
        )

    def tokenSent(self, *argv: str) -> str | None:
        """
        The Authorization header C{txlbctl argv stats} sends.
        """
        status, _, err, opener = self.txlbctl(*argv, "stats")
        self.assertEqual((status, err), (0, ""))
        return headers(self.only(opener)).get("authorization")

    def tokenFile(self, text: str) -> str:
        """
        A file holding C{text}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_tokenSentWithReads(self) -> None:
        """
        The token goes with reads too (reads may be closed).
        """
        self.assertEqual(self.tokenSent("--token", "t1"), "Bearer t1")

    def test_tokenFromEnvironment(self) -> None:
        """
        C{TXLB_ADMIN_TOKEN} gives the token; C{--token} wins over it.
        """
        self.environ["TXLB_ADMIN_TOKEN"] = "env"
        self.assertEqual(self.tokenSent(), "Bearer env")
        self.assertEqual(self.tokenSent("--token", "flag"), "Bearer flag")

    def test_tokenFile(self) -> None:
        """
        C{--token-file} reads the token, without surrounding whitespace,
        and wins over C{TXLB_ADMIN_TOKEN}.
        """
        self.environ["TXLB_ADMIN_TOKEN"] = "env"
        path = self.tokenFile("  from-file\n")
        self.assertEqual(self.tokenSent("--token-file", path), "Bearer from-file")

    def test_tokenFileFromEnvironment(self) -> None:
        """
        C{TXLB_ADMIN_TOKEN_FILE} names the token file when no token is
        given otherwise.
        """
        self.environ["TXLB_ADMIN_TOKEN_FILE"] = self.tokenFile("env-file\n")
        self.assertEqual(self.tokenSent(), "Bearer env-file")
        self.environ["TXLB_ADMIN_TOKEN"] = "env"
        self.assertEqual(self.tokenSent(), "Bearer env")

    def test_tokenFileUnreadable(self) -> None:
        """
        A missing or empty token file is a usage error; nothing is sent.
        """
        missing = os.path.abspath(self.mktemp())
        empty = self.tokenFile("\n")
        for path, why in [
            (missing, f"cannot read the token file {missing}: no such file or directory"),
            (empty, f"the token file {empty} is empty"),
        ]:
            status, _, err, opener = self.txlbctl("--token-file", path, "stats")
            self.assertEqual((status, opener.requests), (2, []))
            self.assertEqual(err.splitlines()[-1], f"txlbctl: error: {why}")

    def test_tokenNotAHeader(self) -> None:
        """
        A token with a line break is a usage error; nothing is sent.
        """
        status, _, err, opener = self.txlbctl("--token", "a\r\nX-Evil: 1", "stats")
        self.assertEqual((status, opener.requests), (2, []))
        self.assertEqual(
            err.splitlines()[-1],
            "txlbctl: error: the token must be printable ASCII",
        )

    def test_tokenAndTokenFile(self) -> None:
        """
        C{--token} with C{--token-file} is a usage error, wherever they are.
        """
        for argv in (
            ["--token", "a", "--token-file", "b", "stats"],
            ["--token", "a", "stats", "--token-file", "b"],
        ):
            status, _, err, _ = self.txlbctl(*argv)
            self.assertEqual(status, 2)
            self.assertIn("--token", err.splitlines()[-1])

    def test_noCommand(self) -> None:
        """
        Without a command, the help goes to standard error; exit 2.
        """
        status, out, err, opener = self.txlbctl()
        self.assertEqual((status, out, opener.requests), (2, "", []))
        self.assertTrue(err.startswith("usage: txlbctl"), err)

    def test_unknownCommand(self) -> None:
        """
        An unknown command is a usage error.
        """
        status, _, err, _ = self.txlbctl("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("invalid choice: 'frobnicate'", err)

    def test_help(self) -> None:
        """
        C{--help} prints to standard output and exits 0.
        """
        status, out, err, _ = self.txlbctl("--help")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("drain", out)
        status, out, _, _ = self.txlbctl("add", "--help")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("usage: txlbctl add"), out)

    def test_version(self) -> None:
        """
        C{--version} prints the version.
        """
        status, out, _, _ = self.txlbctl("--version")
        self.assertEqual((status, out), (0, f"txlbctl {ctl.__version__}\n"))

    def test_defaultOpener(self) -> None:
        """
        Without an opener, txlb's default one is used.
        """
        opener = FakeOpener((200, {"pools": []}))
        self.patch(ctl, "defaultOpener", lambda: opener)
        status = ctl.main(["list"], stdout=StringIO(), stderr=StringIO())
        self.assertEqual((status, len(opener.requests)), (0, 1))

    def test_defaultOpenerIgnoresProxiesAndRedirects(self) -> None:
        """
        The default opener sends nothing through a proxy from the
        environment (the token would go with it) and follows no redirect.
        """
        self.patch(os, "environ", {**os.environ, "http_proxy": "http://127.0.0.1:1"})
        opener = ctl.defaultOpener()
        # urllib's default ProxyHandler (reading the environment) is left
        # out; an empty one handles nothing and is not kept.
        proxies = [h for h in opener.handlers if isinstance(h, urllib.request.ProxyHandler)]
        self.assertEqual([h.proxies for h in proxies if h.proxies], [])
        redirect = [
            h for h in opener.handlers
            if isinstance(h, urllib.request.HTTPRedirectHandler)
        ]
        self.assertEqual(len(redirect), 1)
        self.assertIsNone(
            redirect[0].redirect_request(None, None, 302, "Found", {}, "http://evil/")
        )

    def test_nonASCIIToken(self) -> None:
        """
        A token that cannot go in a header is a usage error, not a crash.
        """
        status, _, err, opener = self.txlbctl("--token", "tökén-0123456789", "stats")
        self.assertEqual((status, opener.requests), (2, []))


class FormatTableTests(SynchronousTestCase):
    """
    L{_ctltables.formatTable} aligns columns.
    """

    def test_align(self) -> None:
        """
        Columns are as wide as their widest cell, two spaces apart; right
        columns align right; lines have no trailing spaces; C{None} is
        C{-}, booleans C{yes}/C{no}, floats without trailing zeros.
        """
        self.assertEqual(
            _ctltables.formatTable(
                ["A", "NUMBER", "C"],
                [["long text", 1.50, True], ["x", None, False], ["y", 1234, ""]],
                right=[1],
            ),
            [
                "A          NUMBER  C",
                "long text     1.5  yes",
                "x               -  no",
                "y            1234",
            ],
        )
