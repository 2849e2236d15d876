"""
In-memory stand-ins for the backend side of the L7 proxy, for feeding raw
bytes to L{txlb.protocols.http.HTTPProxyProtocol} and driving its backend
exchanges by hand.

  - L{FakeUpstreamPool}: the C{upstreams} of an L{txlb.protocols.http.L7Pool};
    each C{connect} is recorded as a L{PendingConnect} whose L{Deferred} the
    test fires (or sees cancelled).
  - L{FakeUpstreamConnection}: what C{connect} hands over.  It records the
    request the proxy sends (head, body, finish, abort) on a
    L{StringTransport} and plays the backend's side of the exchange
    (L{respond}, L{start}, L{send}, L{complete}, L{fail}, L{upgrade}).
  - L{RoundRobin}: a deterministic strategy that records each context.
  - L{ClientTransport}: a L{StringTransport} that tells an abort from a
    clean close.

These follow the public API of L{txlb.protocols.upstream} as documented
there (C{sendRequest}, C{writeBody}, C{finishRequest}, C{abort},
C{tunnelTo(receiver, onLost=None)}, the L{IPushProducer} methods)
and import nothing from it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.interfaces import IStrategy
from txlb.protocols._upstreamconn import tunnelCallbacks
from txlb.protocols.headers import validateResponseHeaders

#: The address clients connect from.
CLIENT_ADDRESS = IPv4Address("TCP", "203.0.113.7", 40000)

#: The address the listener accepts on.
LISTENER_ADDRESS = IPv4Address("TCP", "192.0.2.1", 8080)


class ClientTransport(StringTransport):
    """
    A lenient L{StringTransport} for the client side that records how it
    was closed.

    @ivar aborted: C{abortConnection} was called.
    @ivar closes: how many times C{loseConnection} or C{abortConnection}
        was called.
    """

    aborted = False
    closes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A real transport may be paused or resumed after it was told to
        # close; only a test's own assertions should fail then.
        kwargs.setdefault("lenient", True)
        super().__init__(*args, **kwargs)

    def loseConnection(self) -> None:
        """
        Record a clean close.
        """
        self.closes += 1
        super().loseConnection()

    def abortConnection(self) -> None:
        """
        Record an abort.
        """
        self.aborted = True
        super().abortConnection()


@implementer(IStrategy)
class RoundRobin:
    """
    The next candidate in turn; records each context it is given.

    @ivar contexts: every L{txlb.interfaces.IChoiceContext} seen.
    """

    def __init__(self) -> None:
        self.picks = 0
        self.contexts: list[Any] = []

    def choose(self, candidates: Any, context: Any) -> Any:
        """
        The candidate at the pick count, modulo the candidates.
        """
        self.contexts.append(context)
        chosen = candidates[self.picks % len(candidates)]
        self.picks += 1
        return chosen


class PendingConnect:
    """
    One C{connect} on a L{FakeUpstreamPool}, for the test to complete.

    @ivar backend: the backend asked for.
    @ivar deferred: the L{Deferred} returned by C{connect}.
    @ivar cancelled: its canceller ran.
    @ivar connection: the connection handed over, once L{succeed} ran.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.fresh = False
        self.cancelled = False
        self.connection: FakeUpstreamConnection | None = None
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[Any]) -> None:
        self.cancelled = True

    def succeed(
        self, connection: FakeUpstreamConnection | None = None
    ) -> FakeUpstreamConnection:
        """
        Hand over C{connection}, or a new one to the backend.

        @return: the connection.
        """
        if connection is None:
            connection = FakeUpstreamConnection(self.backend)
        connection.checkout()
        self.connection = connection
        self.deferred.callback(connection)
        return connection

    def fail(self, exception: Exception | None = None) -> None:
        """
        Fail the connect, by default as refused.
        """
        self.deferred.errback(Failure(exception or ConnectionRefusedError()))


