"""
Test doubles shared by txlb's protocol tests, wrapping Twisted's
L{twisted.internet.testing} and L{twisted.test.iosim} once.

  - L{FakeTCPTransport}: a L{StringTransport} with the TCP extras a relay
    uses (C{TCP_NODELAY}, half-close) and a way to deliver EOF and
    connection loss to its protocol the way the reactor does.
  - L{FakeNetwork}: an C{endpointForBackend} whose endpoints record every
    connect and let the test fire each one (success, failure, or a
    connection pumped over iosim) in any order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

#: The address clients connect from, unless a test says otherwise.
CLIENT_ADDRESS = IPv4Address("TCP", "203.0.113.7", 40000)

#: The address the listener accepts on.
LISTENER_ADDRESS = IPv4Address("TCP", "192.0.2.1", 8080)


class FakeTCPTransport(StringTransport):
    """
    A L{StringTransport} that also does what the relay asks of a TCP
    transport, and delivers connection events to its protocol on demand.

    Unlike a real TCP transport it does not close itself when its producer
    stops, so a test sees only the closes the code under test asked for.

    @ivar protocol: the protocol connected to it.
    @ivar noDelay: the last value given to C{setTcpNoDelay}, or C{None}.
    @ivar writeCloses: how many times C{loseWriteConnection} was called.
    @ivar lost: C{True} once L{deliverLoss} ran.
    """

    protocol: Any = None
    noDelay: bool | None = None
    writeCloses = 0
    lost = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Record the C{TCP_NODELAY} setting.
        """
        self.noDelay = enabled

    def getTcpNoDelay(self) -> bool:
        """
        The C{TCP_NODELAY} setting.
        """
        return bool(self.noDelay)

    def loseWriteConnection(self) -> None:
        """
        Record a half-close.
        """
        self.writeCloses += 1

    def write(self, data: bytes) -> None:
        """
        Record C{data}.

        @raise RuntimeError: the write side was shut, or the connection is
            gone (a real transport would drop the bytes silently; a test
            wants to hear about it).
        """
        if self.writeCloses:
            raise RuntimeError("write after loseWriteConnection")
        if self.lost:
            raise RuntimeError("write after the connection was lost")
        super().write(data)

    def unregisterProducer(self) -> None:
        """
        Drop the producer; like a real transport, no error when there is
        none.
        """
        self.producer = None
        self.streaming = None

    def connectProtocol(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to this transport.
        """
        self.protocol = protocol
        protocol.makeConnection(self)

    def deliverEOF(self) -> None:
        """
        The peer sent EOF: tell the protocol, as the reactor does for an
        L{IHalfCloseableProtocol}.
        """
        self.protocol.readConnectionLost()

    def deliverLoss(self, exception: Exception | None = None) -> None:
        """
        The connection ended: stop the producer and tell the protocol, in
        the order a real transport does.

        @param exception: the reason; a clean close by default.
        @raise RuntimeError: the loss was already delivered.
        """
        if self.lost:
            raise RuntimeError("connection lost twice")
        self.lost = True
        self.connected = False
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(Failure(exception or ConnectionDone()))


def connectClient(
    factory: Any,
    peer: Any = CLIENT_ADDRESS,
    host: Any = LISTENER_ADDRESS,
) -> tuple[Any, FakeTCPTransport]:
    """
    Accept a client connection on C{factory}, over a L{FakeTCPTransport}.

    @return: the protocol built and its transport.
    """
    protocol = factory.buildProtocol(peer)
    transport = FakeTCPTransport(hostAddress=host, peerAddress=peer)
    transport.connectProtocol(protocol)
    return protocol, transport


class PendingConnection:
    """
    One C{connect} on a L{FakeEndpoint}, for the test to complete.

    @ivar backend: the backend it connects to.
    @ivar factory: the protocol factory given to C{connect}.
    @ivar deferred: the L{Deferred} returned by C{connect}.
    @ivar cancelled: whether its canceller ran.
    @ivar protocol: the protocol built, once L{makeProtocol} ran.
    @ivar transport: its transport, once L{makeProtocol} ran.
    """

    def __init__(self, backend: Any, factory: Any, onCancel: str) -> None:
        self.backend = backend
        self.factory = factory
        self.cancelled = False
        self._onCancel = onCancel
        canceller = None if onCancel == "uncancellable" else self._cancel
        self.deferred: Deferred[Any] = Deferred(canceller)
        self.protocol: Any = None
        self.transport: FakeTCPTransport | None = None

    def _cancel(self, deferred: Deferred[Any]) -> None:
        """
        The canceller: note it, and connect anyway when told to.
        """
        self.cancelled = True
        if self._onCancel == "connect":
            self.succeed()

    def makeProtocol(
        self, transport: FakeTCPTransport | None = None
    ) -> tuple[Any, FakeTCPTransport]:
        """
        Build the protocol and connect it, without reporting it yet.

        @return: the protocol and its transport.
        """
        if transport is None:
            transport = FakeTCPTransport(
                peerAddress=IPv4Address("TCP", "198.51.100.1", 3000)
            )
        protocol = self.factory.buildProtocol(transport.getPeer())
        self.protocol, self.transport = protocol, transport
        transport.connectProtocol(protocol)
        return protocol, transport

    def report(self, protocol: Any) -> None:
        """
        Fire the L{Deferred} with C{protocol}.
        """
        self.deferred.callback(protocol)

    def succeed(
        self, transport: FakeTCPTransport | None = None
    ) -> tuple[Any, FakeTCPTransport]:
        """
        Connect, then report it.

        @return: the protocol and its transport.
        """
        protocol, transport = self.makeProtocol(transport)
        self.report(protocol)
        return protocol, transport

    def succeedOverIOSim(
        self, server: IProtocol, clock: Any
    ) -> tuple[Any, iosim.IOPump]:
        """
        Connect to C{server} over iosim, then report it.

        @return: the protocol built and the pump between it and C{server}.
        """
        protocol = self.factory.buildProtocol(None)
        pump = connectOverIOSim(server, protocol, clock)
        self.report(protocol)
        return protocol, pump

    def fail(self, exception: Exception | None = None) -> None:
        """
        Fail the connect, by default as refused.
        """
        self.deferred.errback(Failure(exception or ConnectionRefusedError()))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint that records each C{connect} as a L{PendingConnection}.
    """

    def __init__(self, network: FakeNetwork, backend: Any) -> None:
        self._network = network
        self._backend = backend

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """
        Start a L{PendingConnection}.
        """
        pending = PendingConnection(
            self._backend, protocolFactory, self._network.onCancel
        )
        self._network.attempts.append(pending)
        return pending.deferred


class FakeNetwork:
    """
    Hands out L{FakeEndpoint}s and keeps every connect made through them.

    @ivar onCancel: what cancelling a connect does: C{"fail"} (the
        canceller runs and the connect fails; what TCP endpoints do),
        C{"uncancellable"} (no canceller: the L{Deferred} fails but the test
        may still connect), C{"connect"} (the canceller connects anyway).
    @ivar attempts: every L{PendingConnection}, oldest first.
    """

    def __init__(self, onCancel: str = "fail") -> None:
        self.onCancel = onCancel
        self.attempts: list[PendingConnection] = []

    def endpointForBackend(self, reactor: Any, backend: Any) -> FakeEndpoint:
        """
        The C{endpointForBackend} of a relay factory.
        """
        return FakeEndpoint(self, backend)

    def triedNames(self) -> list[str]:
        """
        The names of the backends connected to, in order.
        """
        return [attempt.backend.name for attempt in self.attempts]


def connectOverIOSim(server: IProtocol, client: IProtocol, clock: Any) -> iosim.IOPump:
    """
    Connect two protocols over iosim's in-memory transports.

    @param server: the accepting side.
    @param client: the connecting side.
    @param clock: advanced by each pump.
    @return: the L{iosim.IOPump} moving bytes between them.
    """
    return iosim.connect(
        server,
        iosim.makeFakeServer(server),
        client,
        iosim.makeFakeClient(client),
        greet=False,
        clock=clock,
    )


def flushAll(*pumps: iosim.IOPump) -> None:
    """
    Pump every pump until none moves anything.
    """
    for _ in range(1000):
        if not any([pump.flush() for pump in pumps]):
            return
    raise AssertionError("pumps never settled")
