"""
The admin service's HTTP API, described by C{openapi.json} (served as
C{GET /openapi.json}).

Two families of routes, all in L{ROUTES}, the one table that both the
dispatcher and the tests read:

  - the endpoints scripts written for the original tools already call:
    C{GET /lb-health}, C{GET /lb-stats}, C{GET /stats}, C{GET
    /stats/detail}, C{POST /servers} (C{{"ip": ..., "port": ...}}) and
    C{DELETE /servers/<ip>/<port>};
  - txlb's REST API under C{/api/v1}: pools, their servers, their recent
    routing decisions, and the listeners.

Every request passes the L{Guard} first: a read (C{GET}) its read check, any
other method its write check (token, Host, Origin, JSON body), so a refused
request changes nothing.  Then the input is checked in full before anything
changes (L{txlb.admin.control}): errors are JSON objects, C{{"error":
"port: must be 1-65535, got 70000", "field": "port"}}, with status 400 (bad
input, naming the field), 404 (unknown pool, server or path), 405 (wrong
method, with C{Allow}), 409 (duplicate) or the guard's 401, 403, 415, 421.

Path segments are percent-decoded (by L{twisted.web.server.Request}, after
splitting on C{/}): a server named C{[::1]:80} is
C{/api/v1/pools/app/servers/%5B%3A%3A1%5D%3A80}, or the same unencoded.
"""

from __future__ import annotations

import importlib.resources
from typing import Any, Callable, Mapping
from urllib.parse import quote

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from txlb.admin import control, views
from txlb.admin.control import ControlError
from txlb.admin.guard import Guard, Refused, readJSON, writeError, writeJSON
from txlb.pool import Backend, Pool

#: The methods that only read.
READ_METHODS = frozenset({"GET", "HEAD"})


