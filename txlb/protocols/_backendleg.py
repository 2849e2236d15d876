"""
The backend leg of the layer 4 relay: one connection attempt to one backend,
and the protocol that holds that backend connection.

L{txlb.protocols.tcp} drives these for each client connection.  This module
never imports it: a backend leg hands its events (EOF, loss) to the relay
object given to L{_BackendProtocol.attach}, which provides L{_Relay}, and
writes the backend's bytes with the client transport's C{write} given with
it, counting them on the relay.

Also here: the transport helpers both legs use, and how a connect attempt
fails (its timeout, and which failures are the network's doing).
"""

from __future__ import annotations

import enum
import typing
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.pool import Backend
from txlb.reactor import Client as _HotPathClient

try:
    from twisted.internet.endpoints import _WrappingProtocol
except ImportError:  # pragma: no cover - a Twisted without it keeps the wrapper
    _WrappingProtocol = None

# The most bytes held for one connection while its other side is not there
# yet.  A transport that honours pauseProducing delivers none; a wrapper (the
# PROXY protocol parser, TLS) may deliver what it had already read.
EARLY_DATA_LIMIT = 64 * 1024

# Connect failures that are the network's doing: logged as one line, no
# traceback.  Anything else is a bug or a bad endpoint and gets a traceback.
_NETWORK_ERRORS = (
    error.ConnectError,
    error.ConnectingCancelledError,
    error.DNSLookupError,
    error.ConnectionClosed,
    CancelledError,
    OSError,
)

def _relayLogger(name: str) -> property:
    """
    The C{_log} of a class of the L4 relay: a L{Logger} whose namespace is
    C{txlb.protocols.tcp.NAME}, the one the class had when it lived in
    L{txlb.protocols.tcp}, so that one prefix still selects every event of
    the relay.  (C{Logger()} as a class attribute would name it after the
    module it is in now.)  Like that descriptor, it makes a new L{Logger},
    with the instance as its source, on each use.
    """
    namespace = "txlb.protocols.tcp." + name
    return property(lambda self: Logger(namespace=namespace, source=self))