class FakeUpstreamPool:
    """
    An C{UpstreamPool} whose connects the test completes.

    @ivar attempts: every L{PendingConnect}, oldest first.
    @ivar idle: connections C{takeIdle} hands out, by backend, last first;
        a test puts them there (none by default: every checkout is then a
        recorded connect).
    @ivar taken: every connection C{takeIdle} handed out.
    """

    def __init__(self) -> None:
        self.attempts: list[PendingConnect] = []
        self.idle: dict[Any, list[FakeUpstreamConnection]] = {}
        self.taken: list[FakeUpstreamConnection] = []

    def connect(self, backend: Any, fresh: bool = False) -> Deferred[Any]:
        """
        Record a connect to C{backend} (C{fresh}: asked for a new
        connection, not an idle one).

        @return: its L{Deferred}.
        """
        pending = PendingConnect(backend)
        pending.fresh = fresh
        self.attempts.append(pending)
        return pending.deferred

    def takeIdle(self, backend: Any) -> FakeUpstreamConnection | None:
        """
        Hand out the idle connection to C{backend} the test put last in
        C{idle}, checked out and marked reused, or C{None}.
        """
        idle = self.idle.get(backend)
        if not idle:
            return None
        connection = idle.pop()
        connection.checkout()
        connection.reused = True
        self.taken.append(connection)
        return connection

    def keepIdle(self, backend: Any) -> FakeUpstreamConnection:
        """
        Put a new idle connection to C{backend} in C{idle}.

        @return: it.
        """
        connection = FakeUpstreamConnection(backend)
        self.idle.setdefault(backend, []).append(connection)
        return connection

    @property
    def last(self) -> PendingConnect:
        """
        The latest connect.
        """
        return self.attempts[-1]

    def triedNames(self) -> list[str]:
        """
        The names of the backends connected to, in order.
        """
        return [attempt.backend.name for attempt in self.attempts]


