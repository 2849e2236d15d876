"""
Keep-alive HTTP clients that put steady load on a txlb listener during an
integration test and count every failure: a status other than the expected
ones, a connection lost mid-response, a connection refused or reset.

Bounded by design: each client sends requests one after the other until
L{Load.stop} is called or its request budget is spent.
"""

from __future__ import annotations

import collections
from typing import Any

import httptools
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

REQUEST = b"GET / HTTP/1.1\r\nHost: load.test\r\nUser-Agent: txlb-test-load\r\n\r\n"


class _KeepAliveConnection(Protocol):
    """
    One connection of a L{_Client}: a request, its response, the next
    request; it ends when the response says C{Connection: close} (or the
    client is done).
    """

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.inResponse = False
        self.close = False
        self.headerName = b""

    def connectionMade(self) -> None:
        self.send()

    def send(self) -> None:
        self.inResponse = True
        self.close = False
        self.transport.write(REQUEST)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.client.load.errors[f"bad response: {e}"] += 1
            self.inResponse = False
            self.transport.abortConnection()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and value.lower() == b"close":
            self.close = True

    def on_message_complete(self) -> None:
        self.inResponse = False
        load = self.client.load
        status = self.parser.get_status_code()
        load.statuses[status] += 1
        if status not in load.expected:
            load.errors[f"status {status}"] += 1
        if not self.parser.should_keep_alive():
            self.close = True
        if self.close or not self.client.wantsMore():
            self.transport.loseConnection()
            return
        self.send()

    def connectionLost(self, reason: Failure = None) -> None:
        if self.inResponse:
            self.client.load.errors[f"lost mid-response: {reason.value}"] += 1
        self.client.connectionEnded()


class _Client:
    """
    One simulated user: a keep-alive connection, reopened when txlb closes
    it, until the load stops.
    """

    def __init__(self, load: Load) -> None:
        self.load = load
        self.done: Deferred[None] = Deferred()

    def wantsMore(self) -> bool:
        load = self.load
        if load.stopping or load.sent >= load.maxRequests:
            return False
        load.sent += 1
        return True

    def start(self) -> None:
        if not self.wantsMore():
            self.done.callback(None)
            return
        self.load.connections += 1
        endpoint = TCP4ClientEndpoint(self.load.reactor, "127.0.0.1", self.load.port())
        d = connectProtocol(endpoint, _KeepAliveConnection(self))
        d.addErrback(self.connectFailed)

    def connectFailed(self, reason: Failure) -> None:
        self.load.errors[f"connect failed: {reason.value}"] += 1
        self.connectionEnded()

    def connectionEnded(self) -> None:
        self.load.reactor.callLater(0, self.start)


class Load:
    """
    C{clients} keep-alive clients sending C{GET /} to 127.0.0.1.

    @ivar statuses: responses by status.
    @ivar errors: failures by description.
    @ivar connections: connections opened.
    """

    def __init__(
        self,
        reactor: Any,
        port: Any,
        clients: int = 100,
        maxRequests: int = 200000,
        expected: tuple[int, ...] = (200,),
    ) -> None:
        """
        @param port: the port number, or a callable returning the port to
            connect to now.
        @param maxRequests: requests sent at most, over all clients.
        """
        self.reactor = reactor
        self.port = port if callable(port) else (lambda: port)
        self.clients = [_Client(self) for _ in range(clients)]
        self.maxRequests = maxRequests
        self.expected = expected
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.sent = 0
        self.stopping = False

    @property
    def answered(self) -> int:
        """
        Responses received.
        """
        return sum(self.statuses.values())

    def start(self) -> None:
        """
        Open every client's first connection.
        """
        for client in self.clients:
            client.start()

    def stop(self) -> Deferred[Any]:
        """
        Send no new request; fire once every client's connection is closed.
        """
        self.stopping = True
        return DeferredList([c.done for c in self.clients])