def _setNoDelay(transport: ITransport) -> None:
    """
    Turn on C{TCP_NODELAY} when C{transport} runs over TCP.

    A relay forwards what it reads at once; Nagle's algorithm would hold
    small writes back for an ACK.  UNIX sockets have no such option (and
    Twisted logs an error when asked to set it), hence the address check.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None and isinstance(
        transport.getHost(), (IPv4Address, IPv6Address)
    ):
        setNoDelay(True)


def _halfClose(transport: Any) -> None:
    """
    Shut the write side of C{transport}; close it whole when it cannot.

    Twisted's TLS transport cannot shut one direction (and would pass
    C{loseWriteConnection} through to the TCP transport below it, cutting
    the TLS stream short), so a TLS leg is closed whole after its data.
    """
    loseWrite = getattr(transport, "loseWriteConnection", None)
    if loseWrite is None or ISSLTransport.providedBy(transport):
        transport.loseConnection()
    else:
        loseWrite()


def _abort(transport: Any) -> None:
    """
    Close C{transport} now, dropping whatever it has buffered.
    """
    abort = getattr(transport, "abortConnection", None)
    if abort is None:
        transport.loseConnection()
    else:
        abort()


# The transports known to look their protocol up anew for every event (a
# read, a half-close, the loss), so that it can be replaced once connected.
_PLAIN_TCP_CLIENTS = (_HotPathClient, tcp.Client)


def _skipEndpointWrapper(protocol: Protocol) -> None:
    """
    Make C{protocol}'s transport hand its events to C{protocol} directly,
    instead of through the wrapper its endpoint put between them.

    Twisted's client endpoints connect a C{_WrappingProtocol} that passes
    every event on to the protocol they built.  Once the endpoint has
    reported the connection the wrapper has nothing left to do, but it still
    costs a call for every chunk read.  Only a plain TCP client transport
    (txlb's reactor's or stock Twisted's) whose protocol is exactly that
    wrapper, around C{protocol}, is changed: such a transport looks its
    protocol up for each event, and C{protocol} provides every interface the
    wrapper copied from it.  Any other transport (TLS, a UNIX socket, a test
    double) keeps its wrapper.

    @param protocol: a protocol its endpoint has reported connected.
    """
    transport = protocol.transport
    if type(transport) not in _PLAIN_TCP_CLIENTS:
        return
    wrapper = transport.protocol
    if (
        _WrappingProtocol is not None
        and type(wrapper) is _WrappingProtocol
        and wrapper._wrappedProtocol is protocol
    ):
        transport.protocol = protocol


def _timedOut(result: object, timeout: float) -> object:
    """
    Turn the outcome of a connect attempt cancelled by its timeout into an
    L{error.TimeoutError}, whatever failure the endpoint's canceller gave.
    """
    if isinstance(result, Failure):
        raise error.TimeoutError(string=f"no connection within {timeout} seconds")
    return result


class _Relay(typing.Protocol):
    """
    What a backend leg hands its events to once the relay takes it on: the
    client leg of L{txlb.protocols.tcp}.

    @ivar bytesOut: bytes relayed from the backend to the client; the leg
        writing them (see L{_BackendProtocol.attach}) adds to it.
    """

    bytesOut: int

    def _backendEOF(self) -> None:
        """
        The backend will send no more.
        """

    def _backendLost(self, attempt: _Attempt, reason: Failure) -> None:
        """
        The backend leg of C{attempt} is gone.
        """


class _AttemptState(enum.Enum):
    """
    Where one backend connection attempt is.

    @cvar connecting: the endpoint has not reported yet.
    @cvar connected: its connection was taken on by the relay.
    @cvar ended: it failed, or its connection was lost; it was released.
    """

    connecting = "connecting"
    connected = "connected"
    ended = "ended"


class _Attempt:
    """
    One connection attempt to one backend for one client connection.  It
    owns the backend's C{acquire}/C{release} pair: acquired when made,
    released when it ends.

    @ivar backend: the L{Backend} being connected to.
    @ivar started: C{reactor.seconds()} when the attempt started.
    @ivar state: an L{_AttemptState}.
    @ivar deferred: the endpoint's L{Deferred}, under the connect timeout.
    @ivar protocol: the L{_BackendProtocol} taken on by the relay, or C{None}.
    @ivar built: every L{_BackendProtocol} the endpoint built for it.
    """

    def __init__(self, backend: Backend, started: float) -> None:
        self.backend = backend
        self.started = started
        self.state = _AttemptState.connecting
        self.deferred: Deferred[Any] | None = None
        self.protocol: _BackendProtocol | None = None
        self.built: list[_BackendProtocol] = []
        backend.acquire()

    def adopt(self, protocol: _BackendProtocol) -> None:
        """
        The endpoint reported C{protocol} connected, and the relay takes it.
        """
        self.state = _AttemptState.connected
        self.protocol = protocol

    def end(self) -> None:
        """
        The attempt failed or its connection ended: release the backend, and
        abort any other connection the endpoint made for it.

        @raise RuntimeError: it had already ended.
        """
        if self.state is _AttemptState.ended:
            raise RuntimeError(f"attempt to {self.backend.name} ended twice")
        self.state = _AttemptState.ended
        self.backend.release()
        for stray in self.built:
            if stray is not self.protocol and stray.connected and stray.lost is None:
                _abort(stray.transport)


class _BackendFactory(Factory):
    """
    Builds the backend-side protocol of one attempt for its endpoint.
    """

    noisy = False

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt

    def buildProtocol(self, addr: IAddress) -> _BackendProtocol:
        """
        Build a L{_BackendProtocol} for the attempt.
        """
        protocol = _BackendProtocol(self._attempt)
        protocol.factory = self
        self._attempt.built.append(protocol)
        return protocol


@implementer(IHalfCloseableProtocol)
class _BackendProtocol(Protocol):
    """
    The backend leg of a relayed connection.

    Until the relay takes it on (when the endpoint's L{Deferred} fires) it
    holds what arrives, so that nothing reaches the client from a connection
    the relay may still give up; after that it hands every event to the
    relay, except the bytes: those it writes to the client itself, with the
    C{write} given to L{attach}, until L{stopForwarding}; then it drops
    them.

    @ivar lost: the reason its connection was lost before the relay took it
        on, else C{None}.
    @ivar readDone: the backend sent EOF before the relay took it on.
    """

    _log = _relayLogger("_BackendProtocol")

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        self._relay: _Relay | None = None
        self._toClient: typing.Callable[[bytes], object] | None = None
        self._pending: list[bytes] = []
        self._pendingLength = 0
        self.readDone = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        """
        Abort a connection made after its attempt was given up (by an
        endpoint that could not cancel): nobody wants it.
        """
        if self._attempt.state is _AttemptState.ended:
            _abort(self.transport)

    def attach(
        self, relay: _Relay, write: typing.Callable[[bytes], object] | None
    ) -> None:
        """
        Hand this leg to C{relay}, with what arrived before.

        From now on the bytes the backend sends (those held until now
        first) are written with C{write} and counted on the relay's
        C{bytesOut}, until L{stopForwarding}; the other events go to the
        relay.  Writing here rather than through a method of the relay
        saves a call for every chunk.

        @param relay: the relay taking this leg on.
        @param write: the client transport's C{write}, or C{None} to drop
            the backend's bytes (a relay that only means to close this leg).
        """
        self._relay = relay
        self._toClient = write
        _skipEndpointWrapper(self)
        pending, self._pending = self._pending, []
        self._pendingLength = 0
        for data in pending:
            self.dataReceived(data)
        if self.readDone:
            relay._backendEOF()

    def stopForwarding(self) -> None:
        """
        Drop the bytes the backend sends from now on: the relay is closing.
        """
        self._toClient = None

    def dataReceived(self, data: bytes) -> None:
        """
        Write backend bytes to the client while the relay lets it; hold them
        until there is a relay; drop them once it stopped relaying.
        """
        toClient = self._toClient
        if toClient is not None:
            toClient(data)
            self._relay.bytesOut += len(data)
            return
        if self._relay is not None:
            return
        self._pending.append(data)
        self._pendingLength += len(data)
        if self._pendingLength > EARLY_DATA_LIMIT:
            self._log.warn(
                "backend {backend} sent {count} bytes before its connection "
                "was reported; closing it",
                backend=self._attempt.backend.name,
                count=self._pendingLength,
            )
            _abort(self.transport)

    def readConnectionLost(self) -> None:
        """
        The backend will send no more: tell the relay, or remember it.
        """
        relay = self._relay
        if relay is not None:
            relay._backendEOF()
        else:
            self.readDone = True

    def writeConnectionLost(self) -> None:
        """
        Our write side to the backend is shut; nothing more to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the relay this leg is gone, or remember it.
        """
        relay = self._relay
        if relay is not None:
            self._relay = None
            self._toClient = None
            relay._backendLost(self._attempt, reason)
        else:
            self.lost = reason