@attrs.frozen(eq=False)
class Route:
    """
    One path of the API and the handler of each method it answers.

    @ivar path: the path as the OpenAPI document writes it, placeholders
        in braces (C{/api/v1/pools/{pool}}).
    @ivar methods: upper-case method to the name of the L{AdminAPI} method
        that handles it.
    """

    path: str
    methods: Mapping[str, str]

    @property
    def segments(self) -> tuple[str, ...]:
        """
        The path's segments, without the leading C{/}.
        """
        return tuple(self.path.lstrip("/").split("/"))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """
        The values of the placeholders when C{segments} is this path, else
        C{None}.
        """
        mine = self.segments
        if len(mine) != len(segments):
            return None
        values = {}
        for pattern, segment in zip(mine, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not segment:
                    return None
                values[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return values


ROUTES: tuple[Route, ...] = (
    Route("/lb-health", {"GET": "lbHealth"}),
    Route("/lb-stats", {"GET": "lbStats"}),
    Route("/stats", {"GET": "stats"}),
    Route("/stats/detail", {"GET": "statsDetail"}),
    Route("/servers", {"POST": "compatAddServer"}),
    Route("/servers/{ip}/{port}", {"DELETE": "compatRemoveServer"}),
    Route("/openapi.json", {"GET": "openAPI"}),
    Route("/api/v1/pools", {"GET": "listPools"}),
    Route("/api/v1/pools/{pool}", {"GET": "getPool", "PATCH": "patchPool"}),
    Route("/api/v1/pools/{pool}/servers", {"GET": "listServers", "POST": "addServer"}),
    Route(
        "/api/v1/pools/{pool}/servers/{name}",
        {"GET": "getServer", "PATCH": "patchServer", "DELETE": "removeServer"},
    ),
    Route("/api/v1/pools/{pool}/decisions", {"GET": "decisions"}),
    Route("/api/v1/listeners", {"GET": "listListeners"}),
)


def openAPIDocument() -> bytes:
    """
    The OpenAPI 3.1 document of L{ROUTES}, as shipped in the package.
    """
    return importlib.resources.files("txlb.admin").joinpath("openapi.json").read_bytes()


def serverPath(pool: Pool, backend: Backend) -> str:
    """
    The API path of C{backend} of C{pool}, its name percent-encoded.
    """
    return (
        f"/api/v1/pools/{quote(pool.name, safe='')}/servers/"
        f"{quote(backend.name, safe='')}"
    )


def _fields(request: IRequest, known: tuple[str, ...]) -> dict[str, Any]:
    """
    The request's JSON object body.

    @raise Refused: 400 when it is not a JSON object.
    @raise ControlError: 400 naming a field not in C{known}.
    """
    body = readJSON(request)
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    for key in body:
        if key not in known:
            raise ControlError(
                400, str(key), f"unknown field (known: {', '.join(known)})"
            )
    return body


class AdminAPI:
    """
    The handlers of L{ROUTES} over one running L{txlb.service.TxlbService}.

    Each handler takes the request and the path's placeholders as keyword
    arguments and returns C{(status, value)}: a JSON-able value, or
    C{bytes} already encoded (its content type set).
    """

    _log = Logger()

    def __init__(self, txlb: Any, guard: Guard, reactor: Any) -> None:
        self.txlb = txlb
        self.guard = guard
        self.reactor = reactor
        self._openAPI = openAPIDocument()

    # ------------------------------------------------------------ dispatch

    def render(self, request: IRequest) -> bytes:
        """
        Answer C{request}: find its route, check it with the guard, run
        the handler.
        """
        segments = [
            s.decode("utf-8", "replace") for s in request.prepath + request.postpath
        ]
        if len(segments) > 1 and segments[-1] == "":
            # A trailing slash names the same thing.
            segments.pop()
        method = request.method.decode("ascii", "replace").upper()
        try:
            for route in ROUTES:
                params = route.match(segments)
                if params is not None:
                    break
            else:
                self.guard.checkRead(request)
                return writeError(request, 404, "no such resource")
            handler = route.methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                self.guard.checkRead(request)
                allowed = ", ".join(route.methods)
                request.setHeader(b"allow", allowed.encode("ascii"))
                return writeError(
                    request,
                    405,
                    f"{method} is not allowed on {route.path} (allowed: {allowed})",
                )
            if method in READ_METHODS:
                self.guard.checkRead(request)
            else:
                self.guard.checkWrite(request)
            status, value = getattr(self, handler)(request, **params)
        except Refused as e:
            return writeError(request, e.status, e.message)
        except ControlError as e:
            error: dict[str, Any] = {"error": str(e)}
            if e.field is not None:
                error["field"] = e.field
            return writeJSON(request, error, e.status)
        except Exception:
            self._log.failure(
                "admin API: {method} {path} failed",
                method=method,
                path="/" + "/".join(segments),
            )
            return writeError(request, 500, "internal error (see txlb's log)")
        if isinstance(value, bytes):
            request.setResponseCode(status)
            return value
        return writeJSON(request, value, status)

    # ------------------------------------------------------------ views

    def _server(self, pool: Pool, backend: Backend) -> dict[str, Any]:
        view = views.serverView(backend, pool, views.poolCheck(self.txlb, pool))
        return self._decorate(pool, backend, view)

    @staticmethod
    def _decorate(pool: Pool, backend: Backend, view: dict[str, Any]) -> dict[str, Any]:
        view["pool"] = pool.name
        view["dynamic"] = control.isDynamic(pool, backend.name)
        view["removing"] = control.isRemoving(pool, backend.name)
        return view

    def _pool(self, pool: Pool) -> dict[str, Any]:
        view = views.poolView(pool, self.txlb)
        for backend, server in zip(pool.backends, view["servers"], strict=True):
            self._decorate(pool, backend, server)
        return view

    # ------------------------------------------------------------ compat

    def lbHealth(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /lb-health}.
        """
        return 200, views.lbHealth(self.txlb)

    def lbStats(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /lb-stats}.
        """
        return 200, views.lbStats(self.txlb)

    def stats(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /stats}.
        """
        return 200, views.stats(self.txlb)

    def statsDetail(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /stats/detail}.
        """
        return 200, views.statsDetail(self.txlb)

    def defaultPool(self) -> str:
        """
        The pool C{POST /servers} adds to without C{"pool"}: the first
        listener's, else the first pool.
        """
        for listener in self.txlb.listeners:
            return listener.listener.pool
        return next(iter(self.txlb.pools), "")

    def compatAddServer(self, request: IRequest) -> tuple[int, Any]:
        """
        C{POST /servers} with C{{"ip": ..., "port": ...}} and optionally
        C{"pool"} and C{"weight"}: 201 with the new server.
        """
        body = _fields(request, ("ip", "port", "pool", "weight"))
        poolName = body.get("pool", self.defaultPool())
        if not isinstance(poolName, str):
            raise ControlError(400, "pool", f"must be a pool name, got {poolName!r}")
        try:
            backend = control.addServer(
                self.txlb,
                poolName,
                address=body.get("ip"),
                port=body.get("port"),
                weight=body.get("weight", 1),
            )
        except ControlError as e:
            if e.field == "address":
                e.field = "ip"
            raise
        pool = self.txlb.pools[poolName]
        request.setHeader(b"location", serverPath(pool, backend).encode("ascii"))
        return 201, self._server(pool, backend)

    def compatRemoveServer(
        self, request: IRequest, ip: str, port: str
    ) -> tuple[int, Any]:
        """
        C{DELETE /servers/<ip>/<port>}: every server at that address, in any
        pool, drains and is then removed; 202 with them.
        """
        address = control.checkHost("ip", ip)
        number = control.checkInteger(
            "port",
            int(port) if port.isascii() and port.isdigit() and len(port) < 7 else port,
            1,
            65535,
        )
        found = control.findServersAt(self.txlb, address, number)
        if not found:
            raise ControlError(404, "ip", f"no server at {ip}:{port}")
        for pool, backend in found:
            control.removeServer(self.txlb, pool.name, backend.name)
        return 202, {
            "status": "draining",
            "servers": [self._server(pool, backend) for pool, backend in found],
        }

    def openAPI(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /openapi.json}: this API's OpenAPI 3.1 document.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return 200, self._openAPI

    # ------------------------------------------------------------ REST

    def listPools(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /api/v1/pools}.
        """
        return 200, {"pools": [self._pool(p) for p in self.txlb.pools.values()]}

    def getPool(self, request: IRequest, pool: str) -> tuple[int, Any]:
        """
        C{GET /api/v1/pools/{pool}}.
        """
        return 200, self._pool(control.findPool(self.txlb, pool))

    def patchPool(self, request: IRequest, pool: str) -> tuple[int, Any]:
        """
        C{PATCH /api/v1/pools/{pool}} with C{algorithm} and/or C{options}:
        swap the strategy, keeping backends and counters.
        """
        control.findPool(self.txlb, pool)
        body = _fields(request, ("algorithm", "options"))
        changed = control.setStrategy(
            self.txlb, pool, body.get("algorithm"), body.get("options")
        )
        return 200, self._pool(changed)

    def listServers(self, request: IRequest, pool: str) -> tuple[int, Any]:
        """
        C{GET /api/v1/pools/{pool}/servers}.
        """
        found = control.findPool(self.txlb, pool)
        return 200, {
            "pool": found.name,
            "servers": [self._server(found, b) for b in found.backends],
        }

    def addServer(self, request: IRequest, pool: str) -> tuple[int, Any]:
        """
        C{POST /api/v1/pools/{pool}/servers}: 201 with the new server.
        """
        found = control.findPool(self.txlb, pool)
        body = _fields(
            request,
            ("name", "address", "port", "endpoint", "weight", "max_connections"),
        )
        backend = control.addServer(
            self.txlb,
            found.name,
            address=body.get("address"),
            port=body.get("port"),
            name=body.get("name"),
            weight=body.get("weight", 1),
            maxConnections=body.get("max_connections"),
            endpoint=body.get("endpoint"),
        )
        request.setHeader(b"location", serverPath(found, backend).encode("ascii"))
        return 201, self._server(found, backend)

    def getServer(self, request: IRequest, pool: str, name: str) -> tuple[int, Any]:
        """
        C{GET /api/v1/pools/{pool}/servers/{name}}.
        """
        found, backend = control.findServer(self.txlb, pool, name)
        return 200, self._server(found, backend)

    def patchServer(self, request: IRequest, pool: str, name: str) -> tuple[int, Any]:
        """
        C{PATCH /api/v1/pools/{pool}/servers/{name}} with C{weight} and/or
        C{state}.
        """
        control.findServer(self.txlb, pool, name)
        body = _fields(request, ("weight", "state"))
        if not body:
            raise Refused(400, "give weight and/or state")
        backend = control.changeServer(
            self.txlb, pool, name, weight=body.get("weight"), state=body.get("state")
        )
        found = control.findPool(self.txlb, pool)
        return 200, self._server(found, backend)

    def removeServer(self, request: IRequest, pool: str, name: str) -> tuple[int, Any]:
        """
        C{DELETE /api/v1/pools/{pool}/servers/{name}}: 202; the server
        drains, then leaves the pool.
        """
        found, backend = control.findServer(self.txlb, pool, name)
        control.removeServer(self.txlb, pool, name)
        return 202, self._server(found, backend)

    def decisions(self, request: IRequest, pool: str) -> tuple[int, Any]:
        """
        C{GET /api/v1/pools/{pool}/decisions}: the recent routing
        decisions, newest first.
        """
        found = control.findPool(self.txlb, pool)
        return 200, {
            "pool": found.name,
            "algorithm": found.algorithm,
            "decisions": [
                {
                    "at": d.at,
                    "client": d.client,
                    "chosen": d.chosen,
                    "candidates": [
                        {
                            "name": name,
                            "in_flight": inFlight,
                            "weight": round(weight, 3),
                            "latency_ms": (
                                None if latency is None else round(latency * 1000.0, 3)
                            ),
                        }
                        for name, inFlight, weight, latency in d.candidates
                    ],
                    "reason": d.reason,
                }
                for d in reversed(found.decisions)
            ],
        }

    def listListeners(self, request: IRequest) -> tuple[int, Any]:
        """
        C{GET /api/v1/listeners}.
        """
        return 200, {"listeners": [views.listenerView(s) for s in self.txlb.listeners]}


class _APIResource(Resource):
    """
    Hands every request under one first path segment of L{ROUTES} to the
    L{AdminAPI}.
    """

    isLeaf = True

    def __init__(self, render: Callable[[IRequest], bytes]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: IRequest) -> bytes:
        """
        Answer through the API's dispatcher.
        """
        return self._render(request)


def install(root: Resource, txlb: Any, guard: Guard, reactor: Any) -> AdminAPI:
    """
    Put the API's routes on the admin resource tree C{root}.

    @return: the L{AdminAPI} answering them.
    """
    api = AdminAPI(txlb, guard, reactor)
    for first in sorted({route.segments[0] for route in ROUTES}):
        root.putChild(first.encode("ascii"), _APIResource(api.render))
    return api