@implementer(IPushProducer)
class FakeUpstreamConnection:
    """
    A checked-out backend connection: records what the proxy sends and
    lets the test answer.

    @ivar backend: the backend it is connected to.
    @ivar transport: a L{StringTransport}; the request bytes are written to
        it (head, then body) as the proxy sends them.
    @ivar heads: every request head sent.
    @ivar methods: the method of each request sent.
    @ivar timeouts: the response timeout given with each request.
    @ivar body: the body bytes of the current request, as framed.
    @ivar finishes: how many times C{finishRequest} was called.
    @ivar aborted: C{abort} (or C{stopProducing}) was called.
    @ivar exchange: the exchange of the request in flight, or C{None}.
    @ivar failOnSend: when set, C{sendRequest} reports the connection lost
        before any response (as the real connection does for one the
        backend closed while it was handed over), and sends nothing.
    @ivar producing: C{False} while paused.
    @ivar tunnelData: where C{tunnelTo} sends the backend's bytes, if set.
    @ivar tunnelLost: what C{tunnelTo} calls at the backend's end, if set.
    @ivar misuse: calls made out of turn (after C{abort}, a second request
        while one is in flight), for tests to assert there are none.
    """

    #: Never set: each event is delivered on its own.
    moreFollows = False

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "198.51.100.1", 8000)
        )
        self.heads: list[bytes] = []
        self.methods: list[bytes] = []
        self.timeouts: list[float | None] = []
        self.body = b""
        self.finishes = 0
        self.aborted = False
        self.exchange: Any = None
        self.failOnSend = False
        self.reused = False
        self.producing = True
        self.tunnelData: Any = None
        self.tunnelLost: Any = None
        self.misuse: list[str] = []
        self._upgraded = False

    def checkout(self) -> None:
        """
        Handed over for a new request: the previous one's body is forgotten.
        """
        if self.exchange is not None:
            self.misuse.append("checked out with an exchange in flight")
        self.body = b""

    # The proxy's side.

    def sendRequest(
        self, head: bytes, method: bytes, exchange: Any, responseTimeout: float | None,
        whole: bool = False,
    ) -> None:
        """
        Record a request head and the exchange to answer (and, when the
        head is the C{whole} request, its end).
        """
        if self.aborted:
            self.misuse.append("sendRequest after abort")
        if self.exchange is not None:
            self.misuse.append("sendRequest with a request in flight")
        if self.failOnSend:
            exchange.responseFailed(Failure(ConnectionLost("backend went away")), False)
            return
        self.exchange = exchange
        self.heads.append(head)
        self.methods.append(method)
        self.timeouts.append(responseTimeout)
        self.transport.write(head)
        if whole:
            self.finishRequest()

    def writeBody(self, data: bytes) -> None:
        """
        Record request body bytes (or tunnel bytes).
        """
        if self.aborted:
            self.misuse.append("writeBody after abort")
            return
        self.body += data
        self.transport.write(data)

    def finishRequest(self) -> None:
        """
        Record the end of the request.
        """
        self.finishes += 1

    def abort(self) -> None:
        """
        Record that the proxy gave up; nothing more is reported.
        """
        self.aborted = True
        self.exchange = None
        self.tunnelData = self.tunnelLost = None
        self.transport.loseConnection()

    def tunnelTo(self, receiver: Any, onLost: Any = None) -> None:
        """
        Record where the backend's tunnel bytes and its end go: to
        C{receiver.write} when it is a transport (whose end then closes it,
        after unregistering this connection if it is its producer), else to
        the callable C{receiver} and C{onLost}.

        @raise RuntimeError: not upgraded.
        @raise TypeError: C{receiver} is a callable and C{onLost} missing.
        """
        if not self._upgraded:
            raise RuntimeError("tunnelTo on a connection that was not upgraded")
        self.tunnelData, self.tunnelLost = tunnelCallbacks(self, receiver, onLost)

    def pauseProducing(self) -> None:
        """
        Stop reading from the backend.
        """
        self.producing = False

    def resumeProducing(self) -> None:
        """
        Read from the backend again.
        """
        self.producing = True

    def stopProducing(self) -> None:
        """
        The client transport is gone.
        """
        self.abort()

    # The backend's side.

    def start(
        self,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: bytes = b"OK",
        version: tuple[int, int] = (1, 1),
    ) -> Any:
        """
        Deliver a response head, with the framing the real connection would
        compute from C{headers}.

        @return: that framing.
        """
        headers = [] if headers is None else headers
        method = self.methods[-1] if self.methods else b"GET"
        framing = validateResponseHeaders(version, status, headers, method)
        self.exchange.responseStarted(version, status, reason, headers, framing)
        return framing

    def interim(
        self, status: int = 103, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """
        Deliver an interim (1xx) response.
        """
        self.exchange.informational(status, b"Early Hints", headers or [])

    def send(self, data: bytes) -> None:
        """
        Deliver response body bytes, de-chunked.
        """
        self.exchange.responseBody(data)

    def complete(self) -> None:
        """
        Deliver the end of the response; the exchange is over.
        """
        exchange, self.exchange = self.exchange, None
        exchange.responseComplete()

    def respond(
        self,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> None:
        """
        Deliver a whole response: its head (with a C{Content-Length} for
        C{body} when C{headers} is not given), its body, its end.
        """
        if headers is None:
            headers = [(b"Content-Length", b"%d" % len(body))]
        self.start(status, headers)
        if body:
            self.send(body)
        self.complete()

    def respondWhole(
        self,
        status: int = 200,
        headers: Any = None,
        body: bytes = b"",
        version: tuple[int, int] = (1, 1),
    ) -> None:
        """
        Deliver a whole response in one C{responseWhole} call, as the real
        connection does for one read at once: its head (with a
        C{Content-Length} for C{body} when C{headers} is not given) and its
        body.
        """
        if headers is None:
            headers = [(b"Content-Length", b"%d" % len(body))]
        method = self.methods[-1] if self.methods else b"GET"
        framing = validateResponseHeaders(version, status, headers, method)
        exchange, self.exchange = self.exchange, None
        exchange.responseWhole(version, status, b"OK", headers, framing, body)

    def fail(self, exception: Exception | None = None, started: bool = False) -> None:
        """
        Deliver a failure of the exchange.
        """
        exchange, self.exchange = self.exchange, None
        exchange.responseFailed(
            Failure(exception or ConnectionLost("backend reset")), started
        )

    def upgrade(self, extra: bytes = b"", protocol: bytes = b"websocket") -> None:
        """
        Deliver a 101 head, then switch to a tunnel.
        """
        self.start(
            101,
            [(b"Connection", b"Upgrade"), (b"Upgrade", protocol)],
            reason=b"Switching Protocols",
        )
        exchange, self.exchange = self.exchange, None
        self._upgraded = True
        exchange.upgraded(self, extra)

    def tunnelReceive(self, data: bytes) -> None:
        """
        The backend sends tunnel bytes.
        """
        self.tunnelData(data)

    def tunnelClose(self) -> None:
        """
        The backend closes the tunnel.
        """
        lost, self.tunnelData, self.tunnelLost = self.tunnelLost, None, None
        lost(Failure(ConnectionDone()))
