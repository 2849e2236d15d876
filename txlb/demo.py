"""
The built-in demo: three small HTTP backends on loopback.

C{twistd -n txlb --demo} starts them and balances across them, so a newcomer
sees balancing with one command: each backend answers with its own name, and
C{/health} answers C{ok}.

The sockets are bound when L{DemoBackends} is created (so their ports are
known before the pool is built) and handed to the reactor when the service
starts.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

DEMO_BACKENDS = 3


class DemoBackendResource(Resource):
    """
    Answers every path with the backend's name, and C{/health} with C{ok}.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Request) -> bytes:
        """
        Say which backend answered.
        """
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-demo-backend", self.name.encode("ascii"))
        if request.path == b"/health":
            return b"ok\n"
        return (
            f"Hello from {self.name}: txlb chose this backend for your request.\n"
        ).encode("ascii")

    render_HEAD = render_GET


class DemoBackends(Service):
    """
    Three demo HTTP backends listening on 127.0.0.1 ephemeral ports.

    @ivar addresses: C{(host, port)} of each backend, known at construction.
    """

    _log = Logger()

    def __init__(self, reactor: Any, count: int = DEMO_BACKENDS) -> None:
        self.setName("demo")
        self.reactor = reactor
        self._sockets: list[socket.socket] = []
        self.ports: list[IListeningPort] = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            s.setblocking(False)
            self._sockets.append(s)
        self.addresses = [s.getsockname()[:2] for s in self._sockets]

    def startService(self) -> None:
        """
        Serve HTTP on the sockets bound at construction.
        """
        Service.startService(self)
        for i, s in enumerate(self._sockets, 1):
            name = f"demo-backend-{i}"
            site = Site(DemoBackendResource(name))
            site.noisy = False
            self.ports.append(
                self.reactor.adoptStreamPort(s.fileno(), socket.AF_INET, site)
            )
            self._log.info(
                "{name} serving on http://{host}:{port}/",
                name=name,
                host=self.addresses[i - 1][0],
                port=self.addresses[i - 1][1],
            )
        # The reactor has its own copies of the descriptors now.
        for s in self._sockets:
            s.close()
        self._sockets = []

    def stopService(self) -> Any:
        """
        Stop serving.
        """
        Service.stopService(self)
        ports, self.ports = self.ports, []
        for s in self._sockets:
            s.close()
        self._sockets = []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports])
